"""Protocol-independent logic of the simulated equipment: one class per profile, linked by a shared World.

Each device holds the engineering value of every tag. Protocol adapters hand client writes to
``DeviceSim.client_write`` and publish what ``DeviceSim.watch`` reports. Every duration of the sims file is
multiplied by the world's ``time_scale``; timed actions run as tasks the device owns and cancels on close.
Commands that start an action are counted in ``World.commands``, refused ones in ``World.refused``, and every
raw client write in ``World.writes``, so tests can check that nothing ran twice.

Command names, keyed ``(device, command)``: robot ``program_load``, ``cycle_start`` (whether written as
signals or called as methods); tool changer
``tool_change``; fixture ``clamp``, ``unclamp``, ``move:<axis>``; press ``cycle_start``; gauge ``trigger``;
any other writable tag ``setpoint:<tag>``. Register commands count on every write; bool commands on the
edge that asks for the action (writing ``start`` high while it is already high is only a write).
A refused command flips the robot's ``fault_code`` (1: no program, 2: program change while busy,
3: unknown program); the other profiles have no fault code and only count the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ClassVar

import structlog

from cellctl.core.devices import (
    Handshake,
    ProfileKind,
    RobotState,
    ValueKind,
    axis_actual_tag,
    axis_setpoint_tag,
    profile_slots,
)
from cellctl.core.tags import TagValue
from cellctl.schema.cell import Datatype, DeviceConfig
from device_sims.sims_config import (
    FixtureSettings,
    GaugeSettings,
    InitialValue,
    PressSettings,
    ProfileSettings,
    RobotSettings,
    SimsConfig,
    ToolChangerSettings,
)

_log = structlog.get_logger(__name__)

Listener = Callable[[str, TagValue], None]
"""Called with (tag, published value) whenever a device's published value of a tag changes."""

MOTION_TICK_S = 0.01
"""Real seconds between two position updates of a moving axis."""

_INT_LIMITS: dict[Datatype, tuple[int, int]] = {
    Datatype.INT16: (-(2**15), 2**15),
    Datatype.UINT16: (0, 2**16),
    Datatype.INT32: (-(2**31), 2**31),
    Datatype.UINT32: (0, 2**32),
}
_SLOT_TYPES: dict[ValueKind, Datatype] = {
    ValueKind.BOOL: Datatype.BOOL,
    ValueKind.INT: Datatype.UINT32,
    ValueKind.FLOAT: Datatype.FLOAT64,
}


def coerce(value: TagValue, datatype: Datatype) -> TagValue:
    """The value a device of ``datatype`` actually holds: integers wrap like registers, float32 loses bits."""
    if datatype is Datatype.BOOL:
        return bool(value)
    if datatype is Datatype.STRING:
        return str(value)
    if datatype in _INT_LIMITS:
        low, high = _INT_LIMITS[datatype]
        span = high - low
        number = float(value) if isinstance(value, str) else value
        whole = round(number) if isinstance(number, float) and math.isfinite(number) else int(number)
        return (whole - low) % span + low
    number = float(value)
    if datatype is Datatype.FLOAT32 and math.isfinite(number) and abs(number) <= 3.4028234663852886e38:
        return float(struct.unpack(">f", struct.pack(">f", number))[0])
    return number


def default_value(datatype: Datatype) -> TagValue:
    """Power-on value of a tag of ``datatype``."""
    if datatype is Datatype.BOOL:
        return False
    if datatype is Datatype.STRING:
        return ""
    if datatype in (Datatype.FLOAT32, Datatype.FLOAT64):
        return 0.0
    return 0


class SimTaskError(RuntimeError):
    """A simulator's own timed action crashed (a bug in device_sims, not a simulated fault)."""


class CommandRefused(Exception):
    """A command the equipment refused; a method face answers it with a Bad status."""

    def __init__(self, command: str, reason: str, *, bad_argument: bool = False) -> None:
        self.command = command
        self.reason = reason
        self.bad_argument = bad_argument
        """True when an argument was wrong (an unknown program), not the moment."""
        super().__init__(f"{command} refused: {reason}")


class World:
    """The simulated cell: its devices, time scale, seeded randomness, counters and change notification."""

    def __init__(self, *, time_scale: float = 1.0, seed: int = 0) -> None:
        if time_scale < 0 or not math.isfinite(time_scale):
            raise ValueError(f"time_scale must be a finite number >= 0, not {time_scale!r}")
        self.time_scale = time_scale
        self.seed = seed
        self.devices: dict[str, DeviceSim] = {}
        self.commands: Counter[tuple[str, str]] = Counter()
        """Accepted actuator commands by (device, command)."""
        self.refused: Counter[tuple[str, str]] = Counter()
        """Commands the equipment refused, by (device, command)."""
        self.writes: Counter[tuple[str, str]] = Counter()
        """Every client write by (device, tag), whatever it caused."""
        self.errors: list[BaseException] = []
        """Crashes of the simulators' own tasks (bugs), surfaced when the cell closes."""
        self._changed = asyncio.Event()

    def add(self, device: DeviceSim) -> None:
        """Register a device under its name."""
        if device.name in self.devices:
            raise ValueError(f"device {device.name!r} is already in the world")
        self.devices[device.name] = device

    def value(self, ref: str) -> TagValue:
        """Current (true, unforced) value of ``device.tag``."""
        device, _, tag = ref.partition(".")
        return self.devices[device].get(tag)

    def scaled(self, seconds: float) -> float:
        """Real seconds for a duration of the sims file."""
        return seconds * self.time_scale

    def rng(self, name: str) -> random.Random:
        """A random generator seeded from the world's seed and ``name``, so each device is reproducible."""
        return random.Random(f"{self.seed}:{name}")

    def notify(self) -> None:
        """Wake everything waiting for a change of the world."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked on every change; TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def aclose(self) -> None:
        """Cancel and await every device's timed actions."""
        for device in self.devices.values():
            await device.aclose()


class DeviceSim:
    """Base of the simulated devices: tag values, publication to listeners, owned timed actions, faults."""

    profile: ClassVar[ProfileKind]

    def __init__(
        self,
        name: str,
        config: DeviceConfig,
        world: World,
        settings: ProfileSettings,
        initial: dict[str, InitialValue] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.world = world
        self.settings = settings
        # The slots of every handshake style: one simulated device serves either face.
        self.types: dict[str, Datatype] = {
            slot.name: _SLOT_TYPES[slot.kind]
            for style in Handshake
            for slot in profile_slots(self.profile, style)
        }
        self.types.update({tag: cfg.datatype for tag, cfg in config.tags.items()})
        self.values: dict[str, TagValue] = {tag: default_value(dt) for tag, dt in self.types.items()}
        self.initial: dict[str, InitialValue] = dict(initial or {})
        for tag, value in self.initial.items():
            self.values[tag] = coerce(value, self.types[tag])
        self.forced: dict[str, TagValue] = {}
        self.frozen = False
        self._listeners: list[Listener] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self.log = _log.bind(device=name)
        world.add(self)

    # -- values --------------------------------------------------------------------------------------------
    def get(self, tag: str) -> TagValue:
        """True value of ``tag`` (what the equipment holds, ignoring forced values)."""
        return self.values[tag]

    def published(self, tag: str) -> TagValue:
        """Value clients see for ``tag``: a forced value if any, else the true value."""
        return self.forced.get(tag, self.values[tag])

    def published_values(self) -> dict[str, TagValue]:
        """Every tag's published value."""
        return {tag: self.published(tag) for tag in self.values}

    def watch(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every change of a published value; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, tag: str) -> None:
        if self.frozen:
            return
        value = self.published(tag)
        for listener in list(self._listeners):
            listener(tag, value)

    def _set(self, tag: str, value: TagValue) -> None:
        """Change a value as the equipment would (published unless frozen or forced)."""
        new = coerce(value, self.types[tag])
        old = self.values[tag]
        if old == new and type(old) is type(new):
            return
        self.values[tag] = new
        if tag not in self.forced:
            self._emit(tag)
        self.world.notify()

    # -- faults ---------------------------------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop publishing changes; the equipment keeps working behind a frozen image."""
        self.frozen = True

    def thaw(self) -> None:
        """Publish again, starting with every current value."""
        self.frozen = False
        for tag in self.values:
            self._emit(tag)
        self.world.notify()

    def force(self, tag: str, value: TagValue) -> None:
        """Publish ``value`` for ``tag`` whatever the equipment does, until ``release``."""
        if tag not in self.values:
            raise KeyError(f"{self.name} has no tag {tag!r}")
        self.forced[tag] = coerce(value, self.types[tag])
        self._emit(tag)
        self.world.notify()

    def release(self, tag: str) -> None:
        """Stop forcing ``tag``; clients see the true value again."""
        if self.forced.pop(tag, None) is not None:
            self._emit(tag)
            self.world.notify()

    # -- commands -------------------------------------------------------------------------------------------
    def client_write(self, tag: str, value: TagValue) -> None:
        """A client wrote ``tag``: store the value, count the write and let the equipment react."""
        if tag not in self.types:
            raise KeyError(f"{self.name} has no tag {tag!r}")
        new = coerce(value, self.types[tag])
        old = self.values[tag]
        self.values[tag] = new
        self.world.writes[(self.name, tag)] += 1
        self.log.debug("sim.write", tag=tag, value=new)
        self.on_write(tag, old, new)
        self.world.notify()

    def on_write(self, tag: str, old: TagValue, new: TagValue) -> None:
        """React to a client write; by default a writable tag is a plain setpoint."""
        self._accept(f"setpoint:{tag}")

    def call(self, method: str, args: tuple[TagValue, ...]) -> tuple[TagValue, ...]:
        """A client called ``method``: act and return its outputs, or raise CommandRefused.

        KeyError for a method the device does not have (most have none).
        """
        raise KeyError(f"{self.name} has no method {method!r}")

    def _accept(self, command: str) -> None:
        self.world.commands[(self.name, command)] += 1
        self.log.debug("sim.command", command=command)

    def _refuse(self, command: str, reason: str) -> None:
        self.world.refused[(self.name, command)] += 1
        self.log.info("sim.refused", command=command, reason=reason)

    # -- timed actions --------------------------------------------------------------------------------------
    def _run(self, slot: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as the device's action in ``slot``, cancelling the slot's previous action."""
        if self._closed:
            coro.close()
            return
        previous = self._tasks.pop(slot, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(coro, name=f"sim:{self.name}:{slot}")
        self._tasks[slot] = task
        task.add_done_callback(lambda t: self._task_done(slot, t))

    def _task_done(self, slot: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(slot) is task:
            del self._tasks[slot]
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error("sim.task_crashed", slot=slot, error=repr(exc))
            self.world.errors.append(exc)
            self.world.notify()

    def _cancel(self, slot: str) -> None:
        task = self._tasks.pop(slot, None)
        if task is not None:
            task.cancel()

    def busy_slots(self) -> frozenset[str]:
        """Names of the timed actions running now."""
        return frozenset(self._tasks)

    async def _sleep(self, seconds: float) -> None:
        """Sleep a duration of the sims file, scaled."""
        await asyncio.sleep(self.world.scaled(seconds))

    async def aclose(self) -> None:
        """Cancel and await every timed action; the device takes no new ones afterwards."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


class RobotSim(DeviceSim):
    """A robot: loads a program after a load time, runs cycles, flags refusals in ``fault_code``.

    One robot, two protocol faces: the signal face (``program`` written, ``start`` held high until ``done``)
    reaches it through ``client_write``, the method face (``load_program``, ``start_cycle``) through
    ``call``. Both drive the same logic and keep ``state`` (RobotState) as well as ``busy``/``done``.
    """

    profile = ProfileKind.ROBOT
    FAULT_NO_PROGRAM = 1
    FAULT_PROGRAM_WHILE_BUSY = 2
    FAULT_UNKNOWN_PROGRAM = 3
    COMMAND_FAULTS = frozenset({FAULT_NO_PROGRAM, FAULT_PROGRAM_WHILE_BUSY, FAULT_UNKNOWN_PROGRAM})
    """Faults a successful program load clears; any other code stays until ``reset_fault``."""
    METHODS = ("load_program", "start_cycle")
    """Methods of the method face (keys of the cell file's ``methods:``)."""

    settings: RobotSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._armed_fault: tuple[int, float] | None = None

    def on_write(self, tag: str, old: TagValue, new: TagValue) -> None:
        """Signal face: program select, cycle start and start release."""
        if tag == "program":
            self._try(self._load, int(new))
        elif tag == "start":
            if new and not old:
                self._try(self._cycle_start)
            elif not new:
                self._set("done", False)
        else:
            super().on_write(tag, old, new)

    def call(self, method: str, args: tuple[TagValue, ...]) -> tuple[TagValue, ...]:
        """Method face: ``load_program(number or name)`` and ``start_cycle()``; CommandRefused when refused.

        Arguments arrive checked against the declared types by the protocol face; a program name is the
        program number as text.
        """
        if method == "load_program":
            (program,) = args
            if isinstance(program, str):
                if not program.strip().isdigit():
                    self._set_fault(self.FAULT_UNKNOWN_PROGRAM)
                    self._refuse("program_load", f"unknown program {program!r}")
                    raise CommandRefused("program_load", f"unknown program {program!r}", bad_argument=True)
                program = int(program)
            self._load(int(program))
        elif method == "start_cycle":
            self._cycle_start()
        else:
            raise KeyError(f"{self.name} has no method {method!r}")
        self.world.notify()
        return ()

    def _try(self, command: Callable[..., None], *args: Any) -> None:
        """A signal-face command: a refusal shows only in ``fault_code`` and the counters."""
        with contextlib.suppress(CommandRefused):
            command(*args)

    def _set_fault(self, code: int) -> None:
        self._set("fault_code", code)
        self._set("state", RobotState.FAULT if code else RobotState.IDLE)

    def _load(self, program: int) -> None:
        if self.values["busy"]:
            self._set_fault(self.FAULT_PROGRAM_WHILE_BUSY)
            self._refuse("program_load", "a cycle is running")
            raise CommandRefused("program_load", "a cycle is running")
        known = self.settings.programs
        if program != 0 and known is not None and program not in known:
            self._set_fault(self.FAULT_UNKNOWN_PROGRAM)
            self._refuse("program_load", f"unknown program {program}")
            raise CommandRefused("program_load", f"unknown program {program}", bad_argument=True)
        self._accept("program_load")
        self._set("active_program", 0)
        if self.values["fault_code"] == 0:
            self._set("state", RobotState.IDLE)
        self._run("program", self._loading(program))

    async def _loading(self, program: int) -> None:
        await self._sleep(self.settings.program_load_s)
        self._set("active_program", program)
        if self.values["fault_code"] in self.COMMAND_FAULTS:
            self._set_fault(0)

    def _cycle_start(self) -> None:
        if self.values["fault_code"] != 0:
            reason = f"faulted (code {self.values['fault_code']})"
            self._refuse("cycle_start", reason)
            raise CommandRefused("cycle_start", reason)
        if self.values["busy"]:
            self._refuse("cycle_start", "a cycle is running")
            raise CommandRefused("cycle_start", "a cycle is running")
        if self.values["active_program"] == 0 or "program" in self._tasks:
            self._set_fault(self.FAULT_NO_PROGRAM)
            self._refuse("cycle_start", "no program loaded")
            raise CommandRefused("cycle_start", "no program loaded")
        self._accept("cycle_start")
        self._set("done", False)
        self._set("busy", True)
        self._set("state", RobotState.RUNNING)
        armed, self._armed_fault = self._armed_fault, None
        self._run("cycle", self._cycle(armed))

    async def _cycle(self, armed: tuple[int, float] | None) -> None:
        if armed is not None:
            code, at = armed
            await self._sleep(self.settings.cycle_s * at)
            self.fault(code)
            return
        await self._sleep(self.settings.cycle_s)
        self._set("busy", False)
        # The count before the state, so a client that sees DONE sees the new count with it or before.
        self._set("cycle_count", int(self.values["cycle_count"]) + 1)
        self._set("done", True)
        self._set("state", RobotState.DONE)

    def fault(self, code: int) -> None:
        """Fault now: ``fault_code`` set, ``state`` FAULT, a running cycle stops and never completes."""
        if code == 0:
            raise ValueError("a fault code is not 0")
        self._cancel("cycle")
        self._set("busy", False)
        self._set_fault(code)

    def arm_fault(self, code: int, at: float = 0.5) -> None:
        """Make the next cycle fault with ``code`` after ``at`` (0..1) of its cycle time."""
        if code == 0 or not 0 <= at <= 1:
            raise ValueError("a fault needs a code other than 0 and 'at' within 0..1")
        self._armed_fault = (code, at)

    def reset_fault(self) -> None:
        """Clear the fault code (an operator's reset); ``state`` goes back to IDLE."""
        self._armed_fault = None
        self._set_fault(0)


def _monotonic() -> float:
    """Real seconds for the tool magazine's turning (a seam for tests; the event loop keeps its own clock)."""
    return time.monotonic()


class ToolChangerSim(DeviceSim):
    """A tool changer: ``tool_request`` = N moves for the change time, then ``tool_current`` = N.

    ``preselect`` = N turns the magazine toward tool N while the robot works; a change to N then takes up to
    ``preselect_s`` less (the time the magazine had to turn).
    """

    profile = ProfileKind.TOOL_CHANGER
    settings: ToolChangerSettings
    _preselected: tuple[int, float] | None = None

    def on_write(self, tag: str, old: TagValue, new: TagValue) -> None:
        """Tool change requests and preselects."""
        if tag == "preselect":
            super().on_write(tag, old, new)
            self._preselected = (int(new), _monotonic())
            return
        if tag != "tool_request":
            super().on_write(tag, old, new)
            return
        tool = int(new)
        known = set(self.config.tools.values())
        if self.values["moving"]:
            self._refuse("tool_change", "a change is in progress")
        elif tool != 0 and known and tool not in known:
            self._refuse("tool_change", f"unknown tool {tool}")
        else:
            self._accept("tool_change")
            if tool != self.values["tool_current"]:
                self._set("tool_current", 0)
                self._set("moving", True)
                self._run("change", self._change(tool, self._turned_s(tool)))

    def _turned_s(self, tool: int) -> float:
        """Real seconds the magazine already turned toward ``tool`` (0 unless it is the preselected one)."""
        if self._preselected is None or self._preselected[0] != tool:
            return 0.0
        return min(self.world.scaled(self.settings.preselect_s), _monotonic() - self._preselected[1])

    async def _change(self, tool: int, turned_s: float = 0.0) -> None:
        await asyncio.sleep(max(0.0, self.world.scaled(self.settings.change_s) - turned_s))
        self._set("tool_current", tool)
        self._set("moving", False)


class FixtureSim(DeviceSim):
    """A fixture with clamps and named axes (``<axis>_sp`` / ``<axis>_act``) that move only when unclamped.

    A move written while clamped (or while the clamp command is on) is refused: the setpoint register keeps
    the written value but the axis stays, and ``in_position`` keeps its value, so a controller must compare
    ``<axis>_act`` with what it asked for.
    """

    profile = ProfileKind.FIXTURE
    settings: FixtureSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.axes: tuple[str, ...] = tuple(
            tag[: -len("_sp")]
            for tag in self.types
            if tag.endswith("_sp") and axis_actual_tag(tag[: -len("_sp")]) in self.types
        )
        # Where each axis is heading; a refused move leaves it (and the axis) where it was.
        for axis in self.axes:
            if axis_setpoint_tag(axis) not in self.initial:
                self.values[axis_setpoint_tag(axis)] = self.values[axis_actual_tag(axis)]
        self.targets: dict[str, float] = {
            axis: float(self.values[axis_actual_tag(axis)]) for axis in self.axes
        }
        self.values["clamped"] = bool(self.values["clamp"])
        self.values["in_position"] = all(
            self.values[axis_setpoint_tag(a)] == self.values[axis_actual_tag(a)] for a in self.axes
        )

    def on_write(self, tag: str, old: TagValue, new: TagValue) -> None:
        """Clamp, unclamp and axis moves."""
        if tag == "clamp":
            if bool(new) != bool(old):
                self._accept("clamp" if new else "unclamp")
                self._run("clamp", self._clamping(bool(new)))
            return
        axis = tag[: -len("_sp")] if tag.endswith("_sp") else None
        if axis in self.axes:
            assert axis is not None
            self._move(axis, float(new))
            return
        super().on_write(tag, old, new)

    async def _clamping(self, closed: bool) -> None:
        await self._sleep(self.settings.clamp_s)
        self._set("clamped", closed)

    def _move(self, axis: str, target: float) -> None:
        command = f"move:{axis}"
        if self.values["clamped"] or self.values["clamp"]:
            self._refuse(command, "clamped")
            return
        self._accept(command)
        self.targets[axis] = target
        self._set("in_position", False)
        self._run(command, self._motion(axis, target))

    async def _motion(self, axis: str, target: float) -> None:
        act = axis_actual_tag(axis)
        loop = asyncio.get_running_loop()
        start = float(self.values[act])
        distance = abs(target - start)
        direction = 1.0 if target >= start else -1.0
        scale = self.world.time_scale
        duration = distance / self.settings.speed_mm_s * scale
        t0 = loop.time()
        while True:
            elapsed = loop.time() - t0
            if elapsed >= duration:
                break
            self._set(act, start + direction * distance * (elapsed / duration))
            await asyncio.sleep(min(MOTION_TICK_S, duration - elapsed))
        self._set(act, target)
        self._arrived(axis)

    def _arrived(self, axis: str) -> None:
        # An axis whose motion ended in this same loop turn is done already, though its task is still listed
        # until its done-callback runs: it must not keep ``in_position`` False for good.
        moving = {
            slot
            for slot, task in self._tasks.items()
            if slot.startswith("move:") and slot != f"move:{axis}" and not task.done()
        }
        if not moving:
            self._set("in_position", True)


class PressSim(DeviceSim):
    """A press (stapler): ``start`` cycles for the cycle time, then ``done``; setpoints are plain values."""

    profile = ProfileKind.PRESS
    settings: PressSettings

    def on_write(self, tag: str, old: TagValue, new: TagValue) -> None:
        """Cycle start and start release; everything else is a setpoint."""
        if tag != "start":
            super().on_write(tag, old, new)
        elif new and not old:
            if self.values["busy"]:
                self._refuse("cycle_start", "a cycle is running")
                return
            self._accept("cycle_start")
            self._set("done", False)
            self._set("busy", True)
            self._run("cycle", self._cycle())
        elif not new:
            self._set("done", False)

    async def _cycle(self) -> None:
        await self._sleep(self.settings.cycle_s)
        self._set("busy", False)
        if "staples" in self.values:
            pitch = float(self.values.get(self.settings.pitch_tag, 0.0))
            fired = max(1, round(self.settings.seam_mm / pitch)) if pitch > 0 else 1
            self._set("staples", int(self.values["staples"]) + fired)
        self._set("done", True)


class GaugeSim(DeviceSim):
    """A gauge: ``trigger`` measures every channel from the world (with noise and rare outliers), then
    ``ready``."""

    profile = ProfileKind.GAUGE
    settings: GaugeSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rng = self.world.rng(self.name)
        self.measurements = 0
        self.last_outlier: str | None = None
        """Channel pushed out on the last measurement, if that part was a reject."""

    def on_write(self, tag: str, old: TagValue, new: TagValue) -> None:
        """Trigger and trigger release; ``accept``/``reject`` set true count as one sorted part each."""
        if tag in ("accept", "reject"):
            if new:
                self._accept(tag)
        elif tag != "trigger":
            super().on_write(tag, old, new)
        elif new and not old:
            self._accept("trigger")
            self._set("ready", False)
            self._run("measure", self._measure())
        elif not new:
            self._cancel("measure")
            self._set("ready", False)

    async def _measure(self) -> None:
        await self._sleep(self.settings.measure_s)
        for channel, value in self.measure().items():
            self._set(channel, value)
        self._set("ready", True)

    def measure(self) -> dict[str, float]:
        """One measurement of every channel from the world's current values."""
        settings = self.settings
        values: dict[str, float] = {}
        for channel, spec in settings.channels.items():
            source = float(self.world.value(spec.follows)) if spec.follows else 0.0
            values[channel] = spec.gain * source + spec.offset + self.rng.gauss(0.0, spec.noise)
        self.last_outlier = None
        candidates = [c for c in settings.channels if settings.outlier_delta(c) > 0]
        if candidates and self.rng.random() < settings.outlier_rate:
            channel = self.rng.choice(candidates)
            values[channel] += self.rng.choice((-1.0, 1.0)) * settings.outlier_delta(channel)
            self.last_outlier = channel
        self.measurements += 1
        return values


class IoSim(DeviceSim):
    """Plain inputs wired from a safety PLC (guard door, e-stop, air pressure): the cell only reads them.

    ``set_input`` changes one as the safety PLC would; a client write is refused and counted.
    """

    profile = ProfileKind.IO

    def on_write(self, tag: str, old: TagValue, new: TagValue) -> None:
        """Inputs are not written by a client: count the refusal, keep the value."""
        self.values[tag] = old
        self._refuse(f"write:{tag}", "safety inputs are read-only")

    def set_input(self, tag: str, value: TagValue) -> None:
        """Change an input (the door opens, the e-stop is pressed)."""
        if tag not in self.types:
            raise KeyError(f"{self.name} has no input {tag!r}")
        self._set(tag, value)


PROFILE_CLASSES: dict[ProfileKind, type[DeviceSim]] = {
    ProfileKind.ROBOT: RobotSim,
    ProfileKind.TOOL_CHANGER: ToolChangerSim,
    ProfileKind.FIXTURE: FixtureSim,
    ProfileKind.PRESS: PressSim,
    ProfileKind.GAUGE: GaugeSim,
    ProfileKind.IO: IoSim,
}


def build_world(
    devices: Iterable[tuple[str, DeviceConfig]], sims: SimsConfig, *, time_scale: float = 1.0, seed: int = 0
) -> World:
    """A world holding one simulated device per cell device, configured from ``sims``."""
    world = World(time_scale=time_scale, seed=seed)
    for name, config in devices:
        cls = PROFILE_CLASSES[config.profile]
        cls(name, config, world, sims.settings_for(name, config.profile), sims.initial_for(name))
    return world
