"""Equipment profiles: the typed tag slots each kind of device must bind, and their handshakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from cellctl.core.tags import Reading, Tag, TagBackend, TagValue
from cellctl.errors import DeviceError, DeviceFault


class ProfileKind(StrEnum):
    """Kinds of equipment a cell device can be."""

    ROBOT = "robot"
    TOOL_CHANGER = "tool_changer"
    FIXTURE = "fixture"
    PRESS = "press"
    GAUGE = "gauge"


class ValueKind(StrEnum):
    """What a slot needs from its tag's datatype."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"


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
}
"""Fixed slots per profile. Fixture axes add ``<axis>_sp`` (writable float) and ``<axis>_act`` (float) per
axis named in a recipe; gauges add one readable float per quality characteristic."""


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


class Profile:
    """Base of the equipment profiles: a device name and its tags by name."""

    kind: ProfileKind

    def __init__(self, device: str, backend: TagBackend, tag_names: Iterable[str]) -> None:
        self.device = device
        self.tags: dict[str, Tag] = {name: Tag(backend, name) for name in tag_names}

    def tag(self, name: str) -> Tag:
        """The tag bound to ``name``; DeviceError when the device has none."""
        return _tag(self.tags, self.device, name)


class Robot(Profile):
    """A robot driven by program number and a start/busy/done handshake."""

    kind = ProfileKind.ROBOT

    async def load_program(self, program: int, timeout: float) -> None:
        """Request ``program`` and wait until the robot reports it loaded."""
        await self._check_fault()
        await self.tag("program").write(program)
        await self.tag("active_program").wait_for_value(program, timeout)

    async def active_program(self) -> int:
        """The program number the robot has loaded (read from the device)."""
        return int(await self.tag("active_program").read_value())

    async def run_cycle(self, timeout: float) -> None:
        """Run one cycle of the loaded program: start, wait done, drop start, wait done cleared."""
        await self._check_fault()
        start, done = self.tag("start"), self.tag("done")
        async with _deadline(self.device, "robot cycle", timeout):
            await start.write(True)
            try:
                await done.wait_until(bool, timeout)
            finally:
                # Drop start even when the wait failed, so the robot never re-triggers on its own.
                await asyncio.shield(start.write(False))
            await done.wait_until(lambda v: not v, timeout)
        await self._check_fault()

    async def _check_fault(self) -> None:
        code = await self.tag("fault_code").read_value()
        if code:
            raise DeviceFault(self.device, f"robot reports fault code {code}", tag="fault_code")


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
}


def make_profile(kind: ProfileKind, device: str, backend: TagBackend, tag_names: Iterable[str]) -> Profile:
    """Build the profile object for a device of ``kind``."""
    return PROFILE_CLASSES[kind](device, backend, tag_names)
