"""The simulators over their real protocols, spoken to with raw asyncua and pymodbus clients."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import BadSensorFailure, BadTypeMismatch, BadUserAccessDenied, UaError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from cellctl.errors import ConfigError
from device_sims.__main__ import shift_ports
from device_sims.behaviour import FixtureSim, GaugeSim, RobotSim
from device_sims.console import FaultConsole
from device_sims.harness import SimCell, free_port, load_cell_config
from device_sims.sims_config import GaugeSettings, SimsConfig, load_sims_config

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
TIMEOUT = 5.0
SLOW = 0.5
"""Time scale of tests that read a transient state right after a command: the state then lasts long enough
(at least 0.15 s) that a loaded machine cannot make the read miss it."""

ROBOT = {
    "program": "ns=2;s=Robot1.Program",
    "active_program": "ns=2;s=Robot1.ActiveProgram",
    "start": "ns=2;s=Robot1.Start",
    "busy": "ns=2;s=Robot1.Busy",
    "done": "ns=2;s=Robot1.Done",
    "fault_code": "ns=2;s=Robot1.FaultCode",
    "cycle_count": "ns=2;s=Robot1.CycleCount",
}


# -- helpers ----------------------------------------------------------------------------------------
def f32_words(value: float) -> list[int]:
    """Big-endian float32 as two registers, high word first (encoded here, independently of the sim)."""
    data = struct.pack(">f", value)
    return [int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")]


def f32(words: list[int]) -> float:
    """A big-endian float32 from two registers."""
    return float(struct.unpack(">f", words[0].to_bytes(2, "big") + words[1].to_bytes(2, "big"))[0])


def u32(words: list[int]) -> int:
    """A big-endian uint32 from two registers."""
    return (words[0] << 16) | words[1]


@asynccontextmanager
async def ua_client(sim: SimCell, device: str = "robot1") -> AsyncIterator[Client]:
    """A raw asyncua client connected to the simulated robot."""
    client = Client(sim.endpoint(device), timeout=2)
    async with client:
        yield client


async def ua_write(client: Client, tag: str, value: Any, vtype: ua.VariantType) -> None:
    """Write one robot tag with an explicit variant type."""
    await client.get_node(ROBOT[tag]).write_value(ua.DataValue(ua.Variant(value, vtype)))


async def ua_read(client: Client, tag: str) -> Any:
    """Read one robot tag."""
    return await client.get_node(ROBOT[tag]).read_value()


@asynccontextmanager
async def mb_client(sim: SimCell, device: str, timeout: float = 1.0) -> AsyncIterator[AsyncModbusTcpClient]:
    """A raw pymodbus client connected to ``device``'s endpoint (no retries, so faults show at once)."""
    host, port = sim.cell_config().devices[device].host_port
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


def unit(sim: SimCell, device: str) -> int:
    """Modbus unit id of ``device``."""
    return sim.cell.devices[device].unit_id


async def read_bits(client: AsyncModbusTcpClient, sim: SimCell, device: str, count: int = 2) -> list[bool]:
    """Discrete inputs 0.. of ``device``."""
    reply = await client.read_discrete_inputs(0, count=count, device_id=unit(sim, device))
    assert not reply.isError(), reply
    return list(reply.bits[:count])


async def read_inputs(
    client: AsyncModbusTcpClient, sim: SimCell, device: str, address: int, count: int
) -> list[int]:
    """Input registers of ``device``."""
    reply = await client.read_input_registers(address, count=count, device_id=unit(sim, device))
    assert not reply.isError(), reply
    return list(reply.registers)


class DataChanges:
    """Collects OPC UA data-change notifications and waits for one that satisfies a condition."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def datachange_notification(self, node: Any, val: Any, _data: Any) -> None:
        self.seen.append((node.nodeid.to_string(), val))
        self._changed.set()

    async def until(self, nodeid: str, predicate: Callable[[Any], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not any(n == nodeid and predicate(v) for n, v in self.seen):
                self._changed.clear()
                await self._changed.wait()


def sims_with(**gauge: Any) -> SimsConfig:
    """The shipped sims file with gauge settings replaced."""
    sims = load_sims_config(CONFIG / "sims.yaml")
    return sims.model_copy(update={"gauge": sims.gauge.model_copy(update=gauge)})


@asynccontextmanager
async def started(
    sims: SimsConfig | None = None, *, seed: int = 0, time_scale: float = 0.02
) -> AsyncIterator[SimCell]:
    """A SimCell of the example cell with the given sims settings."""
    cell = load_cell_config(CONFIG)
    async with SimCell(
        cell, sims or load_sims_config(CONFIG / "sims.yaml"), seed=seed, time_scale=time_scale
    ) as sim:
        yield sim


async def move_fixture(sim: SimCell, client: AsyncModbusTcpClient, width: float, depth: float) -> None:
    """Move the (unclamped) fixture's axes over Modbus and wait until in position."""
    fixture = unit(sim, "fixture")
    assert not (
        await client.write_registers(0, f32_words(width) + f32_words(depth), device_id=fixture)
    ).isError()
    await sim.wait_for(lambda: sim.value("fixture.in_position") is True, TIMEOUT)


# -- robot over OPC UA ------------------------------------------------------------------------------
@pytest.mark.parametrize("sim_time_scale", [SLOW])
async def test_robot_loads_a_program_after_its_load_time(sim_cell: SimCell) -> None:
    # given a robot with no program
    async with ua_client(sim_cell) as client:
        # when the controller writes program 11
        await ua_write(client, "program", 11, ua.VariantType.UInt16)
        # then nothing is active until the load time has passed, then 11 is
        assert await ua_read(client, "active_program") == 0
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        assert await ua_read(client, "active_program") == 11
    assert sim_cell.counters[("robot1", "program_load")] == 1


@pytest.mark.parametrize("sim_time_scale", [SLOW])
async def test_robot_cycle_runs_the_start_busy_done_handshake(sim_cell: SimCell) -> None:
    # given a robot with program 11 loaded
    async with ua_client(sim_cell) as client:
        await ua_write(client, "program", 11, ua.VariantType.UInt16)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        # when start goes high
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        # then the robot is busy at once, and done after the cycle with one more cycle counted
        assert await ua_read(client, "busy") is True
        assert await ua_read(client, "done") is False
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.done") is True, TIMEOUT)
        assert await ua_read(client, "busy") is False
        assert await ua_read(client, "cycle_count") == 1
        # and dropping start clears done
        await ua_write(client, "start", False, ua.VariantType.Boolean)
        assert await ua_read(client, "done") is False
    assert sim_cell.counters[("robot1", "cycle_start")] == 1


async def test_robot_subscription_sees_busy_then_done(sim_cell: SimCell) -> None:
    # given a client subscribed to busy and done, program loaded
    async with ua_client(sim_cell) as client:
        changes = DataChanges()
        subscription = await client.create_subscription(0, changes)
        await subscription.subscribe_data_change(
            [client.get_node(ROBOT["busy"]), client.get_node(ROBOT["done"])]
        )
        await ua_write(client, "program", 11, ua.VariantType.UInt16)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        # when a cycle runs
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        # then the subscription reports busy True, then done True
        await changes.until(ROBOT["busy"], lambda v: v is True)
        await changes.until(ROBOT["done"], lambda v: v is True)
        await subscription.delete()


async def test_robot_start_without_program_faults_and_is_refused(sim_cell: SimCell) -> None:
    # given a robot with no program loaded
    async with ua_client(sim_cell) as client:
        # when start goes high
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        # then fault code 1 is set, nothing runs, and the refusal is counted
        assert await ua_read(client, "fault_code") == RobotSim.FAULT_NO_PROGRAM
        assert await ua_read(client, "busy") is False
    assert sim_cell.refused[("robot1", "cycle_start")] == 1
    assert sim_cell.counters[("robot1", "cycle_start")] == 0


async def test_robot_program_load_clears_a_no_program_fault(sim_cell: SimCell) -> None:
    # given a robot faulted by a start without program
    async with ua_client(sim_cell) as client:
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        await ua_write(client, "start", False, ua.VariantType.Boolean)
        # when a program is loaded
        await ua_write(client, "program", 7, ua.VariantType.UInt16)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 7, TIMEOUT)
        # then the fault is cleared
        assert await ua_read(client, "fault_code") == 0


async def test_robot_refuses_a_wrong_variant_type(sim_cell: SimCell) -> None:
    # given a uint16 program tag
    async with ua_client(sim_cell) as client:
        # when a client writes it as Int32
        with pytest.raises(BadTypeMismatch):
            await ua_write(client, "program", 11, ua.VariantType.Int32)
    # then the robot never saw the write
    assert sim_cell.writes[("robot1", "program")] == 0


async def test_robot_refuses_writes_to_read_only_tags(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        with pytest.raises(BadUserAccessDenied):
            await ua_write(client, "busy", True, ua.VariantType.Boolean)
    assert sim_cell.value("robot1.busy") is False


async def test_robot_ignores_a_repeated_start_while_start_is_high(sim_cell: SimCell) -> None:
    # given a robot running a cycle
    async with ua_client(sim_cell) as client:
        await ua_write(client, "program", 11, ua.VariantType.UInt16)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        # when start is written high again (a retried write)
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.done") is True, TIMEOUT)
    # then one cycle ran, and both writes were seen
    assert sim_cell.counters[("robot1", "cycle_start")] == 1
    assert sim_cell.writes[("robot1", "start")] == 2
    assert sim_cell.value("robot1.cycle_count") == 1


# -- tool changer, fixture, press over Modbus -------------------------------------------------------
@pytest.mark.parametrize("sim_time_scale", [SLOW])
async def test_tool_change_moves_then_reports_the_new_tool(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "toolchanger") as client:
        # when tool 2 is requested
        assert not (await client.write_register(0, 2, device_id=unit(sim_cell, "toolchanger"))).isError()
        # then the changer is moving with no tool, and later holds tool 2, not moving
        assert (await read_bits(client, sim_cell, "toolchanger", 1)) == [True]
        assert await read_inputs(client, sim_cell, "toolchanger", 0, 1) == [0]
        await sim_cell.wait_for(lambda: sim_cell.value("toolchanger.moving") is False, TIMEOUT)
        assert await read_inputs(client, sim_cell, "toolchanger", 0, 1) == [2]
        assert (await read_bits(client, sim_cell, "toolchanger", 1)) == [False]
    assert sim_cell.counters[("toolchanger", "tool_change")] == 1


async def test_tool_changer_refuses_an_unknown_tool(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "toolchanger") as client:
        await client.write_register(0, 42, device_id=unit(sim_cell, "toolchanger"))
        assert (await read_bits(client, sim_cell, "toolchanger", 1)) == [False]
    assert sim_cell.refused[("toolchanger", "tool_change")] == 1


@pytest.mark.parametrize("sim_time_scale", [0.1])
async def test_fixture_axes_move_to_their_setpoints_when_unclamped(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "fixture") as client:
        # when both setpoints are written (float32, big-endian words)
        await client.write_registers(
            0, f32_words(420.0) + f32_words(400.0), device_id=unit(sim_cell, "fixture")
        )
        # then in_position drops, and comes back with the actual positions at the setpoints
        assert (await read_bits(client, sim_cell, "fixture"))[1] is False
        await sim_cell.wait_for(lambda: sim_cell.value("fixture.in_position") is True, TIMEOUT)
        words = await read_inputs(client, sim_cell, "fixture", 0, 4)
        assert (f32(words[0:2]), f32(words[2:4])) == (420.0, 400.0)
    assert sim_cell.counters[("fixture", "move:width")] == 1
    assert sim_cell.counters[("fixture", "move:depth")] == 1


async def test_fixture_axis_passes_through_intermediate_positions(sim_cell: SimCell) -> None:
    positions: list[float] = []
    fixture = sim_cell.behaviour("fixture", FixtureSim)
    unwatch = fixture.watch(lambda tag, value: positions.append(float(value)) if tag == "width_act" else None)
    async with mb_client(sim_cell, "fixture") as client:
        await client.write_registers(0, f32_words(300.0), device_id=unit(sim_cell, "fixture"))
        await sim_cell.wait_for(lambda: sim_cell.value("fixture.in_position") is True, TIMEOUT)
    unwatch()
    assert positions[-1] == 300.0
    assert any(0.0 < p < 300.0 for p in positions)
    assert positions == sorted(positions)


async def test_fixture_refuses_to_move_while_clamped(sim_cell: SimCell) -> None:
    fixture = unit(sim_cell, "fixture")
    async with mb_client(sim_cell, "fixture") as client:
        # given a clamped fixture
        await client.write_coil(0, True, device_id=fixture)
        await sim_cell.wait_for(lambda: sim_cell.value("fixture.clamped") is True, TIMEOUT)
        # when a setpoint is written
        await client.write_registers(0, f32_words(420.0), device_id=fixture)
        # then the axis does not move and the refusal is counted
        assert f32(await read_inputs(client, sim_cell, "fixture", 0, 2)) == 0.0
        assert (await read_bits(client, sim_cell, "fixture")) == [True, True]
    assert sim_cell.refused[("fixture", "move:width")] == 1
    assert sim_cell.counters[("fixture", "move:width")] == 0


@pytest.mark.parametrize("sim_time_scale", [SLOW])
async def test_fixture_clamps_and_unclamps_after_the_clamp_time(sim_cell: SimCell) -> None:
    fixture = unit(sim_cell, "fixture")
    async with mb_client(sim_cell, "fixture") as client:
        await client.write_coil(0, True, device_id=fixture)
        assert (await read_bits(client, sim_cell, "fixture"))[0] is False
        await sim_cell.wait_for(lambda: sim_cell.value("fixture.clamped") is True, TIMEOUT)
        await client.write_coil(0, False, device_id=fixture)
        assert (await read_bits(client, sim_cell, "fixture"))[0] is True
        await sim_cell.wait_for(lambda: sim_cell.value("fixture.clamped") is False, TIMEOUT)
        assert (await read_bits(client, sim_cell, "fixture"))[0] is False
    assert sim_cell.counters[("fixture", "clamp")] == 1
    assert sim_cell.counters[("fixture", "unclamp")] == 1


@pytest.mark.parametrize("sim_time_scale", [SLOW])
async def test_press_cycle_runs_the_start_busy_done_handshake(sim_cell: SimCell) -> None:
    stapler = unit(sim_cell, "stapler")
    async with mb_client(sim_cell, "stapler") as client:
        # given a pitch of 16 mm
        await client.write_registers(2, f32_words(16.0), device_id=stapler)
        # when start goes high
        await client.write_coil(0, True, device_id=stapler)
        # then busy, then done with the seam's staples counted; start low clears done
        assert await read_bits(client, sim_cell, "stapler") == [True, False]
        await sim_cell.wait_for(lambda: sim_cell.value("stapler.done") is True, TIMEOUT)
        assert await read_bits(client, sim_cell, "stapler") == [False, True]
        assert u32(await read_inputs(client, sim_cell, "stapler", 0, 2)) == 100  # 1600 mm seam / 16 mm
        await client.write_coil(0, False, device_id=stapler)
        assert await read_bits(client, sim_cell, "stapler") == [False, False]
    assert sim_cell.counters[("stapler", "cycle_start")] == 1
    assert sim_cell.counters[("stapler", "setpoint:pitch_mm")] == 1


async def test_setpoint_registers_read_back_what_was_written(sim_cell: SimCell) -> None:
    stapler = unit(sim_cell, "stapler")
    async with mb_client(sim_cell, "stapler") as client:
        await client.write_registers(0, f32_words(800.0), device_id=stapler)
        reply = await client.read_holding_registers(0, count=2, device_id=stapler)
    assert f32(list(reply.registers)) == 800.0
    assert sim_cell.value("stapler.force_sp") == 800.0


async def test_reading_past_the_declared_registers_is_an_illegal_address(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "fixture") as client:
        reply = await client.read_input_registers(4, count=1, device_id=unit(sim_cell, "fixture"))
    assert reply.isError()
    assert reply.exception_code == 2


# -- gauge ------------------------------------------------------------------------------------------
async def trigger_and_read(sim: SimCell, client: AsyncModbusTcpClient) -> list[float]:
    """One gauge measurement over Modbus: trigger, wait ready, read the three channels, release."""
    gauge = unit(sim, "gauge")
    await client.write_coil(0, True, device_id=gauge)
    await sim.wait_for(lambda: sim.value("gauge.ready") is True, TIMEOUT)
    words = await read_inputs(client, sim, "gauge", 0, 6)
    await client.write_coil(0, False, device_id=gauge)
    return [f32(words[0:2]), f32(words[2:4]), f32(words[4:6])]


async def test_gauge_follows_the_fixture_and_stapler_with_noise() -> None:
    # given a cell without rejects, fixture at 420 x 400 and stapling force 800 N
    async with (
        started(sims_with(outlier_rate=0.0)) as sim,
        mb_client(sim, "fixture") as tooling,
        mb_client(sim, "gauge") as gauge,
    ):
        await move_fixture(sim, tooling, 420.0, 400.0)
        await tooling.write_registers(0, f32_words(800.0), device_id=unit(sim, "stapler"))
        # when the gauge measures five parts
        parts = [await trigger_and_read(sim, gauge) for _ in range(5)]
    # then every value lies within 5 sigma of what it follows, and the noise makes them differ
    for width, depth, staple in parts:
        assert abs(width - 420.0) < 1.0
        assert abs(depth - 400.0) < 1.0
        assert abs(staple - 1.4) < 0.2
    assert len({p[0] for p in parts}) == 5


@pytest.mark.parametrize("sim_time_scale", [SLOW])
async def test_gauge_sets_ready_only_after_its_measuring_time(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "gauge") as client:
        await client.write_coil(0, True, device_id=unit(sim_cell, "gauge"))
        assert await read_bits(client, sim_cell, "gauge", 1) == [False]
        await sim_cell.wait_for(lambda: sim_cell.value("gauge.ready") is True, TIMEOUT)
        await client.write_coil(0, False, device_id=unit(sim_cell, "gauge"))
        assert await read_bits(client, sim_cell, "gauge", 1) == [False]
    assert sim_cell.counters[("gauge", "trigger")] == 1


async def test_gauge_outlier_pushes_one_channel_out_of_spec() -> None:
    # given every part is a reject
    async with started(sims_with(outlier_rate=1.0)) as sim:
        async with mb_client(sim, "fixture") as tooling, mb_client(sim, "gauge") as gauge:
            await move_fixture(sim, tooling, 420.0, 400.0)
            await tooling.write_registers(0, f32_words(800.0), device_id=unit(sim, "stapler"))
            width, depth, staple = await trigger_and_read(sim, gauge)
        channel = sim.behaviour("gauge", GaugeSim).last_outlier
    # then the channel named as the outlier lies outside the oslo spec limits
    spec = {
        "width_mm": (width, 418.8, 421.2),
        "depth_mm": (depth, 398.8, 401.2),
        "staple_height_mm": (staple, 1.1, 1.7),
    }
    assert channel in spec
    value, lsl, usl = spec[channel]
    assert not lsl <= value <= usl


async def test_gauge_noise_is_reproducible_from_the_seed() -> None:
    measured: list[list[float]] = []
    for _ in range(2):
        async with started(seed=7) as sim, mb_client(sim, "gauge") as gauge:
            measured.append(await trigger_and_read(sim, gauge))
    assert measured[0] == measured[1]


# -- time scale -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sim_time_scale", [0.05])
async def test_durations_are_scaled_by_the_time_scale(sim_cell: SimCell) -> None:
    # given a 4 s tool change at time scale 0.05 (0.2 s)
    loop = asyncio.get_running_loop()
    async with mb_client(sim_cell, "toolchanger") as client:
        began = loop.time()
        await client.write_register(0, 1, device_id=unit(sim_cell, "toolchanger"))
        await sim_cell.wait_for(lambda: sim_cell.value("toolchanger.tool_current") == 1, TIMEOUT)
        took = loop.time() - began
    # then it took at least the scaled time and far less than the unscaled one
    assert 0.2 * 0.9 <= took < 4.0


# -- faults -----------------------------------------------------------------------------------------
async def test_dropped_modbus_connections_fail_then_reconnect(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "fixture") as client:
        await read_bits(client, sim_cell, "fixture")
        # when the sim drops every connection
        assert sim_cell.faults.drop_connections("fixture") == 1
        # then the next request fails, and a new connection works
        with pytest.raises((ConnectionException, ModbusIOException)):
            await client.read_discrete_inputs(0, count=2, device_id=unit(sim_cell, "fixture"))
    async with mb_client(sim_cell, "fixture") as client:
        await read_bits(client, sim_cell, "fixture")


async def test_dropped_opcua_session_fails_the_client(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        assert sim_cell.faults.drop_connections("robot1") == 1
        with pytest.raises((ConnectionError, UaError, asyncio.TimeoutError)):
            await ua_read(client, "busy")
    async with ua_client(sim_cell) as client:
        assert await ua_read(client, "busy") is False


async def test_refused_connections_until_cleared_on_the_same_port(sim_cell: SimCell) -> None:
    host, port = sim_cell.cell_config().devices["gauge"].host_port
    # when the gauge's server refuses connections
    fault = await sim_cell.faults.refuse_connections("gauge")
    client = AsyncModbusTcpClient(host, port=port, timeout=1, retries=0, reconnect_delay=0)
    assert not await client.connect()
    client.close()
    # then after clearing, the same port serves again
    await fault.clear()
    assert sim_cell.cell_config().devices["gauge"].host_port == (host, port)
    async with mb_client(sim_cell, "gauge") as client:
        await read_bits(client, sim_cell, "gauge", 1)


async def test_restart_on_the_same_port_loses_sessions_but_keeps_values(sim_cell: SimCell) -> None:
    endpoint = sim_cell.endpoint("robot1")
    async with ua_client(sim_cell) as client:
        await ua_write(client, "program", 11, ua.VariantType.UInt16)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        # when the robot's server restarts
        await sim_cell.faults.restart("robot1")
        # then the old session is gone
        with pytest.raises((ConnectionError, UaError, asyncio.TimeoutError)):
            await ua_read(client, "active_program")
    # and a new session on the same endpoint sees the robot as it was
    assert sim_cell.endpoint("robot1") == endpoint
    async with ua_client(sim_cell) as client:
        assert await ua_read(client, "active_program") == 11


async def test_latency_delays_every_modbus_request(sim_cell: SimCell) -> None:
    loop = asyncio.get_running_loop()
    async with mb_client(sim_cell, "fixture", timeout=2.0) as client:
        async with sim_cell.faults.latency("fixture", 0.2):
            began = loop.time()
            await read_bits(client, sim_cell, "fixture")
            assert loop.time() - began >= 0.2 * 0.9
        # cleared: no latency left on the server
        assert sim_cell.server_of("fixture").gate.latency_s == 0.0
        await read_bits(client, sim_cell, "fixture")


async def test_latency_delays_opcua_reads(sim_cell: SimCell) -> None:
    loop = asyncio.get_running_loop()
    async with ua_client(sim_cell) as client, sim_cell.faults.latency("robot1", 0.2):
        began = loop.time()
        await ua_read(client, "busy")
        assert loop.time() - began >= 0.2 * 0.9


async def test_frozen_device_takes_commands_but_publishes_nothing_until_thawed(sim_cell: SimCell) -> None:
    toolchanger = unit(sim_cell, "toolchanger")
    async with mb_client(sim_cell, "toolchanger") as client:
        # given a frozen tool changer
        fault = sim_cell.faults.freeze("toolchanger")
        # when a tool change runs to the end behind the frozen image
        await client.write_register(0, 3, device_id=toolchanger)
        await sim_cell.wait_for(lambda: sim_cell.value("toolchanger.tool_current") == 3, TIMEOUT)
        # then clients still see the old values
        assert await read_inputs(client, sim_cell, "toolchanger", 0, 1) == [0]
        assert await read_bits(client, sim_cell, "toolchanger", 1) == [False]
        # and after thawing they see the current ones
        await fault.clear()
        assert await read_inputs(client, sim_cell, "toolchanger", 0, 1) == [3]
    assert sim_cell.counters[("toolchanger", "tool_change")] == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_gauge_channel_reads_an_injected_non_finite_value(sim_cell: SimCell, bad: float) -> None:
    async with mb_client(sim_cell, "gauge") as client:
        async with sim_cell.faults.gauge_value("gauge", "width_mm", bad):
            width, depth, _staple = await trigger_and_read(sim_cell, client)
            assert math.isnan(width) if math.isnan(bad) else width == bad
            assert math.isfinite(depth)
        # cleared: the true measurement is back
        assert math.isfinite(f32(await read_inputs(client, sim_cell, "gauge", 0, 2)))


@pytest.mark.parametrize("sim_time_scale", [SLOW])
async def test_robot_fault_mid_cycle_stops_the_cycle_for_good(sim_cell: SimCell) -> None:
    robot = sim_cell.behaviour("robot1", RobotSim)
    async with ua_client(sim_cell) as client:
        await ua_write(client, "program", 11, ua.VariantType.UInt16)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        # given the next cycle faults half way
        fault = sim_cell.faults.robot_fault("robot1", 42, at=0.5)
        # when the cycle starts
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        assert await ua_read(client, "busy") is True
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.fault_code") == 42, TIMEOUT)
        # then it stops, with no timed action left that could complete it
        assert await ua_read(client, "fault_code") == 42
        assert await ua_read(client, "busy") is False
        assert await ua_read(client, "done") is False
        assert await ua_read(client, "cycle_count") == 0
        assert "cycle" not in robot.busy_slots()
        # and clearing the fault resets the code
        await fault.clear()
        assert await ua_read(client, "fault_code") == 0


async def test_robot_fault_now_refuses_new_cycles(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        await ua_write(client, "program", 11, ua.VariantType.UInt16)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        sim_cell.faults.robot_fault("robot1", 77)
        await ua_write(client, "start", True, ua.VariantType.Boolean)
        assert await ua_read(client, "busy") is False
    assert sim_cell.refused[("robot1", "cycle_start")] == 1


async def test_modbus_exception_on_a_tag(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "fixture") as client:
        async with sim_cell.faults.modbus_exception("fixture", "width_act", code=4):
            reply = await client.read_input_registers(0, count=4, device_id=unit(sim_cell, "fixture"))
            assert reply.isError() and reply.exception_code == 4
            # a request not touching the tag is served
            await read_bits(client, sim_cell, "fixture")
        await read_inputs(client, sim_cell, "fixture", 0, 4)


async def test_bad_opcua_status_on_a_tag(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        async with await sim_cell.faults.bad_status("robot1", "busy", "BadSensorFailure"):
            with pytest.raises(BadSensorFailure):
                await ua_read(client, "busy")
        assert await ua_read(client, "busy") is False


async def test_blackhole_holds_requests_until_released(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "gauge", timeout=0.3) as client:
        fault = sim_cell.faults.blackhole("gauge")
        with pytest.raises(ModbusIOException):
            await client.read_discrete_inputs(0, count=1, device_id=unit(sim_cell, "gauge"))
        await fault.clear()
    async with mb_client(sim_cell, "gauge") as client:
        await read_bits(client, sim_cell, "gauge", 1)


# -- lifetime and config ----------------------------------------------------------------------------
async def test_closing_mid_action_leaves_no_task_running() -> None:
    # given a cell with a tool change and a robot program load in progress
    async with started(time_scale=1.0) as sim:
        async with mb_client(sim, "toolchanger") as client:
            await client.write_register(0, 1, device_id=unit(sim, "toolchanger"))
        async with ua_client(sim) as client:
            await ua_write(client, "program", 11, ua.VariantType.UInt16)
        assert sim.behaviour("toolchanger").busy_slots() == {"change"}
    # when it closes, then no simulator task is left
    leftover = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("sim:")]
    assert leftover == []


async def test_cell_config_points_at_the_running_servers(sim_cell: SimCell) -> None:
    config = sim_cell.cell_config()
    ports = {dev.host_port for dev in config.devices.values()}
    # the three tooling units share one server, so four devices... three endpoints
    assert len(ports) == 3
    assert config.devices["toolchanger"].host_port == config.devices["stapler"].host_port
    assert all(host == "127.0.0.1" for host, _ in ports)
    assert config.devices["robot1"].endpoint.endswith("/cellctl/robot1")


async def test_fixed_ports_come_from_the_cell_file() -> None:
    # given a cell file whose ports are free right now
    cell = load_cell_config(CONFIG)
    robot_port, tooling_port, gauge_port = free_port(), free_port(), free_port()
    ports = {
        "robot1": robot_port,
        "toolchanger": tooling_port,
        "fixture": tooling_port,
        "stapler": tooling_port,
        "safety": tooling_port,
    }
    ports["gauge"] = gauge_port
    devices = {}
    for name, dev in cell.devices.items():
        scheme, rest = dev.endpoint.split("://", 1)
        path = rest.split("/", 1)[1] if "/" in rest else ""
        endpoint = f"{scheme}://127.0.0.1:{ports[name]}" + (f"/{path}" if path else "")
        devices[name] = dev.model_copy(update={"endpoint": endpoint})
    cell = cell.model_copy(update={"devices": devices})
    # when started without ephemeral ports, then the file's ports serve
    async with SimCell(cell, SimsConfig(), ephemeral_ports=False) as sim:
        assert sim.cell_config().devices["gauge"].host_port == ("127.0.0.1", gauge_port)
        async with mb_client(sim, "gauge") as client:
            await read_bits(client, sim, "gauge", 1)


def test_sims_file_following_an_unknown_tag_is_refused() -> None:
    cell = load_cell_config(CONFIG)
    sims = SimsConfig.model_validate(
        {"gauge": {"channels": {"width_mm": {"follows": "fixture.nowhere"}, "height": {"noise": 1}}}}
    )
    with pytest.raises(ConfigError) as caught:
        SimCell(cell, sims)
    message = str(caught.value)
    assert "gauge.channels.width_mm.follows" in message
    assert "gauge.channels.height" in message


def test_two_devices_on_one_modbus_unit_are_refused() -> None:
    cell = load_cell_config(CONFIG)
    devices = dict(cell.devices)
    devices["stapler"] = devices["stapler"].model_copy(update={"unit_id": 2})
    with pytest.raises(ConfigError, match="unit 2"):
        SimCell(cell.model_copy(update={"devices": devices}), SimsConfig())


def test_shipped_sims_file_fits_the_shipped_cell() -> None:
    load_sims_config(CONFIG / "sims.yaml").check(load_cell_config(CONFIG))
    assert isinstance(load_sims_config(CONFIG / "sims.yaml").gauge, GaugeSettings)


# -- command line -----------------------------------------------------------------------------------
async def test_command_line_serves_on_free_ports_until_sigterm() -> None:
    # given `python -m device_sims config --ephemeral --control` as a subprocess
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "device_sims",
        str(CONFIG),
        "--ephemeral",
        "--time-scale",
        "0.02",
        "--control",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        endpoints: dict[str, str] = {}
        async with asyncio.timeout(30):
            while (line := (await process.stdout.readline()).decode().strip()) != "ready":
                assert line.startswith("listening "), line
                _, endpoint, devices = line.split()
                endpoints.update(dict.fromkeys(devices.split(","), endpoint))
        assert set(endpoints) == {"robot1", "toolchanger", "fixture", "stapler", "gauge", "safety"}
        # when a client changes a tool and asks for the counters
        host, port = endpoints["toolchanger"].removeprefix("tcp://").split(":")
        client = AsyncModbusTcpClient(host, port=int(port), timeout=2, retries=0)
        assert await client.connect()
        await client.write_register(0, 2, device_id=1)
        client.close()
        process.stdin.write(b"counters\n")
        await process.stdin.drain()
        async with asyncio.timeout(10):
            reply = (await process.stdout.readline()).decode()
        assert reply.startswith("ok ") and '"toolchanger.tool_change": 1' in reply
    finally:
        # then SIGTERM stops it cleanly
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await process.wait()
    assert code == 0


async def test_console_commands_inject_and_clear_faults(sim_cell: SimCell) -> None:
    console = FaultConsole(sim_cell)
    assert await console.run("latency fixture 0.25") == "ok latency fixture"
    assert sim_cell.server_of("fixture").gate.latency_s == 0.25
    assert await console.run("force gauge width_mm nan") == "ok force_value gauge.width_mm"
    assert math.isnan(float(sim_cell.published("gauge.width_mm")))
    assert await console.run("faults") == "ok latency fixture; force_value gauge.width_mm"
    assert await console.run("clear latency fixture") == "ok cleared latency fixture"
    assert await console.run("clear") == "ok cleared 1"
    assert sim_cell.server_of("fixture").gate.latency_s == 0.0
    assert sim_cell.published("gauge.width_mm") == 0.0
    assert (await console.run("latency nowhere 1")).startswith("error latency:")
    assert (await console.run("explode")).startswith("error unknown command")


def test_port_offset_shifts_every_endpoint() -> None:
    cell = shift_ports(load_cell_config(CONFIG), 1000)
    assert cell.devices["robot1"].endpoint == "opc.tcp://127.0.0.1:49401/cellctl/robot1"
    assert cell.devices["fixture"].host_port == ("127.0.0.1", 16020)
    assert cell.devices["gauge"].host_port == ("127.0.0.1", 16021)


async def test_console_sets_a_safety_input_until_cleared(sim_cell: SimCell) -> None:
    console = FaultConsole(sim_cell)
    assert sim_cell.published("safety.estop_ok") is True
    assert await console.run("safety safety estop_ok false") == "ok safety_input safety.estop_ok"
    assert sim_cell.published("safety.estop_ok") is False
    assert await console.run("clear") == "ok cleared 1"
    assert sim_cell.published("safety.estop_ok") is True
    assert (await console.run("safety gauge ready true")).startswith("error safety:")
