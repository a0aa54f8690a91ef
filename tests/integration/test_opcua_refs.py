"""Node references of the OPC UA driver against real servers: NodeIds by index or namespace URI and browse
paths, resolved at every connect; a reference that does not resolve spoils only its own tag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from asyncua import Server, ua
from asyncua.common.node import Node

from cellctl.core.clock import SystemClock
from cellctl.core.ports import LinkState
from cellctl.core.tags import Quality, Tag
from cellctl.drivers import OpcUaDriver
from cellctl.errors import DeviceFault
from cellctl.schema.cell import DeviceConfig, TagConfig
from device_sims.harness import SimCell, free_port
from device_sims.opcua_robot import new_server
from tests.integration.test_opcua_driver import (
    NS,
    ROBOT_NODES,
    WRITABLE,
    close_orphan_sessions,
    robot_device,
    running,
    wait_health,
)

REPO = Path(__file__).resolve().parents[2]
PATH = f"/Objects/<{NS}>Robot1/<{NS}>"
"""Browse path of the test server's robot object; a variable's name follows."""


@asynccontextmanager
async def robot_server(
    port: int, *, namespaces_before: tuple[str, ...] = (), cycle_count: int = 41
) -> AsyncIterator[Server]:
    """An in-process server with the robot's variables in namespace NS, which gets index 2 plus the number
    of ``namespaces_before`` (registered first)."""
    server = await new_server()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/cellctl/robot1")
    for uri in namespaces_before:
        await server.register_namespace(uri)
    idx = await server.register_namespace(NS)
    folder = await server.nodes.objects.add_object(ua.NodeId("Robot1", idx), ua.QualifiedName("Robot1", idx))
    for name, (value, vtype) in ROBOT_NODES.items():
        value = cycle_count if name == "CycleCount" else value
        node: Node = await folder.add_variable(
            ua.NodeId(f"Robot1.{name}", idx), ua.QualifiedName(name, idx), ua.Variant(value, vtype)
        )
        if name in WRITABLE:
            await node.set_writable()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await close_orphan_sessions(server)


def with_nodes(device: DeviceConfig, **nodes: str) -> DeviceConfig:
    """``device`` with the given tags' node references replaced (a new tag copies ``busy``)."""
    tags: dict[str, TagConfig] = dict(device.tags)
    for tag, node in nodes.items():
        base = tags.get(tag, tags["busy"])
        tags[tag] = TagConfig.model_validate({**base.model_dump(), "node": node})
    return device.model_copy(update={"tags": tags})


def by_index(device: DeviceConfig, index: int) -> DeviceConfig:
    """The example robot with every tag a NodeId by namespace index."""
    return with_nodes(
        device, **{t: f"ns={index};s={c.node.split(';s=', 1)[1]}" for t, c in device.tags.items() if c.node}
    )


def by_path(device: DeviceConfig) -> DeviceConfig:
    """The example robot with every tag a browse path (its variable's name is the NodeId's last part)."""
    return with_nodes(device, **{t: PATH + str(c.node).rsplit(".", 1)[1] for t, c in device.tags.items()})


async def good_values(driver: OpcUaDriver) -> dict[str, Any]:
    """Run the driver until UP and return every tag's value, asserting each is GOOD."""
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        readings = {tag: driver.last(tag) for tag in driver.config.tags}
    assert all(r.quality is Quality.GOOD for r in readings.values()), readings
    return {tag: r.value for tag, r in readings.items()}


# ------------------------------------------------------------------------------------- resolving


async def test_nsu_references_resolve_where_the_server_numbers_the_namespace_differently() -> None:
    port = free_port()
    async with robot_server(port, namespaces_before=("urn:vendor:a", "urn:vendor:b")) as server:
        assert await server.get_namespace_index(NS) == 4
        driver = OpcUaDriver("robot1", robot_device(port), SystemClock())
        values = await good_values(driver)
    assert values["cycle_count"] == 41


async def test_ns_index_references_still_work() -> None:
    port = free_port()
    async with robot_server(port, namespaces_before=("urn:vendor:a",)):
        driver = OpcUaDriver("robot1", by_index(robot_device(port), 3), SystemClock())
        values = await good_values(driver)
    assert values["cycle_count"] == 41


async def test_browse_path_references_resolve_and_serve_reads_and_writes() -> None:
    port = free_port()
    async with robot_server(port, namespaces_before=("urn:vendor:a",)) as server:
        driver = OpcUaDriver("robot1", by_path(robot_device(port)), SystemClock())
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            await driver.write("program", 9)
            await Tag(driver, "program").wait_for_value(9, 2)
            stored = await server.get_node(ua.NodeId("Robot1.Program", 3)).read_value()
    assert stored == 9


async def test_references_are_resolved_again_at_every_connect() -> None:
    """Given a server that restarts with its namespaces numbered differently, the values come from the
    renumbered nodes (the namespace URI is looked up again)."""
    port = free_port()
    driver = OpcUaDriver("robot1", robot_device(port), SystemClock())
    async with running(driver):
        async with robot_server(port, cycle_count=1):
            await wait_health(driver, LinkState.UP, 5)
            assert driver.last("cycle_count").value == 1
        await wait_health(driver, LinkState.DOWN, 3)
        async with robot_server(port, namespaces_before=("urn:vendor:a",), cycle_count=2):
            await wait_health(driver, LinkState.UP, 5)
            await Tag(driver, "cycle_count").wait_for_value(2, 2)
            assert driver.last("cycle_count").quality is Quality.GOOD


# --------------------------------------------------------------------------------- not resolving


async def test_an_unknown_namespace_uri_makes_only_its_tag_bad_with_the_reference_named() -> None:
    port = free_port()
    ref = "nsu=urn:nowhere;s=Robot1.Torque"
    async with robot_server(port):
        driver = OpcUaDriver("robot1", with_nodes(robot_device(port), torque=ref), SystemClock())
        with structlog.testing.capture_logs() as logs:
            async with running(driver):
                await wait_health(driver, LinkState.UP, 5)
                torque, busy, health = driver.last("torque"), driver.last("busy"), driver.health
                read = await driver.read("torque")
    assert (torque.quality, torque.value) == (Quality.BAD, None)
    assert (
        torque.reason
        == f"cannot resolve {ref!r}: namespace 'urn:nowhere' is not in the server's NamespaceArray"
    )
    assert read.reason == torque.reason
    assert busy.quality is Quality.GOOD
    assert health.state is LinkState.UP
    assert driver.unresolved == {"torque": torque.reason}
    assert any(e["event"] == "node reference unresolved" and e.get("tag") == "torque" for e in logs)


async def test_a_browse_path_to_no_node_makes_its_tag_bad_and_a_write_to_it_a_device_fault() -> None:
    port = free_port()
    ref = PATH + "NoSuchVariable"
    device = with_nodes(robot_device(port), program=ref)
    async with robot_server(port):
        driver = OpcUaDriver("robot1", device, SystemClock())
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            program = driver.last("program")
            with pytest.raises(DeviceFault) as caught:
                await driver.write("program", 3)
    assert program.quality is Quality.BAD
    assert "BadNoMatch" in program.reason
    assert str(caught.value) == f"robot1.program: cannot resolve {ref!r}: no such node (BadNoMatch)"


# ------------------------------------------------------------------------------ against the sims


@pytest.fixture
def sim_config_dir(tmp_path: Path) -> Path:
    """The example cell with the robot's tags as browse paths below the simulator's device object."""
    text = (REPO / "config" / "cell.yaml").read_text()
    for tag in ("program", "active_program", "start", "busy", "done", "fault_code", "cycle_count"):
        old = next(
            line for line in text.splitlines() if line.strip().startswith(f"{tag}:") and "nsu=" in line
        )
        ref = old.split('"')[1]
        sim_ns = "urn:cellctl:sim:robot1"
        text = text.replace(ref, f"/Objects/<{sim_ns}>robot1/<urn:cellctl:test:extra>Arm/<{sim_ns}>{tag}")
    (tmp_path / "cell.yaml").write_text(text)
    (tmp_path / "recipes").symlink_to(REPO / "config" / "recipes")
    (tmp_path / "sims.yaml").symlink_to(REPO / "config" / "sims.yaml")
    return tmp_path


async def test_the_simulator_serves_browse_path_tags_and_the_driver_reads_them(sim_cell: SimCell) -> None:
    device = sim_cell.cell_config().devices["robot1"]
    assert str(device.tags["busy"].node).startswith("/Objects/")
    driver = OpcUaDriver("robot1", device, SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        values = {tag: driver.last(tag) for tag in device.tags}
        truth = {tag: sim_cell.value(f"robot1.{tag}") for tag in device.tags}
        await driver.write("program", 2)
        await Tag(driver, "active_program").wait_for_value(2, 5)
    assert {tag: r.value for tag, r in values.items()} == truth
    assert all(r.quality is Quality.GOOD for r in values.values())
    assert sim_cell.counters[("robot1", "program_load")] == 1
