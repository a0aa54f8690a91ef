"""OpcUaDriver over real OPC UA on loopback: subscription, quality mapping, typed writes, outages, recovery.

Each test runs an asyncua Server in-process on a free port with the robot's nodes of the example cell; a
freezable TCP proxy plays the silent link.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.common.node import Node
from ruamel.yaml import YAML

from cellctl.core.clock import SystemClock
from cellctl.core.ports import LinkState
from cellctl.core.tags import Quality, Tag
from cellctl.drivers import OpcUaDriver, build_driver
from cellctl.errors import CommError, DeviceError, DeviceFault
from cellctl.schema.cell import CellConfig, DeviceConfig
from device_sims.harness import SimCell
from device_sims.opcua_robot import new_server
from tests.fixtures.drivers import running, wait_health, wait_reading
from tests.fixtures.tcp_proxy import TcpProxy

CONFIG = Path(__file__).resolve().parents[2] / "config" / "cell.yaml"
NS = "urn:cellctl:sim:robot1"
"""The robot's namespace, which the example cell's nodes name by URI."""

ROBOT_NODES: dict[str, tuple[Any, ua.VariantType]] = {
    "Program": (0, ua.VariantType.UInt16),
    "ActiveProgram": (0, ua.VariantType.UInt16),
    "Start": (False, ua.VariantType.Boolean),
    "Busy": (False, ua.VariantType.Boolean),
    "Done": (False, ua.VariantType.Boolean),
    "FaultCode": (0, ua.VariantType.UInt16),
    "CycleCount": (41, ua.VariantType.UInt32),
}
WRITABLE = {"Program", "Start"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def robot_device(port: int, **overrides: Any) -> DeviceConfig:
    """The example cell's robot, pointed at ``port`` on loopback."""
    raw = YAML(typ="safe").load(CONFIG.read_text())
    device = CellConfig.model_validate(raw).devices["robot1"]
    return device.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{port}/cellctl/robot1", **overrides})


@dataclass
class RobotServer:
    """An in-process OPC UA server holding the robot's variables."""

    server: Server
    port: int
    nodes: dict[str, Node]

    async def set(self, name: str, value: Any, status: int = ua.StatusCodes.Good) -> None:
        """Change a variable as the robot would, with a status code."""
        variant = ua.Variant(value, ROBOT_NODES[name][1])
        await self.nodes[name].write_value(ua.DataValue(variant, StatusCode=ua.StatusCode(status)))

    async def get(self, name: str) -> ua.DataValue:
        """The variable's current DataValue."""
        return await self.nodes[name].read_data_value()


@pytest.fixture
async def robot() -> AsyncIterator[RobotServer]:
    port = free_port()
    server = await new_server()  # the simulators' cached standard address space: milliseconds, not seconds
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/cellctl/robot1")
    idx = await server.register_namespace(NS)
    assert idx == 2, "the raw NodeIds of these tests use ns=2"
    folder = await server.nodes.objects.add_object(ua.NodeId("Robot1", idx), "Robot1")
    nodes = {}
    for name, (value, vtype) in ROBOT_NODES.items():
        node = await folder.add_variable(ua.NodeId(f"Robot1.{name}", idx), name, ua.Variant(value, vtype))
        if name in WRITABLE:
            await node.set_writable()
        nodes[name] = node
    await server.start()
    try:
        yield RobotServer(server, port, nodes)
    finally:
        await server.stop()
        await close_orphan_sessions(server)


# ------------------------------------------------------------------------------------------ reading


async def test_every_robot_tag_reads_good_once_the_link_is_up(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        readings = {tag: driver.last(tag) for tag in robot_device(robot.port).tags}
    assert all(r.quality is Quality.GOOD for r in readings.values()), readings
    assert readings["cycle_count"].value == 41
    assert readings["busy"].value is False


async def test_a_server_side_change_reaches_watchers_through_the_subscription(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await robot.set("Busy", True)
        reading = await wait_reading(driver, "busy", lambda r: r.value is True, 2)
    assert reading.quality is Quality.GOOD


async def test_a_bad_status_makes_the_tag_bad_and_its_value_is_never_used(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await robot.set("FaultCode", 7, ua.StatusCodes.BadSensorFailure)
        reading = await wait_reading(driver, "fault_code", lambda r: r.quality is Quality.BAD, 2)
    assert reading.value is None
    assert "BadSensorFailure" in reading.reason


async def test_an_uncertain_status_keeps_the_value_as_uncertain(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await robot.set("CycleCount", 42, ua.StatusCodes.UncertainLastUsableValue)
        reading = await wait_reading(driver, "cycle_count", lambda r: r.quality is Quality.UNCERTAIN, 2)
    assert reading.value == 42
    assert not reading.usable


async def test_read_fetches_the_value_and_its_status_now(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await robot.set("ActiveProgram", 12)
        reading = await driver.read("active_program")
    assert (reading.value, reading.quality) == (12, Quality.GOOD)


async def test_read_without_a_link_is_a_bad_reading_not_an_exception() -> None:
    driver = OpcUaDriver("robot1", robot_device(1), SystemClock())
    reading = await driver.read("busy")
    assert reading.quality is Quality.BAD
    assert "not connected" in reading.reason


async def test_a_node_the_server_lacks_makes_only_that_tag_bad(robot: RobotServer) -> None:
    device = robot_device(robot.port)
    tags = dict(device.tags)
    tags["torque"] = tags["busy"].model_copy(update={"node": "ns=2;s=Robot1.NoSuchNode"})
    driver = OpcUaDriver("robot1", device.model_copy(update={"tags": tags}), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        torque, busy = driver.last("torque"), driver.last("busy")
    assert torque.quality is Quality.BAD
    assert "BadNodeIdUnknown" in torque.reason
    assert busy.quality is Quality.GOOD


# ------------------------------------------------------------------------------------------- writing


async def test_a_write_carries_the_declared_variant_type_and_comes_back_through_the_subscription(
    robot: RobotServer,
) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("program", 7)
        await Tag(driver, "program").wait_for_value(7, 2)
        stored = await robot.get("Program")
    assert stored.Value is not None
    assert (stored.Value.Value, stored.Value.VariantType) == (7, ua.VariantType.UInt16)


async def test_a_bool_write_is_a_boolean_variant(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("start", True)
        stored = await robot.get("Start")
    assert stored.Value is not None
    assert (stored.Value.Value, stored.Value.VariantType) == (True, ua.VariantType.Boolean)


async def test_a_write_to_a_read_only_tag_is_refused_before_reaching_the_server(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(DeviceError, match=r"robot1\.busy: tag is read-only") as caught:
            await driver.write("busy", True)
        stored = await robot.get("Busy")
    assert not isinstance(caught.value, CommError | DeviceFault)
    assert stored.Value is not None and stored.Value.Value is False


async def test_a_value_out_of_the_datatype_range_is_refused(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(DeviceError, match=r"robot1\.program: cannot write 70000: .*out of range"):
            await driver.write("program", 70000)


async def test_a_write_the_server_refuses_is_a_device_fault_with_the_status(robot: RobotServer) -> None:
    device = robot_device(robot.port)
    tags = dict(device.tags)
    # Declared writable here, but the server keeps the node read-only.
    tags["busy"] = tags["busy"].model_copy(update={"access": "rw"})
    driver = OpcUaDriver("robot1", device.model_copy(update={"tags": tags}), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(DeviceFault, match=r"robot1\.busy: server refused the write of True: Bad"):
            await driver.write("busy", True)


async def test_a_device_of_write_only_tags_still_connects_and_writes(robot: RobotServer) -> None:
    device = robot_device(robot.port)
    tags = {"program": device.tags["program"].model_copy(update={"access": "w"})}
    driver = OpcUaDriver("robot1", device.model_copy(update={"tags": tags}), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("program", 11)
        stored = await robot.get("Program")
        reading = await driver.read("program")
    assert stored.Value is not None and stored.Value.Value == 11
    assert (reading.quality, reading.reason) == (Quality.BAD, "tag is write-only")


async def test_a_write_without_a_link_is_a_comm_error() -> None:
    driver = OpcUaDriver("robot1", robot_device(1), SystemClock())
    with pytest.raises(CommError, match=r"robot1\.program: not connected"):
        await driver.write("program", 3)


# ------------------------------------------------------------------------------------ outages


async def test_a_stopped_server_makes_every_tag_bad_and_health_down_within_3_s(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await robot.server.stop()
        health = await wait_health(driver, LinkState.DOWN, 3)
        readings = [driver.last(tag) for tag in robot_device(robot.port).tags]
    assert health.error
    assert all(r.quality is Quality.BAD and r.value is None for r in readings)


async def test_values_resume_within_5_s_when_the_server_comes_back(robot: RobotServer) -> None:
    driver = OpcUaDriver("robot1", robot_device(robot.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await robot.server.stop()
        await wait_health(driver, LinkState.DOWN, 3)
        await robot.set("CycleCount", 99)
        await robot.server.start()
        await wait_health(driver, LinkState.UP, 5)
        reading = await wait_reading(driver, "cycle_count", lambda r: r.value == 99, 2)
        # The new session's subscription delivers changes again.
        await robot.set("Done", True)
        await wait_reading(driver, "done", lambda r: r.value is True, 2)
    assert reading.quality is Quality.GOOD


async def test_a_silent_link_is_found_down_within_3_s(robot: RobotServer) -> None:
    async with TcpProxy("127.0.0.1", robot.port) as proxy:
        driver = OpcUaDriver("robot1", robot_device(proxy.port), SystemClock())
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            proxy.freeze()
            health = await wait_health(driver, LinkState.DOWN, 3)
            busy = driver.last("busy")
        assert busy.quality is Quality.BAD
        assert health.error


async def test_a_silent_link_that_recovers_resumes_within_5_s(robot: RobotServer) -> None:
    async with TcpProxy("127.0.0.1", robot.port) as proxy:
        driver = OpcUaDriver("robot1", robot_device(proxy.port), SystemClock())
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            proxy.freeze()
            await wait_health(driver, LinkState.DOWN, 3)
            proxy.thaw()
            await wait_health(driver, LinkState.UP, 5)
            await robot.set("Busy", True)
            reading = await wait_reading(driver, "busy", lambda r: r.value is True, 2)
        assert reading.quality is Quality.GOOD


async def test_no_server_at_all_keeps_retrying_and_reports_down() -> None:
    port = free_port()
    driver = OpcUaDriver("robot1", robot_device(port), SystemClock())
    async with running(driver):
        health = await wait_health(driver, LinkState.DOWN, 5, lambda h: "connect to" in h.error)
    assert f"127.0.0.1:{port}" in health.error


# --------------------------------------------------------------------------------------- factory


def test_build_driver_picks_opcua_for_an_opcua_device() -> None:
    driver = build_driver("robot1", robot_device(1), SystemClock())
    assert isinstance(driver, OpcUaDriver)
    assert driver.device == "robot1"


# ---------------------------------------------------------------------------- against the simulators


def sim_robot(sim_cell: SimCell) -> OpcUaDriver:
    """A driver for the simulated example cell's robot."""
    return OpcUaDriver("robot1", sim_cell.cell_config().devices["robot1"], SystemClock())


async def close_orphan_sessions(server: Server) -> None:
    """Close the sessions a dropped link left behind (Part 4 §6.7 keeps them while they have
    subscriptions; asyncua's stop() leaves their tasks running)."""
    for session in list(server.iserver._external_sessions.values()):
        await session.close_session()


@pytest.fixture
async def sim(sim_cell: SimCell) -> AsyncIterator[SimCell]:
    """The simulated cell (its servers close the sessions a dropped link left behind when they stop)."""
    yield sim_cell


async def test_every_tag_of_the_simulated_robot_reads_its_true_value(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        readings = {tag: driver.last(tag) for tag in driver.config.tags}
    for tag, reading in readings.items():
        assert reading.quality is Quality.GOOD, (tag, reading)
        assert reading.value == sim.value(f"robot1.{tag}"), tag


async def test_a_program_written_to_the_sim_robot_is_loaded_and_reported(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("program", 3)
        await Tag(driver, "active_program").wait_for_value(3, 5)
    assert sim.counters[("robot1", "program_load")] == 1


async def test_a_robot_cycle_runs_through_busy_to_done_and_counts(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        before = int(sim.value("robot1.cycle_count"))
        await driver.write("program", 2)
        await Tag(driver, "active_program").wait_for_value(2, 5)
        await driver.write("start", True)
        await Tag(driver, "done").wait_for_value(True, 5)
        await driver.write("start", False)
        await Tag(driver, "done").wait_for_value(False, 5)
        count = driver.last("cycle_count").value
    assert count == before + 1
    assert sim.counters[("robot1", "cycle_start")] == 1


async def test_a_write_to_a_read_only_robot_tag_never_reaches_the_sim(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(DeviceError, match=r"robot1\.busy: tag is read-only"):
            await driver.write("busy", True)
    assert sim.writes[("robot1", "busy")] == 0


async def test_a_stopped_sim_robot_makes_tags_bad_and_health_down_then_values_resume(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        outage = await sim.faults.refuse_connections("robot1")
        await wait_health(driver, LinkState.DOWN, 3)
        assert all(driver.last(tag).quality is Quality.BAD for tag in driver.config.tags)
        await outage.clear()
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("program", 4)
        await Tag(driver, "active_program").wait_for_value(4, 5)


async def test_a_blackholed_sim_robot_is_found_down_within_3_s(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        async with sim.faults.blackhole("robot1"):
            health = await wait_health(driver, LinkState.DOWN, 3)
        await wait_health(driver, LinkState.UP, 5)
    assert health.error


async def test_a_dropped_robot_connection_comes_back_with_a_new_subscription(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        assert sim.faults.drop_connections("robot1") >= 1
        await wait_health(driver, LinkState.DOWN, 3)
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("program", 5)
        await Tag(driver, "active_program").wait_for_value(5, 5)


async def test_a_bad_status_from_the_sim_robot_spoils_the_tag_until_cleared(sim: SimCell) -> None:
    driver = sim_robot(sim)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        async with await sim.faults.bad_status("robot1", "fault_code"):
            bad = await wait_reading(driver, "fault_code", lambda r: r.quality is Quality.BAD, 2)
        good = await wait_reading(driver, "fault_code", lambda r: r.quality is Quality.GOOD, 2)
    assert bad.value is None
    assert good.value == sim.value("robot1.fault_code")
