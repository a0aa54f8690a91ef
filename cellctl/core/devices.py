"""Equipment profiles: the typed tag slots each kind of device must bind, and their handshakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from cellctl.core.tags import Reading, Tag, TagBackend, TagValue
from cellctl.errors import DeviceError, DeviceFault


class ProfileKind(StrEnum):
    """Kinds of equipment a cell device can be."""

    ROBOT = "robot"
    TOOL_CHANGER = "tool_changer"
    FIXTURE = "fixture"
    PRESS = "press"
    GAUGE = "gauge"
    IO = "io"
    """Plain inputs the controller only watches (safety inputs: interlocks, the e-stop); no handshake."""


class Handshake(StrEnum):
    """How a robot is commanded (``devices.<robot>.handshake`` in the cell file)."""

    SIGNAL = "signal"
    """Write a program number, hold a start bit, wait for busy then done, read a fault code."""
    METHOD = "method"
    """Call a method that loads a program and one that starts the cycle; wait on state and counter tags."""


class RobotState(IntEnum):
    """Values of the ``state`` tag of a method-style robot."""

    IDLE = 0
    RUNNING = 1
    DONE = 2
    """The last cycle finished; stays until the next cycle starts or a program is loaded."""
    FAULT = 3
    """The robot stopped on a fault; ``fault_code`` says which."""


class ValueKind(StrEnum):
    """What a slot needs from its tag's (or method argument's) datatype."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STRING = "string"


@dataclass(frozen=True, slots=True)
class Slot:
    """A tag a profile needs: its name in the device's tag map, the value kind and whether it is written."""

    name: str
    kind: ValueKind
    writable: bool
    doc: str


PROFILE_SLOTS: dict[ProfileKind, tuple[Slot, ...]] = {
    ProfileKind.ROBOT: (
        Slot("program", ValueKind.INT, True, "program number requested by the controller"),
        Slot("active_program", ValueKind.INT, False, "program number the robot has loaded"),
        Slot("start", ValueKind.BOOL, True, "cycle start, held high until done"),
        Slot("busy", ValueKind.BOOL, False, "robot is running a cycle"),
        Slot("done", ValueKind.BOOL, False, "cycle finished; cleared when start drops"),
        Slot("fault_code", ValueKind.INT, False, "0 when healthy"),
        Slot("cycle_count", ValueKind.INT, False, "cycles completed since power-on"),
    ),
    ProfileKind.TOOL_CHANGER: (
        Slot("tool_request", ValueKind.INT, True, "tool number to mount"),
        Slot("tool_current", ValueKind.INT, False, "tool number mounted (0 for none)"),
        Slot("moving", ValueKind.BOOL, False, "a tool change is in progress"),
    ),
    ProfileKind.FIXTURE: (
        Slot("clamp", ValueKind.BOOL, True, "clamp command: true closes"),
        Slot("clamped", ValueKind.BOOL, False, "clamps confirmed closed"),
        Slot("in_position", ValueKind.BOOL, False, "every axis has reached its setpoint"),
    ),
    ProfileKind.PRESS: (
        Slot("start", ValueKind.BOOL, True, "station cycle start, held high until done"),
        Slot("busy", ValueKind.BOOL, False, "station is cycling"),
        Slot("done", ValueKind.BOOL, False, "station cycle finished; cleared when start drops"),
    ),
    ProfileKind.GAUGE: (
        Slot("trigger", ValueKind.BOOL, True, "measure request, held high until ready"),
        Slot("ready", ValueKind.BOOL, False, "measurements valid; cleared when trigger drops"),
    ),
    ProfileKind.IO: (),
}
"""Fixed slots per profile, a robot's for the signal handshake (the default); a robot in the method handshake
binds ROBOT_METHOD_SLOTS and ROBOT_METHODS instead (see :func:`profile_slots`, :func:`profile_methods`).
Fixture axes add ``<axis>_sp`` (writable float) and ``<axis>_act`` (float) per axis named in a recipe; gauges
add one readable float per quality characteristic."""


@dataclass(frozen=True, slots=True)
class MethodSlot:
    """A method a profile calls: its name in the device's method map, the input kinds it may take (any one of
    ``inputs``), the output kinds it returns, and what it does."""

    name: str
    inputs: tuple[tuple[ValueKind, ...], ...]
    outputs: tuple[ValueKind, ...]
    doc: str


ROBOT_METHOD_SLOTS: tuple[Slot, ...] = (
    Slot("active_program", ValueKind.INT, False, "program number the robot has loaded (0 for none)"),
    Slot("state", ValueKind.INT, False, "0 idle, 1 running, 2 done, 3 fault (RobotState)"),
    Slot("cycle_count", ValueKind.INT, False, "cycles completed since power-on"),
    Slot("fault_code", ValueKind.INT, False, "0 when healthy"),
)
"""Tags of a robot in the method handshake."""

ROBOT_METHODS: tuple[MethodSlot, ...] = (
    MethodSlot(
        "load_program",
        ((ValueKind.INT,), (ValueKind.STRING,)),
        (),
        "loads a program by number, or by name (the number as text) where its input is a string",
    ),
    MethodSlot("start_cycle", ((),), (), "starts one cycle of the loaded program"),
)
"""Methods of a robot in the method handshake."""


def profile_slots(kind: ProfileKind, handshake: Handshake = Handshake.SIGNAL) -> tuple[Slot, ...]:
    """The tag slots a device of ``kind`` binds in ``handshake`` style."""
    if kind is ProfileKind.ROBOT and handshake is Handshake.METHOD:
        return ROBOT_METHOD_SLOTS
    return PROFILE_SLOTS[kind]


def profile_methods(kind: ProfileKind, handshake: Handshake = Handshake.SIGNAL) -> tuple[MethodSlot, ...]:
    """The methods a device of ``kind`` must offer in ``handshake`` style (none but for method robots)."""
    if kind is ProfileKind.ROBOT and handshake is Handshake.METHOD:
        return ROBOT_METHODS
    return ()


@dataclass(frozen=True, slots=True)
class MethodSignature:
    """The argument kinds of one configured method, as a profile needs to know them."""

    inputs: tuple[ValueKind, ...] = ()
    outputs: tuple[ValueKind, ...] = ()


def axis_setpoint_tag(axis: str) -> str:
    """Tag name of a fixture axis setpoint."""
    return f"{axis}_sp"


def axis_actual_tag(axis: str) -> str:
    """Tag name of a fixture axis actual position."""
    return f"{axis}_act"


# ------------------------------------------------------------------------------------------------------------
# Profiles: the handshakes, in one place. Steps and the part cycle call these, never raw tag writes.


@asynccontextmanager
async def _deadline(device: str, what: str, timeout: float) -> AsyncIterator[None]:
    """Bound a whole handshake; its overrun is a DeviceFault naming the device and the handshake."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise DeviceFault(device, f"{what} did not finish within {timeout:g} s") from None


def _tag(tags: Mapping[str, Tag], device: str, name: str) -> Tag:
    try:
        return tags[name]
    except KeyError:
        raise DeviceError(device, f"profile slot {name!r} is not bound to a tag") from None


async def _wait_tags(
    backend: TagBackend,
    names: Sequence[str],
    done: Callable[[Mapping[str, TagValue]], bool],
    timeout: float,
    what: str,
) -> dict[str, TagValue]:
    """Wait until the usable values of ``names`` satisfy ``done`` (which may raise to stop the wait).

    Fed by the backend's subscription or poll like Tag.wait_until, over several tags at once; DeviceFault
    naming ``what`` and the last values after ``timeout`` s.
    """
    changed = asyncio.Event()
    wanted = frozenset(names)

    def on_reading(tag: str, _reading: Reading) -> None:
        if tag in wanted:
            changed.set()

    unsubscribe = backend.watch(on_reading)
    try:
        async with asyncio.timeout(timeout):
            while True:
                changed.clear()
                readings = {name: backend.last(name) for name in names}
                if all(r.usable for r in readings.values()):
                    values = {name: r.value for name, r in readings.items() if r.value is not None}
                    if done(values):
                        return values
                await changed.wait()
    except TimeoutError:
        last = ", ".join(f"{n}={backend.last(n).value!r} ({backend.last(n).quality})" for n in names)
        raise DeviceFault(backend.device, f"{what} not seen within {timeout:g} s (last {last})") from None
    finally:
        unsubscribe()


class Profile:
    """Base of the equipment profiles: a device name and its tags by name."""

    kind: ProfileKind

    def __init__(self, device: str, backend: TagBackend, tag_names: Iterable[str]) -> None:
        self.device = device
        self.backend = backend
        self.tags: dict[str, Tag] = {name: Tag(backend, name) for name in tag_names}

    def tag(self, name: str) -> Tag:
        """The tag bound to ``name``; DeviceError when the device has none."""
        return _tag(self.tags, self.device, name)

    async def call(self, method: str, *args: TagValue) -> tuple[TagValue, ...]:
        """Call one of the device's methods and return its outputs."""
        return await self.backend.call(method, args)


class Robot(Profile):
    """A robot: loads a program by number and runs cycles of it, in the handshake style its config names.

    Steps and the part cycle see only this API; how the robot is told (signal or method handshake) is the
    business of the style object chosen at construction.
    """

    kind = ProfileKind.ROBOT

    def __init__(
        self,
        device: str,
        backend: TagBackend,
        tag_names: Iterable[str],
        *,
        handshake: Handshake = Handshake.SIGNAL,
        methods: Mapping[str, MethodSignature] | None = None,
    ) -> None:
        super().__init__(device, backend, tag_names)
        self.handshake = handshake
        self._style: _RobotStyle = (
            _MethodStyle(self, methods or {}) if handshake is Handshake.METHOD else _SignalStyle(self)
        )

    async def load_program(self, program: int, timeout: float) -> None:
        """Request ``program`` and wait until the robot reports it loaded."""
        await self._check_fault()
        async with _deadline(self.device, f"loading program {program}", timeout):
            await self._style.request_program(program)
            active = self.tag("active_program")
            # The cached value may still show a load that ended just before this request (a robot clears
            # active_program when it takes a new one): only a fresh read confirms. A read refreshes the
            # cache, so a stale value is waited out, not spun on; the deadline bounds the loop.
            while True:
                await active.wait_for_value(program, timeout)
                if await active.read_value() == program:
                    return

    async def active_program(self) -> int:
        """The program number the robot has loaded (read from the device)."""
        return int(await self.tag("active_program").read_value())

    async def run_cycle(self, timeout: float) -> None:
        """Run one cycle of the loaded program; DeviceFault when it faults, none is loaded or it overruns.

        A robot with no program loaded is refused here, before it is commanded.
        """
        await self._check_fault()
        if await self.active_program() == 0:
            raise DeviceFault(self.device, "no program loaded: cycle refused", tag="active_program")
        async with _deadline(self.device, "robot cycle", timeout):
            await self._style.cycle(timeout)
        await self._check_fault()

    async def _check_fault(self) -> None:
        code = await self.tag("fault_code").read_value()
        if code:
            raise DeviceFault(self.device, f"robot reports fault code {code}", tag="fault_code")

    async def _raise_fault(self, what: str) -> None:
        """Raise the DeviceFault of a fault seen during ``what``, with the fault code read from the robot."""
        reading = await self.tag("fault_code").read()
        code = reading.value if reading.usable else f"unknown ({reading.quality}: {reading.reason})"
        raise DeviceFault(self.device, f"robot faulted during {what}: fault code {code}", tag="fault_code")


class _RobotStyle:
    """How one handshake style tells a robot to load a program and to run a cycle."""

    def __init__(self, robot: Robot) -> None:
        self.robot = robot

    async def request_program(self, program: int) -> None:
        """Ask the robot to load ``program`` (the caller waits for ``active_program``)."""
        raise NotImplementedError

    async def cycle(self, timeout: float) -> None:
        """Start one cycle and return when it is done; DeviceFault when the robot faults meanwhile."""
        raise NotImplementedError


class _SignalStyle(_RobotStyle):
    """Write ``program``; hold ``start`` high until ``done``, drop it, wait for ``done`` to clear."""

    async def request_program(self, program: int) -> None:
        await self.robot.tag("program").write(program)

    async def cycle(self, timeout: float) -> None:
        robot = self.robot
        start, done = robot.tag("start"), robot.tag("done")
        faulted = False

        def finished(values: Mapping[str, TagValue]) -> bool:
            nonlocal faulted
            faulted = values["fault_code"] != 0
            return faulted or bool(values["done"])

        await start.write(True)
        try:
            await _wait_tags(robot.backend, ("done", "fault_code"), finished, timeout, "cycle done")
        finally:
            # Drop start even when the wait failed, so the robot never re-triggers on its own.
            await asyncio.shield(start.write(False))
        if faulted:
            await robot._raise_fault("the cycle")
        await done.wait_until(lambda v: not v, timeout)


class _MethodStyle(_RobotStyle):
    """Call ``load_program`` / ``start_cycle``; a cycle is done when ``state`` reaches DONE after RUNNING was
    seen or ``cycle_count`` grew (so a DONE left over from the previous cycle never counts)."""

    def __init__(self, robot: Robot, methods: Mapping[str, MethodSignature]) -> None:
        super().__init__(robot)
        load = methods.get("load_program")
        self._by_name = load is not None and load.inputs == (ValueKind.STRING,)

    async def request_program(self, program: int) -> None:
        await self.robot.call("load_program", str(program) if self._by_name else program)

    async def cycle(self, timeout: float) -> None:
        robot = self.robot
        before = int(await robot.tag("cycle_count").read_value())
        running_seen = False

        def on_reading(tag: str, reading: Reading) -> None:
            # Each reading, not the value the wait wakes to: DONE may overtake RUNNING at once.
            nonlocal running_seen
            if tag == "state" and reading.usable and reading.value == RobotState.RUNNING:
                running_seen = True

        def finished(values: Mapping[str, TagValue]) -> bool:
            state = values["state"]
            counted = isinstance(values["cycle_count"], int) and values["cycle_count"] > before
            return state == RobotState.FAULT or (state == RobotState.DONE and (running_seen or counted))

        unsubscribe = robot.backend.watch(on_reading)
        try:
            await robot.call("start_cycle")
            values = await _wait_tags(
                robot.backend, ("state", "cycle_count"), finished, timeout, "cycle done"
            )
        finally:
            unsubscribe()
        if values["state"] == RobotState.FAULT:
            await robot._raise_fault("the cycle")


class ToolChanger(Profile):
    """A tool changer that mounts a tool by number."""

    kind = ProfileKind.TOOL_CHANGER

    async def current_tool(self) -> int:
        """Number of the tool mounted now (0 for none)."""
        return int(await self.tag("tool_current").read_value())

    async def change(self, tool: int, timeout: float) -> None:
        """Mount ``tool`` and wait until the changer reports it mounted and idle."""
        await self.tag("tool_request").write(tool)
        async with _deadline(self.device, f"tool change to {tool}", timeout):
            await self.tag("tool_current").wait_for_value(tool, timeout)
            await self.tag("moving").wait_for_value(False, timeout)


class Fixture(Profile):
    """An adjustable fixture: clamps and named axes with setpoint and actual position."""

    kind = ProfileKind.FIXTURE

    async def set_clamped(self, closed: bool, timeout: float) -> None:
        """Close or open the clamps and wait for the feedback."""
        await self.tag("clamp").write(closed)
        await self.tag("clamped").wait_for_value(closed, timeout)

    async def position(self, axis: str) -> float:
        """Actual position of ``axis``."""
        return float(await self.tag(axis_actual_tag(axis)).read_value())

    async def move(self, positions: Mapping[str, float], timeout: float, tolerance: float = 0.05) -> None:
        """Move axes to ``positions`` and wait until each actual is within ``tolerance`` and in position."""
        async with _deadline(self.device, "fixture move", timeout):
            for axis, target in positions.items():
                await self.tag(axis_setpoint_tag(axis)).write(float(target))
            for axis, target in positions.items():
                await self.tag(axis_actual_tag(axis)).wait_until(_near(target, tolerance), timeout)
            await self.tag("in_position").wait_for_value(True, timeout)


def _near(target: float, tolerance: float) -> Callable[[TagValue], bool]:
    def near(value: TagValue) -> bool:
        return isinstance(value, int | float) and abs(float(value) - target) <= tolerance

    return near


class Press(Profile):
    """A station (press, stapler) with setpoints and a start/busy/done cycle."""

    kind = ProfileKind.PRESS

    async def run_cycle(self, timeout: float) -> None:
        """Run one station cycle."""
        start, done = self.tag("start"), self.tag("done")
        async with _deadline(self.device, "station cycle", timeout):
            await start.write(True)
            try:
                await done.wait_until(bool, timeout)
            finally:
                await asyncio.shield(start.write(False))
            await done.wait_until(lambda v: not v, timeout)


class IoModule(Profile):
    """Inputs the controller watches (interlocks, e-stop): no slots, no handshake."""

    kind = ProfileKind.IO


class Gauge(Profile):
    """A measuring gauge: trigger, wait ready, read the channels, release."""

    kind = ProfileKind.GAUGE

    async def measure(self, channels: Iterable[str], timeout: float) -> dict[str, Reading]:
        """Trigger a measurement and return a Reading per channel (quality says whether to trust it)."""
        trigger, ready = self.tag("trigger"), self.tag("ready")
        async with _deadline(self.device, "measurement", timeout):
            await trigger.write(True)
            try:
                await ready.wait_for_value(True, timeout)
                readings = {name: await self.tag(name).read() for name in channels}
            finally:
                await asyncio.shield(trigger.write(False))
            await ready.wait_for_value(False, timeout)
        return readings


PROFILE_CLASSES: dict[ProfileKind, type[Profile]] = {
    ProfileKind.ROBOT: Robot,
    ProfileKind.TOOL_CHANGER: ToolChanger,
    ProfileKind.FIXTURE: Fixture,
    ProfileKind.PRESS: Press,
    ProfileKind.GAUGE: Gauge,
    ProfileKind.IO: IoModule,
}


def make_profile(
    kind: ProfileKind,
    device: str,
    backend: TagBackend,
    tag_names: Iterable[str],
    *,
    handshake: Handshake = Handshake.SIGNAL,
    methods: Mapping[str, MethodSignature] | None = None,
) -> Profile:
    """Build the profile object for a device of ``kind`` (a robot in its ``handshake`` style)."""
    if kind is ProfileKind.ROBOT:
        return Robot(device, backend, tag_names, handshake=handshake, methods=methods)
    if handshake is not Handshake.SIGNAL:
        raise DeviceError(device, f"a {kind} has no {handshake} handshake; only a robot has handshake styles")
    return PROFILE_CLASSES[kind](device, backend, tag_names)
