"""Interlocks and the e-stop: conditions on tags that suspend, hold, stop or abort the cell, with alarms.

``SafetyWatcher.run`` (task ``engine:interlocks``, owned by the engine's TaskGroup) re-evaluates on every new
reading of a watched tag and on every state change. A condition must hold for its ``settle_s`` before it
trips; a reading that is not GOOD counts as the unsafe side. A tripped interlock raises ``interlock:<name>``
and issues its command whenever the cell is running (so a Start with the guard open is suspended again).
Only a suspend resumes by itself, once its resume condition held for ``settle_s`` and only if it suspended
the cell; after a hold, stop or abort a person decides.

The e-stop is handled in the reading callback itself: the first reading that shows it pressed (or, once it
was seen released, a reading that is not GOOD) shuts the write inhibit before any other task runs, then the
watcher aborts the cell. cellctl is not the safety function: the safety PLC is; this only stops commanding.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from cellctl.core.clock import Clock
from cellctl.core.conditions import Condition
from cellctl.core.events import Severity
from cellctl.core.inhibit import WriteInhibit
from cellctl.core.packml import Command, State
from cellctl.core.tags import Reading, TagBackend
from cellctl.engine.alarms import AlarmManager
from cellctl.schema.cell import CellConfig, EstopConfig, InterlockAction, InterlockConfig

ESTOP_ALARM = "estop"
"""Alarm raised while the e-stop input is pressed (or unreadable after it was seen released)."""

INTERLOCK_PREFIX = "interlock:"
"""Alarm id of an interlock: this prefix and the interlock's name."""

Issue = Callable[[Command, str], Awaitable[None]]
"""Issues a PackML command with the reason (refused transitions are the engine's to ignore)."""

_COMMANDS: dict[InterlockAction, Command] = {
    InterlockAction.SUSPEND: Command.SUSPEND,
    InterlockAction.HOLD: Command.HOLD,
    InterlockAction.STOP: Command.STOP,
    InterlockAction.ABORT: Command.ABORT,
}
_RUNNING = frozenset({State.STARTING, State.EXECUTE, State.UNHOLDING, State.UNSUSPENDING})
"""States in which a tripped interlock issues its command (again)."""
_QUIET = frozenset({State.UNDEFINED, State.STOPPED, State.ABORTING, State.ABORTED, State.CLEARING})
"""States the e-stop leaves alone: nothing is commanded there, and Reset is refused while it is pressed."""


@dataclass(slots=True)
class _Interlock:
    name: str
    config: InterlockConfig
    when: Condition
    resume: Condition | None
    met_since: float | None = None
    clear_since: float | None = None
    tripped: bool = False
    seen: bool = False
    """The ``when`` tag was read GOOD once: from then on a bad reading is an edge, not a link coming up."""
    suspended: bool = False
    """It suspended the cell, so it may unsuspend it."""

    @property
    def alarm(self) -> str:
        return INTERLOCK_PREFIX + self.name


class SafetyWatcher:
    """Evaluates the cell's interlocks and e-stop input; raises their alarms and issues their commands."""

    def __init__(
        self,
        cell: CellConfig,
        backends: Mapping[str, TagBackend],
        alarms: AlarmManager,
        inhibit: WriteInhibit,
        clock: Clock,
        *,
        issue: Issue,
        state: Callable[[], State],
    ) -> None:
        self._backends = backends
        self._alarms = alarms
        self._inhibit = inhibit
        self._clock = clock
        self._issue = issue
        self._state = state
        self._estop: EstopConfig | None = cell.estop
        self._estop_seen_ok = False
        self._estop_pressed = False
        self._interlocks = [
            _Interlock(name, il, il.condition, il.resume) for name, il in cell.interlocks.items()
        ]
        self._watched: dict[str, set[str]] = {}
        for il in self._interlocks:
            for cond in (il.when, il.resume):
                if cond is not None:
                    self._watched.setdefault(cond.device, set()).add(cond.tag)
        self._changed = asyncio.Event()
        self._log = structlog.get_logger(__name__)

    @property
    def configured(self) -> bool:
        """True when there is anything to watch."""
        return bool(self._interlocks) or self._estop is not None

    def estop_refusal(self) -> str | None:
        """Why Reset must be refused now because of the e-stop (None: it may go ahead)."""
        if self._estop is None:
            return None
        reading = self._backends[self._estop.device].last(self._estop.tag_name)
        if not reading.usable:
            return f"the e-stop input {self._estop.tag} cannot be read ({reading.quality}: {reading.reason})"
        if reading.value == self._estop.active_when:
            return f"the e-stop is pressed ({self._estop.tag} = {reading.value!r}): release it first"
        return None

    def poke(self) -> None:
        """Evaluate again (the cell's state changed)."""
        self._changed.set()

    async def run(self) -> None:
        """Watch until cancelled."""
        unsubscribes = []
        for device, tags in self._watched.items():
            unsubscribes.append(self._backends[device].watch(self._on_reading(tags)))
        if self._estop is not None:
            unsubscribes.append(self._backends[self._estop.device].watch(self._on_estop))
            self._judge_estop(self._backends[self._estop.device].last(self._estop.tag_name))
        try:
            while True:
                self._changed.clear()
                due = await self._evaluate()
                timeout = None if due is None else max(0.0, due - self._clock.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
        finally:
            for unsubscribe in unsubscribes:
                unsubscribe()

    # ------------------------------------------------------------------------------------------- e-stop

    def _on_estop(self, tag: str, reading: Reading) -> None:
        assert self._estop is not None
        if tag == self._estop.tag_name:
            self._judge_estop(reading)
            self._changed.set()

    def _judge_estop(self, reading: Reading) -> None:
        """Runs in the driver's callback: shut the inhibit at once, before any other task runs."""
        assert self._estop is not None
        if reading.usable:
            pressed = reading.value == self._estop.active_when
            if not pressed:
                self._estop_seen_ok = True
        else:
            # Unknown before the link first came up is not an edge; unknown after it was seen released is.
            pressed = self._estop_seen_ok
        if pressed and not self._estop_pressed:
            why = "e-stop pressed" if reading.usable else f"e-stop input lost ({reading.reason or 'BAD'})"
            self._inhibit.set(f"{why}: no command leaves until Clear and Reset")
        self._estop_pressed = pressed

    async def _evaluate_estop(self) -> None:
        assert self._estop is not None
        if self._estop_pressed:
            reason = self._inhibit.reason or "e-stop pressed"
            await self._alarms.raise_alarm(
                ESTOP_ALARM, severity=Severity.CRITICAL, message=reason, source=self._estop.tag
            )
            if self._state() not in _QUIET:
                self._log.error("e-stop: aborting", tag=self._estop.tag)
                await self._issue(Command.ABORT, reason)
        elif self._alarms.is_active(ESTOP_ALARM):
            await self._alarms.clear_alarm(ESTOP_ALARM, message="e-stop released")

    # --------------------------------------------------------------------------------------- interlocks

    def _on_reading(self, tags: set[str]) -> Callable[[str, Reading], None]:
        def on_reading(tag: str, _reading: Reading) -> None:
            if tag in tags:
                self._changed.set()

        return on_reading

    def _read(self, cond: Condition) -> bool | None:
        return cond.judge(self._backends[cond.device].last(cond.tag))

    async def _evaluate(self) -> float | None:
        """Evaluate everything once; returns when a settle time runs out next (None: no timer)."""
        if self._estop is not None:
            await self._evaluate_estop()
        now = self._clock.monotonic()
        due: float | None = None
        for il in self._interlocks:
            when = il.when.judge(self._backends[il.when.device].last(il.when.tag))
            il.seen = il.seen or when is not None
            # Unknown is the unsafe side; before the link first came up only while the cell runs.
            met = when is True or (when is None and (il.seen or self._state() in _RUNNING))
            if met:
                il.clear_since = None
                if il.met_since is None:
                    il.met_since = now
            else:
                il.met_since = None
            # Without a resume condition the condition's own end resumes (read GOOD and not met).
            resumed = self._read(il.resume) is True if il.resume is not None else when is False
            if resumed:
                if il.clear_since is None:
                    il.clear_since = now
            else:
                il.clear_since = None
            settle = il.config.settle_s
            if not il.tripped and il.met_since is not None:
                if now - il.met_since >= settle:
                    await self._trip(il, unknown=when is None)
                else:
                    due = _earliest(due, il.met_since + settle)
            elif il.tripped and il.clear_since is not None and not met:
                if now - il.clear_since >= settle:
                    await self._release(il)
                else:
                    due = _earliest(due, il.clear_since + settle)
            if il.tripped and self._state() in _RUNNING:
                await self._command(il)
        return due

    async def _trip(self, il: _Interlock, *, unknown: bool) -> None:
        il.tripped = True
        detail = f"{il.when} (reading not GOOD)" if unknown else str(il.when)
        message = il.config.message or f"interlock {il.name}: {detail}"
        self._log.warning("interlock tripped", interlock=il.name, condition=str(il.when), unknown=unknown)
        await self._alarms.raise_alarm(il.alarm, severity=il.config.severity, message=message, source=il.name)
        await self._command(il)

    async def _command(self, il: _Interlock) -> None:
        if self._state() not in _RUNNING:
            return
        command = _COMMANDS[il.config.action]
        if command is Command.SUSPEND:
            il.suspended = True
        message = self._alarms.get(il.alarm)
        await self._issue(command, message.message if message else f"interlock {il.name}")

    async def _release(self, il: _Interlock) -> None:
        il.tripped = False
        self._log.info("interlock released", interlock=il.name)
        await self._alarms.clear_alarm(il.alarm, message=f"interlock {il.name}: condition gone")
        suspended, il.suspended = il.suspended, False
        others = any(o.tripped for o in self._interlocks)
        if suspended and not others and self._state() is State.SUSPENDED and not self._inhibit.active:
            await self._issue(Command.UNSUSPEND, f"interlock {il.name} released")


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
