"""OpcUaDriver.call over real OPC UA on loopback: typed inputs and outputs, Bad statuses, a failing link.

Most tests call the methods of the simulated method-style robot (config/examples/method-robot); the outputs
are tested against a small in-process server whose method returns values, as the robot's methods return none.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua

from cellctl.core.clock import SystemClock
from cellctl.core.devices import Handshake, ProfileKind, Robot, make_profile
from cellctl.core.ports import Health, LinkState
from cellctl.core.tags import Tag
from cellctl.drivers import OpcUaDriver
from cellctl.errors import CommError, DeviceError, DeviceFault
from cellctl.schema.cell import Datatype, DeviceConfig, MethodConfig, Timeouts
from device_sims.harness import SimCell
from device_sims.opcua_robot import new_server

METHOD_ROBOT = Path(__file__).resolve().parents[2] / "config" / "examples" / "method-robot"
WAIT_S = 5.0


@pytest.fixture
def sim_config_dir() -> Path:
    """The simulated cell is the example with the method-style robot."""
    return METHOD_ROBOT


@asynccontextmanager
async def running(driver: OpcUaDriver) -> AsyncIterator[OpcUaDriver]:
    """Run the driver for the block and wait until its link is UP; cancelled and awaited on the way out."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(driver.run(), name=f"driver:{driver.device}")
        try:
            await wait_health(driver, LinkState.UP, WAIT_S)
            yield driver
        finally:
            task.cancel()


async def wait_health(driver: OpcUaDriver, state: LinkState, timeout: float) -> Health:
    """Wait for the driver's health to be ``state``; event-driven, bounded."""
    reached = asyncio.Event()
    unsubscribe = driver.on_health(lambda h: reached.set() if h.state is state else None)
    try:
        if driver.health.state is not state:
            async with asyncio.timeout(timeout):
                await reached.wait()
        return driver.health
    finally:
        unsubscribe()


def robot_driver(sim: SimCell, **updates: Any) -> OpcUaDriver:
    """A driver for the simulated robot, its config changed by ``updates``."""
    device = sim.cell_config().devices["robot1"].model_copy(update=updates)
    return OpcUaDriver("robot1", device, SystemClock())


def by_name(device: DeviceConfig) -> dict[str, MethodConfig]:
    """The device's methods with ``load_program`` taking the program's name (a string)."""
    load = device.methods["load_program"].model_copy(update={"inputs": (Datatype.STRING,)})
    return {**device.methods, "load_program": load}


# ------------------------------------------------------------------------------------- against the sim


async def test_a_call_reaches_the_sim_robot_with_its_declared_input_type(sim_cell: SimCell) -> None:
    async with running(robot_driver(sim_cell)) as driver:
        outputs = await driver.call("load_program", [7])
        await Tag(driver, "active_program").wait_for_value(7, WAIT_S)

    # The sim answers a Variant of another type than UInt16 with BadTypeMismatch: this one was UInt16.
    assert outputs == ()
    assert sim_cell.counters[("robot1", "program_load")] == 1


async def test_an_input_declared_as_another_type_than_the_server_takes_gets_a_bad_status(
    sim_cell: SimCell,
) -> None:
    # The sim serves the methods of its own cell file (LoadProgram takes UInt16); this driver sends a String.
    driver = robot_driver(sim_cell, methods=by_name(sim_cell.cell_config().devices["robot1"]))
    async with running(driver):
        with pytest.raises(DeviceFault, match="BadTypeMismatch"):
            await driver.call("load_program", ["7"])

    assert sim_cell.counters[("robot1", "program_load")] == 0


async def test_a_wrong_argument_type_is_refused_before_anything_is_sent(sim_cell: SimCell) -> None:
    async with running(robot_driver(sim_cell)) as driver:
        with pytest.raises(DeviceError, match=r"robot1: method 'load_program' argument 1: .*takes a number"):
            await driver.call("load_program", ["seven"])
        with pytest.raises(DeviceError, match="out of range for uint16"):
            await driver.call("load_program", [70000])

    assert sim_cell.counters[("robot1", "program_load")] == 0
    assert sim_cell.refused[("robot1", "program_load")] == 0


async def test_a_wrong_argument_count_is_refused(sim_cell: SimCell) -> None:
    async with running(robot_driver(sim_cell)) as driver:
        with pytest.raises(DeviceError, match=r"method 'start_cycle' takes 0 argument\(s\), not 1"):
            await driver.call("start_cycle", [1])

    assert sim_cell.counters[("robot1", "cycle_start")] == 0


async def test_an_unknown_method_is_refused_naming_the_known_ones(sim_cell: SimCell) -> None:
    async with running(robot_driver(sim_cell)) as driver:
        with pytest.raises(DeviceError, match=r"no method 'home' \(methods: load_program, start_cycle\)"):
            await driver.call("home", [])


async def test_a_bad_status_from_the_method_is_a_device_fault_naming_it(sim_cell: SimCell) -> None:
    async with running(robot_driver(sim_cell)) as driver:
        # No program is loaded: the robot refuses to start.
        with pytest.raises(DeviceFault, match="method 'start_cycle' failed: BadInvalidState") as caught:
            await driver.call("start_cycle", [])

    assert not isinstance(caught.value, CommError)
    assert sim_cell.refused[("robot1", "cycle_start")] == 1
    assert sim_cell.counters[("robot1", "cycle_start")] == 0


async def test_an_injected_bad_status_on_a_method_is_a_device_fault(sim_cell: SimCell) -> None:
    async with running(robot_driver(sim_cell)) as driver:
        async with await sim_cell.faults.bad_status("robot1", "load_program", "BadUserAccessDenied"):
            with pytest.raises(DeviceFault, match="BadUserAccessDenied"):
                await driver.call("load_program", [3])
        await driver.call("load_program", [3])

    assert sim_cell.counters[("robot1", "program_load")] == 1


async def test_a_call_while_the_link_is_down_is_a_comm_error(sim_cell: SimCell) -> None:
    async with (
        running(robot_driver(sim_cell)) as driver,
        await sim_cell.faults.refuse_connections("robot1"),
    ):
        await wait_health(driver, LinkState.DOWN, 3)
        with pytest.raises(CommError, match="not connected"):
            await driver.call("load_program", [3])

    assert sim_cell.counters[("robot1", "program_load")] == 0


async def test_an_unanswered_call_is_a_comm_error_within_the_request_timeout(sim_cell: SimCell) -> None:
    driver = robot_driver(sim_cell, timeouts=Timeouts(connect_s=3.0, request_s=0.3))
    async with running(driver), sim_cell.faults.blackhole("robot1"):
        with pytest.raises(CommError):
            await driver.call("load_program", [3])


async def test_a_method_robot_loads_a_program_by_name_where_its_input_is_a_string(sim_cell: SimCell) -> None:
    """The sim serves LoadProgram(String) when the cell file declares it so; the profile sends the number as
    text."""
    device = sim_cell.cell.devices["robot1"]
    named = sim_cell.cell.model_copy(
        update={
            "devices": {
                **sim_cell.cell.devices,
                "robot1": device.model_copy(update={"methods": by_name(device)}),
            }
        }
    )
    async with SimCell(named, sim_cell.sims, time_scale=0.02) as sim:
        config = sim.cell_config().devices["robot1"]
        async with running(OpcUaDriver("robot1", config, SystemClock())) as driver:
            robot = make_profile(
                ProfileKind.ROBOT,
                "robot1",
                driver,
                config.tags,
                handshake=Handshake.METHOD,
                methods=config.method_signatures,
            )
            assert isinstance(robot, Robot)
            await robot.load_program(12, WAIT_S)
            active = await robot.active_program()

    assert active == 12
    assert sim.counters[("robot1", "program_load")] == 1


# ------------------------------------------------------------------- outputs, against a server of our own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Handler = Callable[..., list[ua.Variant]]


@asynccontextmanager
async def station(handler: Handler) -> AsyncIterator[int]:
    """A server with object ``ns=2;s=Station`` holding method ``ns=2;s=Station.Inspect`` and a variable."""
    port = free_port()
    server: Server = await new_server()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/station")
    idx = await server.register_namespace("urn:cellctl:test:station")
    station_object = await server.nodes.objects.add_object(ua.NodeId("Station", idx), "Station")
    await station_object.add_variable(ua.NodeId("Station.Ready", idx), "Ready", ua.Variant(True))

    async def inspect(_parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
        return handler(*args)

    await station_object.add_method(ua.NodeId("Station.Inspect", idx), "Inspect", inspect, [], [])
    await server.start()
    try:
        yield port
    finally:
        await server.stop()


def station_device(port: int, inputs: list[str], outputs: list[str]) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "driver": "opcua",
            "endpoint": f"opc.tcp://127.0.0.1:{port}/station",
            "profile": "press",
            "methods": {
                "inspect": {
                    "object": "ns=2;s=Station",
                    "method": "ns=2;s=Station.Inspect",
                    "inputs": inputs,
                    "outputs": outputs,
                }
            },
            "tags": {"ready": {"node": "ns=2;s=Station.Ready", "datatype": "bool"}},
        }
    )


async def test_outputs_come_back_as_the_declared_datatypes() -> None:
    received: list[ua.Variant] = []

    def inspect(*args: ua.Variant) -> list[ua.Variant]:
        received.extend(args)
        return [
            ua.Variant(int(args[0].Value) * 2, ua.VariantType.Int32),
            ua.Variant(args[1].Value + 0.5, ua.VariantType.Double),
            ua.Variant("ok", ua.VariantType.String),
            ua.Variant(True, ua.VariantType.Boolean),
        ]

    async with station(inspect) as port:
        device = station_device(port, ["int16", "float32"], ["int32", "float64", "string", "bool"])
        async with running(OpcUaDriver("station", device, SystemClock())) as driver:
            outputs = await driver.call("inspect", [-21, 1.25])

    assert [v.VariantType for v in received] == [ua.VariantType.Int16, ua.VariantType.Float]
    assert outputs == (-42, 1.75, "ok", True)
    assert [type(v) for v in outputs] == [int, float, str, bool]


async def test_an_output_of_another_type_than_declared_is_never_used() -> None:
    async with station(lambda: [ua.Variant("twelve", ua.VariantType.String)]) as port:
        device = station_device(port, [], ["int32"])
        async with running(OpcUaDriver("station", device, SystemClock())) as driver:
            with pytest.raises(DeviceError, match="method 'inspect' returned device sent str 'twelve'"):
                await driver.call("inspect", [])


async def test_more_outputs_than_declared_are_refused() -> None:
    async with station(lambda: [ua.Variant(1, ua.VariantType.Int32)] * 2) as port:
        device = station_device(port, [], ["int32"])
        async with running(OpcUaDriver("station", device, SystemClock())) as driver:
            with pytest.raises(DeviceError, match=r"returned 2 output\(s\), the config declares 1"):
                await driver.call("inspect", [])
