"""PackMLCell: the only owner of the cell's PackML state and unit mode; every move follows the table and is
recorded.

A move is recorded through the sink first and takes effect once recorded, so the journal never misses a
state the cell was in; listeners hear of it after it took effect. A state move the store cannot journal
(StoreError) takes effect all the same: the cell must stop even when the journal cannot say so. It is logged
and handed to ``unjournaled`` (the engine journals it once the store works again). A unit-mode change the
store refuses does not take effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from cellctl.core.clock import Clock
from cellctl.core.events import Event, StateChanged
from cellctl.core.packml import (
    STATE_COMPLETE,
    Command,
    State,
    Trigger,
    UnitMode,
    allowed_commands,
    check_command,
    check_mode_change,
    next_state,
)
from cellctl.core.ports import EventSink
from cellctl.errors import InvalidTransition, StoreError

log = structlog.get_logger(__name__)

StateCallback = Callable[[State, State], None]
"""Called with (previous, new) after every move."""

Unjournaled = Callable[[StateChanged, StoreError], None]
"""Called with a state move that took effect although the store refused it."""


class PackMLCell:
    """The cell's PackML state: moves by command or state-complete, records each move, lets others wait."""

    def __init__(
        self,
        sink: EventSink,
        clock: Clock,
        *,
        notify: Callable[[Event], None] | None = None,
        mode: UnitMode = UnitMode.PRODUCTION,
        name: str = "",
        unjournaled: Unjournaled | None = None,
    ) -> None:
        self._sink = sink
        self._unjournaled = unjournaled
        self._clock = clock
        self._notify = notify
        self._mode = mode
        self._plan_running = False
        self._state = State.UNDEFINED
        self._since = clock.wall()
        self._moved = asyncio.Event()
        self._lock = asyncio.Lock()
        self._callbacks: list[StateCallback] = []
        self._log = log.bind(cell=name) if name else log

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def since(self) -> float:
        """Wall-clock time the current state was entered."""
        return self._since

    @property
    def unit_mode(self) -> UnitMode:
        """The unit mode in effect: Changeover while a plan runs in Production, else the selected mode."""
        if self._plan_running and self._mode is UnitMode.PRODUCTION:
            return UnitMode.CHANGEOVER
        return self._mode

    @property
    def mode(self) -> str:
        """The unit mode in effect, as the journal and the API spell it."""
        return self.unit_mode.label

    def plan_running(self, running: bool) -> None:
        """The engine says a changeover plan started (True) or ended: the mode shows Changeover meanwhile."""
        self._plan_running = running

    def allowed_commands(self) -> tuple[Command, ...]:
        """Commands the current state and unit mode accept."""
        return allowed_commands(self._state, self.unit_mode)

    async def change_mode(self, mode: UnitMode, *, by: str) -> None:
        """Select the unit mode; ModeRefused (nothing recorded) outside Stopped, Idle and Aborted.

        Recorded as a StateChanged whose state is unchanged and whose command is ``"mode"``.
        """
        async with self._lock:
            check_mode_change(self._state, mode)
            if mode is self._mode:
                return
            previous = self._mode
            self._mode = mode
            try:
                await self._move(self._state, None, by, command="mode", journal_first=True)
            except BaseException:
                self._mode = previous  # not recorded, so not in effect
                raise

    def on_change(self, callback: StateCallback) -> Callable[[], None]:
        """Call back after every move (a unit-mode change calls with the same state twice); returns the
        unsubscribe function."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def power_up(self, state: State = State.STOPPED, *, by: str = "engine") -> None:
        """Leave Undefined for the start-up state (Stopped, or Aborted after a crash), recorded."""
        if state not in (State.STOPPED, State.ABORTED):
            raise ValueError(f"a cell powers up in Stopped or Aborted, not {state.label}")
        async with self._lock:
            if self._state is not State.UNDEFINED:
                raise InvalidTransition(self._state.label, "power up")
            await self._move(state, None, by)

    async def command(self, command: Command, *, by: str) -> State:
        """Apply ``command``; InvalidTransition (and nothing recorded) when the state does not allow it."""
        async with self._lock:
            target = check_command(self._state, self.unit_mode, command)
            await self._move(target, command, by)
            return target

    async def complete(self, expected: State, *, by: str = "engine") -> State:
        """State-complete of ``expected``; InvalidTransition when the cell is elsewhere or waits."""
        async with self._lock:
            if self._state is not expected:
                raise InvalidTransition(self._state.label, f"state complete of {expected.label}")
            target = next_state(self._state, STATE_COMPLETE)
            await self._move(target, STATE_COMPLETE, by)
            return target

    async def _move(
        self,
        target: State,
        trigger: Trigger | None,
        by: str,
        *,
        command: str | None = None,
        journal_first: bool = False,
    ) -> None:
        previous = self._state
        event = StateChanged(
            ts=self._clock.wall(),
            state=target.label,
            state_no=int(target),
            previous=previous.label,
            command=trigger.label if isinstance(trigger, Command) else command,
            by=by,
            mode=self.mode,
        )
        try:
            await self._sink.record(event)
        except StoreError as exc:
            if journal_first:
                raise
            self._log.error(
                "state change not journaled: in effect all the same",
                state=target.label,
                previous=previous.label,
                command=event.command,
                by=by,
                error=str(exc),
            )
            if self._unjournaled is not None:
                self._unjournaled(event, exc)
        if target is not previous:  # a mode change leaves the state, and its since, as they were
            self._since = event.ts
        self._state = target
        # Wake every waiter, then arm a fresh event for the next move.
        self._moved.set()
        self._moved = asyncio.Event()
        self._log.info(
            "state changed",
            state=target.label,
            previous=previous.label,
            command=event.command,
            by=by,
            mode=event.mode,
        )
        for callback in list(self._callbacks):
            callback(previous, target)
        if self._notify is not None:
            self._notify(event)

    async def wait_for(self, *states: State, timeout: float) -> State:
        """Wait until the cell is in one of ``states``; TimeoutError naming them after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    moved = self._moved
                    if self._state in states:
                        return self._state
                    await moved.wait()
        except TimeoutError:
            wanted = " or ".join(s.label for s in states)
            raise TimeoutError(
                f"cell did not reach {wanted} within {timeout:g} s (it is {self._state.label})"
            ) from None
