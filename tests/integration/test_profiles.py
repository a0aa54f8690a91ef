"""One set of behavioural tests of the equipment profiles, run against the soft cell and the simulators.

Each test is parametrised over two backends: ``soft`` (tests/softcell.py: in-memory devices answering at once)
and ``sim`` (device_sims over real OPC UA and Modbus TCP on loopback, driven by the real drivers from
``build_driver``). Robot tests also run in both handshake styles: ``signal`` (config/cell.yaml) and ``method``
(config/examples/method-robot). Commands are counted by the backend (SoftDriver writes and calls, the
simulators' counters), so "nothing commanded twice" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from cellctl.core.clock import SystemClock
from cellctl.core.devices import Fixture, Gauge, Press, Profile, Robot, ToolChanger
from cellctl.core.ports import Driver, LinkState
from cellctl.core.tags import TagBackend
from cellctl.drivers import SoftDriver, build_driver
from cellctl.engine.engine import build_profiles
from cellctl.errors import DeviceError, DeviceFault
from cellctl.schema.load import LoadedConfig, load_config
from device_sims.harness import SimCell
from tests.softcell import soft_cell, soft_robot

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIRS = {"signal": REPO / "config", "method": REPO / "config" / "examples" / "method-robot"}
TIME_SCALE = 0.02
TIMEOUT = 5.0
"""Generous bound of every handshake here (the simulated ones take well under a second)."""
FAULT_CODE = 900

P = TypeVar("P", bound=Profile)


class Bench(Protocol):
    """A cell of profiles over one backend, with the commands its devices took."""

    profiles: dict[str, Profile]

    def commands(self, device: str) -> Counter[str]:
        """Actuator commands ``device`` accepted, by command name (see device_sims/behaviour.py)."""
        ...

    def arm_robot_fault(self, device: str, code: int) -> None:
        """Make the robot's next cycle stop part way with fault ``code``."""
        ...


def profile(bench: Bench, device: str, kind: type[P]) -> P:
    found = bench.profiles[device]
    assert isinstance(found, kind)
    return found


# ------------------------------------------------------------------------------------------------ backends


class SoftBench:
    """Profiles over the soft cell; commands read from each SoftDriver's writes and calls."""

    def __init__(self, config: LoadedConfig) -> None:
        self.devices = soft_cell(config.cell)
        self.profiles = build_profiles(config, self.devices)

    def commands(self, device: str) -> Counter[str]:
        """The simulators' command names for the writes and calls taken (bool commands on their edge)."""
        dev = self.devices[device]
        counted: Counter[str] = Counter()
        previous: dict[str, object] = {}
        for tag, value in dev.writes:
            command = _command_of_write(dev, tag, value, previous.get(tag, False))
            previous[tag] = value
            if command is not None:
                counted[command] += 1
        for method, _args in dev.calls:
            counted[{"load_program": "program_load", "start_cycle": "cycle_start"}.get(method, method)] += 1
        return counted

    def arm_robot_fault(self, device: str, code: int) -> None:
        soft_robot(self.devices[device]).armed_fault = code


def _command_of_write(dev: SoftDriver, tag: str, value: object, previous: object) -> str | None:
    """The simulators' name of the command a write asks for; None for a write that asks for nothing (a
    release such as start=False, or a bool written to the value it had)."""
    if tag == "program":
        return "program_load"
    if tag == "tool_request":
        return "tool_change"
    if tag in ("start", "trigger", "clamp"):
        if bool(value) == bool(previous):
            return None
        if tag == "clamp":
            return "clamp" if value else "unclamp"
        return ("cycle_start" if tag == "start" else "trigger") if value else None
    axis = tag.removesuffix("_sp")
    if axis != tag and _has_tag(dev, f"{axis}_act"):
        return f"move:{axis}"
    return f"setpoint:{tag}"


def _has_tag(dev: SoftDriver, tag: str) -> bool:
    try:
        dev.last(tag)
    except DeviceError:
        return False
    return True


class SimBench:
    """Profiles over real drivers connected to the simulators; commands from the simulators' counters."""

    def __init__(self, cell: SimCell, config: LoadedConfig, devices: Mapping[str, TagBackend]) -> None:
        self.cell = cell
        self.profiles = build_profiles(config, devices)

    def commands(self, device: str) -> Counter[str]:
        return Counter({cmd: n for (dev, cmd), n in self.cell.counters.items() if dev == device})

    def arm_robot_fault(self, device: str, code: int) -> None:
        self.cell.faults.robot_fault(device, code, at=0.5)


async def _all_up(drivers: list[Driver], timeout: float) -> None:
    """Wait until every driver's link is UP (event-driven, bounded)."""
    changed = asyncio.Event()
    unsubscribes = [d.on_health(lambda _h: changed.set()) for d in drivers]
    try:
        async with asyncio.timeout(timeout):
            while not all(d.health.state is LinkState.UP for d in drivers):
                changed.clear()
                await changed.wait()
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()


@pytest.fixture(params=["signal", "method"])
def style(request: pytest.FixtureRequest) -> str:
    """The robot's handshake style (the cell file it comes from)."""
    return str(request.param)


@pytest.fixture(params=["soft", "sim"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which devices the profiles drive."""
    return str(request.param)


@pytest.fixture
async def bench(backend: str, style: str) -> AsyncIterator[Bench]:
    config = load_config(CONFIG_DIRS[style])
    if backend == "soft":
        yield SoftBench(config)
        return
    async with SimCell.from_config_dir(
        CONFIG_DIRS[style], time_scale=TIME_SCALE, ephemeral_ports=True
    ) as cell:
        config = config.with_cell(cell.cell_config())
        clock = SystemClock()
        drivers = {name: build_driver(name, dev, clock) for name, dev in config.cell.devices.items()}
        # Plain tasks, not a TaskGroup: a fixture's setup and teardown run in different tasks.
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(d.run(), name=f"driver:{name}") for name, d in drivers.items()]
        try:
            await _all_up(list(drivers.values()), TIMEOUT)
            yield SimBench(cell, config, drivers)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"{task.get_name()} crashed") from task.exception()


# -------------------------------------------------------------------------------------------------- robot


async def test_robot_loads_a_program_and_reads_it_back(bench: Bench) -> None:
    robot = profile(bench, "robot1", Robot)

    await robot.load_program(12, TIMEOUT)

    assert await robot.active_program() == 12
    assert bench.commands("robot1")["program_load"] == 1


async def test_robot_runs_one_cycle_of_the_loaded_program(bench: Bench) -> None:
    robot = profile(bench, "robot1", Robot)
    await robot.load_program(12, TIMEOUT)
    count_before = await robot.tag("cycle_count").read_value()

    await robot.run_cycle(TIMEOUT)

    assert await robot.tag("cycle_count").read_value() == count_before + 1
    assert await robot.tag("fault_code").read_value() == 0
    assert bench.commands("robot1") == Counter({"program_load": 1, "cycle_start": 1})


async def test_robot_runs_two_cycles_back_to_back_each_commanded_once(bench: Bench) -> None:
    robot = profile(bench, "robot1", Robot)
    await robot.load_program(12, TIMEOUT)
    count_before = await robot.tag("cycle_count").read_value()

    await robot.run_cycle(TIMEOUT)
    await robot.run_cycle(TIMEOUT)

    assert await robot.tag("cycle_count").read_value() == count_before + 2
    assert bench.commands("robot1")["cycle_start"] == 2


async def test_robot_fault_mid_cycle_raises_device_fault_with_the_code(bench: Bench) -> None:
    robot = profile(bench, "robot1", Robot)
    await robot.load_program(12, TIMEOUT)
    bench.arm_robot_fault("robot1", FAULT_CODE)

    with pytest.raises(DeviceFault, match=f"fault code {FAULT_CODE}") as caught:
        await robot.run_cycle(TIMEOUT)

    assert caught.value.device == "robot1"
    assert bench.commands("robot1")["cycle_start"] == 1


async def test_a_faulted_robot_is_not_commanded(bench: Bench) -> None:
    robot = profile(bench, "robot1", Robot)
    await robot.load_program(12, TIMEOUT)
    bench.arm_robot_fault("robot1", FAULT_CODE)
    with pytest.raises(DeviceFault):
        await robot.run_cycle(TIMEOUT)

    with pytest.raises(DeviceFault, match=f"fault code {FAULT_CODE}"):
        await robot.run_cycle(TIMEOUT)

    assert bench.commands("robot1")["cycle_start"] == 1


async def test_a_cycle_with_no_program_loaded_is_refused_before_the_robot_is_commanded(bench: Bench) -> None:
    robot = profile(bench, "robot1", Robot)
    assert await robot.active_program() == 0

    with pytest.raises(DeviceFault, match="no program loaded"):
        await robot.run_cycle(TIMEOUT)

    assert bench.commands("robot1")["cycle_start"] == 0


# ------------------------------------------------------------------------------- the other profiles


@pytest.mark.parametrize("style", ["signal"])
async def test_tool_changer_mounts_a_tool_and_reads_it_back(bench: Bench) -> None:
    changer = profile(bench, "toolchanger", ToolChanger)

    await changer.change(2, TIMEOUT)

    assert await changer.current_tool() == 2
    assert await changer.tag("moving").read_value() is False
    assert bench.commands("toolchanger") == Counter({"tool_change": 1})


@pytest.mark.parametrize("style", ["signal"])
async def test_fixture_unclamps_moves_and_clamps_each_once(bench: Bench) -> None:
    fixture = profile(bench, "fixture", Fixture)

    await fixture.set_clamped(False, TIMEOUT)
    await fixture.move({"width": 450.0, "depth": 410.0}, TIMEOUT)
    await fixture.set_clamped(True, TIMEOUT)

    assert await fixture.position("width") == pytest.approx(450.0)
    assert await fixture.position("depth") == pytest.approx(410.0)
    assert await fixture.tag("clamped").read_value() is True
    assert bench.commands("fixture") == Counter({"move:width": 1, "move:depth": 1, "clamp": 1})


@pytest.mark.parametrize("style", ["signal"])
async def test_press_runs_one_cycle(bench: Bench) -> None:
    press = profile(bench, "stapler", Press)

    await press.run_cycle(TIMEOUT)

    assert await press.tag("done").read_value() is False
    assert bench.commands("stapler") == Counter({"cycle_start": 1})


@pytest.mark.parametrize("style", ["signal"])
async def test_gauge_measures_every_channel_once(bench: Bench) -> None:
    gauge = profile(bench, "gauge", Gauge)
    channels = ("width_mm", "depth_mm", "staple_height_mm")

    readings = await gauge.measure(channels, TIMEOUT)

    assert set(readings) == set(channels)
    assert all(r.usable for r in readings.values())
    assert await gauge.tag("ready").read_value() is False
    assert bench.commands("gauge") == Counter({"trigger": 1})
