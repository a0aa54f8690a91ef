"""A whole cell of soft devices that answer the handshakes at once, for engine unit tests (no sockets).

A robot answers in the handshake style its config names (signal or method); ``soft_robot(dev)`` gives the
robot's responder, so a test can make its next cycle fault part way.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cellctl.core.conditions import Condition
from cellctl.core.devices import Handshake, ProfileKind, RobotState
from cellctl.core.events import Event
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.errors import DeviceFault, StoreError
from cellctl.schema.cell import CellConfig

GaugeFn = Callable[[str], float]
"""Gauge channel name -> value measured for the next part."""


FAULT_NO_PROGRAM = 1
"""Fault code of a cycle started with no program, as the simulated robot sets it."""


@dataclass
class SoftRobot:
    """A soft robot: a program loads at once, a cycle completes at once unless a fault is armed."""

    dev: SoftDriver
    armed_fault: int | None = None
    """Fault code the next cycle stops with, part way (then disarmed)."""

    def _no_program(self) -> bool:
        return self.dev.last("active_program").value in (0, None)

    def _count_cycle(self) -> None:
        count = self.dev.last("cycle_count").value
        self.dev.set("cycle_count", int(count if isinstance(count, int) else 0) + 1)

    def signal_face(self) -> None:
        """Answer writes of ``program`` and ``start``."""
        dev = self.dev

        def hook(tag: str, value: TagValue) -> None:
            if tag == "program":
                dev.set("active_program", value)
            elif tag == "start" and value:
                if self._no_program():
                    dev.set("fault_code", FAULT_NO_PROGRAM)
                    return
                dev.set("busy", True)
                if self.armed_fault is not None:
                    code, self.armed_fault = self.armed_fault, None
                    dev.set("busy", False)
                    dev.set("fault_code", code)
                    return
                dev.set("busy", False)
                self._count_cycle()
                dev.set("done", True)
            elif tag == "start":
                dev.set("done", False)

        dev.on_write(hook)

    def method_face(self) -> None:
        """Answer calls of ``load_program`` (number, or name as text) and ``start_cycle``."""
        dev = self.dev

        def load_program(args: tuple[TagValue, ...]) -> tuple[TagValue, ...]:
            (program,) = args
            dev.set("active_program", int(program))
            dev.set("state", RobotState.IDLE)
            return ()

        def start_cycle(_args: tuple[TagValue, ...]) -> tuple[TagValue, ...]:
            if self._no_program():
                dev.set("fault_code", FAULT_NO_PROGRAM)
                dev.set("state", RobotState.FAULT)
                raise DeviceFault(dev.device, "method 'start_cycle' failed: BadInvalidState")
            dev.set("state", RobotState.RUNNING)
            if self.armed_fault is not None:
                code, self.armed_fault = self.armed_fault, None
                dev.set("fault_code", code)
                dev.set("state", RobotState.FAULT)
                return ()
            self._count_cycle()
            dev.set("state", RobotState.DONE)
            return ()

        dev.on_call("load_program", load_program)
        dev.on_call("start_cycle", start_cycle)


_ROBOTS: weakref.WeakKeyDictionary[SoftDriver, SoftRobot] = weakref.WeakKeyDictionary()


def soft_robot(dev: SoftDriver) -> SoftRobot:
    """The responder of a soft robot made by ``soft_cell``."""
    return _ROBOTS[dev]


def _robot(dev: SoftDriver, handshake: Handshake) -> None:
    robot = SoftRobot(dev)
    _ROBOTS[dev] = robot
    if handshake is Handshake.METHOD:
        robot.method_face()
    else:
        robot.signal_face()


def _tool_changer(dev: SoftDriver) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "tool_request":
            dev.set("tool_current", value)
            dev.set("moving", False)

    dev.on_write(hook)


def _fixture(dev: SoftDriver) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "clamp":
            dev.set("clamped", bool(value))
        elif tag.endswith("_sp"):
            if dev.last("clamped").value:
                return  # a clamped fixture refuses to move, as the simulator does
            dev.set(tag[: -len("_sp")] + "_act", value)
            dev.set("in_position", True)

    dev.on_write(hook)


def _press(dev: SoftDriver) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "start":
            dev.set("busy", False)
            dev.set("done", bool(value))

    dev.on_write(hook)


def _gauge(dev: SoftDriver, measure: GaugeFn, channels: list[str]) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "trigger" and value:
            for channel in channels:
                dev.set(channel, measure(channel))
            dev.set("ready", True)
        elif tag == "trigger":
            dev.set("ready", False)

    dev.on_write(hook)


def following(devices: Mapping[str, SoftDriver]) -> GaugeFn:
    """A gauge that measures what the setup makes, as the simulators do (config/sims.yaml): the seat's width
    and depth are the fixture's axes, the staple height falls with the stapler's force; so a part made on the
    right setup passes."""

    def number(device: str, tag: str) -> float:
        value = devices[device].last(tag).value
        return float(value) if isinstance(value, int | float) else 0.0

    def measure(channel: str) -> float:
        if channel == "width_mm":
            return number("fixture", "width_act")
        if channel == "depth_mm":
            return number("fixture", "depth_act")
        if channel == "staple_height_mm":
            return 3.0 - 0.002 * number("stapler", "force_sp")
        return 0.0

    return measure


def _clear_of(cond: Condition) -> TagValue:
    """A value of the condition's tag that does not meet it (the healthy side)."""
    literal = cond.literal
    if isinstance(literal, bool):
        return not literal if cond.op == "==" else literal
    if isinstance(literal, str):
        return literal + "-not" if cond.op == "==" else literal
    if cond.op in ("<", "<=", "=="):
        return literal + 1
    return literal - 1 if cond.op in (">", ">=") else literal


def healthy_inputs(cell: CellConfig) -> dict[str, dict[str, TagValue]]:
    """Per device, values of the interlocks' and e-stop's tags that trip nothing (guard closed...)."""
    values: dict[str, dict[str, TagValue]] = {}
    for interlock in cell.interlocks.values():
        cond = interlock.condition
        if cell.devices[cond.device].profile is ProfileKind.IO:
            values.setdefault(cond.device, {})[cond.tag] = _clear_of(cond)
    if cell.estop is not None:
        active = cell.estop.active_when
        healthy: TagValue = not active if isinstance(active, bool) else active + 1
        values.setdefault(cell.estop.device, {})[cell.estop.tag_name] = healthy
    return values


def soft_cell(
    cell: CellConfig,
    *,
    measure: GaugeFn | None = None,
    initial: Mapping[str, Mapping[str, TagValue]] | None = None,
    follow: bool = True,
) -> dict[str, SoftDriver]:
    """Soft drivers for every device of ``cell``, idle, with no tool and no program, answering at once.

    The gauge measures ``measure(channel)``; without one, what the setup makes (see ``following``), so parts
    made on the right setup pass and a first-article gate does not hold the cell; ``follow=False``: 0.0.
    """
    devices: dict[str, SoftDriver] = {}
    safe = healthy_inputs(cell)
    if measure is None and follow:
        measure = following(devices)  # filled below, read only when a part is measured
    for name, config in cell.devices.items():
        start: dict[str, TagValue] = {}
        for tag_name, tag in config.tags.items():
            start[tag_name] = False if tag.datatype == "bool" else (0.0 if "float" in tag.datatype else 0)
        start.update(safe.get(name, {}))
        start.update((initial or {}).get(name, {}))
        dev = SoftDriver.from_config(name, config, initial=start)
        if config.profile is ProfileKind.ROBOT:
            _robot(dev, config.handshake)
        elif config.profile is ProfileKind.TOOL_CHANGER:
            _tool_changer(dev)
        elif config.profile is ProfileKind.FIXTURE:
            _fixture(dev)
        elif config.profile is ProfileKind.PRESS:
            _press(dev)
        elif config.profile is ProfileKind.GAUGE:
            channels = [t for t, c in config.tags.items() if c.datatype in ("float32", "float64")]
            _gauge(dev, measure or (lambda _channel: 0.0), channels)
        devices[name] = dev
    return devices


class StalledFixture:
    """A soft fixture whose axis moves stop half way while ``stalled`` (never in position), as if a move were
    still under way; clamps answer at once, and a clamped fixture refuses to move."""

    def __init__(self, config: CellConfig, device: str = "fixture", **initial: TagValue) -> None:
        start: dict[str, TagValue] = {
            tag: False if c.datatype == "bool" else 0.0 for tag, c in config.devices[device].tags.items()
        }
        start.update(initial)
        self.dev = SoftDriver.from_config(device, config.devices[device], initial=start)
        self.stalled = True
        self.dev.on_write(self._hook)

    def _hook(self, tag: str, value: TagValue) -> None:
        dev = self.dev
        if tag == "clamp":
            dev.set("clamped", bool(value))
        elif tag.endswith("_sp") and not dev.last("clamped").value:
            act = tag[: -len("_sp")] + "_act"
            if self.stalled:
                was = dev.last(act).value
                dev.set(act, (float(was if isinstance(was, float | int) else 0.0) + float(value)) / 2)
                dev.set("in_position", False)
            else:
                dev.set(act, value)
                dev.set("in_position", True)


class FailingStore:
    """An in-memory journal (an EventSink) that starts failing on demand with StoreError, as a full disk does.

    ``fail_from(trip)``: from the first fact ``trip`` matches on, every record fails (that one included) until
    ``heal()``. ``tripped`` is set at the first failure.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.refused: list[Event] = []
        self.failing = False
        self.tripped = asyncio.Event()
        self._trip: Callable[[Event], bool] | None = None

    def fail_from(self, trip: Callable[[Event], bool]) -> None:
        """Start failing at the first fact ``trip`` matches."""
        self._trip = trip

    def heal(self) -> None:
        """Record again (disk space is back)."""
        self.failing, self._trip = False, None

    async def record(self, event: Event) -> int:
        if not self.failing and self._trip is not None and self._trip(event):
            self.failing = True
            self.tripped.set()
        if self.failing:
            self.refused.append(event)
            raise StoreError("journal.db: append failed: database or disk is full")
        self.events.append(event)
        return len(self.events)
