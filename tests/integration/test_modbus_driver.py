"""ModbusDriver over real Modbus TCP on loopback: polling, writes, faults, outages and recovery.

Most tests run against a small spec-written server (tests/integration/_modbus_fake.py) so each fault can be
scripted exactly; the last group runs the example cell's devices against device_sims.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cellctl.core.clock import SystemClock
from cellctl.core.ports import LinkState
from cellctl.core.tags import Quality, Tag
from cellctl.drivers import ModbusDriver, build_driver
from cellctl.errors import CommError, DeviceError, DeviceFault
from cellctl.schema.cell import CellConfig, DeviceConfig
from device_sims.harness import SimCell
from tests.fixtures.drivers import running, wait_health, wait_reading
from tests.integration._modbus_fake import FakeModbus, Request

CONFIG = Path(__file__).resolve().parents[2] / "config" / "cell.yaml"
CLOCK = SystemClock()


def example_device(name: str, port: int, **overrides: Any) -> DeviceConfig:
    """A device of the example cell, pointed at ``port`` on loopback."""
    raw = YAML(typ="safe").load(CONFIG.read_text())
    device = CellConfig.model_validate(raw).devices[name]
    return device.model_copy(update={"endpoint": f"tcp://127.0.0.1:{port}", **overrides})


def fixture_tables(server: FakeModbus, unit_id: int = 2) -> None:
    """The fixture's tables: clamp coil, two discrete inputs, float32 setpoints and actuals."""
    unit = server.unit(unit_id)
    unit.coils[0] = True
    unit.discrete.update({0: True, 1: False})
    unit.set_float32(unit.holding, 0, 420.0)
    unit.set_float32(unit.holding, 2, 310.5)
    unit.set_float32(unit.input, 0, 419.5)
    unit.set_float32(unit.input, 2, 310.25)


@pytest.fixture
async def server() -> AsyncIterator[FakeModbus]:
    fake = FakeModbus()
    fixture_tables(fake)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def polls(unit: int) -> Callable[[list[Request]], int]:
    return lambda requests: sum(1 for r in requests if r.unit == unit and r.function == 4)


# ------------------------------------------------------------------------------------------ reading


async def test_every_tag_of_the_fixture_reads_good_once_the_link_is_up(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        values = {tag: driver.last(tag) for tag in driver.config.tags}
    assert all(r.quality is Quality.GOOD for r in values.values())
    assert values["clamp"].value is True
    assert values["clamped"].value is True
    assert values["in_position"].value is False
    assert values["width_sp"].value == 420.0
    assert values["depth_act"].value == 310.25


async def test_one_poll_cycle_is_one_read_per_table_for_the_fixture(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    assert [(b.table.value, b.start, b.count) for b in driver.blocks] == [
        ("coil", 0, 1),
        ("discrete_input", 0, 2),
        ("input_register", 0, 4),
        ("holding_register", 0, 4),
    ]


async def test_a_changed_register_reaches_watchers_through_the_poll(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        server.unit(2).set_float32(server.unit(2).input, 0, 377.0)
        reading = await wait_reading(driver, "width_act", lambda r: r.value == 377.0, 2)
    assert reading.quality is Quality.GOOD


async def test_watchers_hear_nothing_while_nothing_changes(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        heard: list[str] = []
        unsubscribe = driver.watch(lambda tag, _r: heard.append(tag))
        seen = polls(2)(server.requests)
        await server.wait_requests(lambda rs: polls(2)(rs) >= seen + 5, 5)
        unsubscribe()
    assert heard == []


async def test_an_unchanged_value_carries_the_time_of_the_latest_poll(server: FakeModbus) -> None:
    # Given a polled tag whose registers never change
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        first = driver.last("width_act")
        # When the device answers more polls with the same registers
        seen = polls(2)(server.requests)
        await server.wait_requests(lambda rs: polls(2)(rs) >= seen + 3, 5)
        later = driver.last("width_act")
    # Then the reading is the same value, stamped by a later poll (freshness is not lost)
    assert (later.value, later.quality) == (first.value, Quality.GOOD)
    assert later.timestamp > first.timestamp


async def test_a_value_read_on_demand_then_changed_back_is_seen_by_the_poll(server: FakeModbus) -> None:
    # Given a polled tag, read on demand while the device briefly held another value
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        server.unit(2).set_float32(server.unit(2).input, 0, 377.0)
        assert (await driver.read("width_act")).value == 377.0
        # When the device goes back to the value the last poll saw
        server.unit(2).set_float32(server.unit(2).input, 0, 419.5)
        # Then the poll brings the cache back to it (an equal block reply is not taken as "no change")
        reading = await wait_reading(driver, "width_act", lambda r: r.value == 419.5, 2)
    assert reading.quality is Quality.GOOD


async def test_read_fetches_the_value_now_and_updates_the_cache(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port, poll_interval_s=60), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        server.unit(2).discrete[1] = True
        reading = await driver.read("in_position")
        cached = driver.last("in_position")
    assert (reading.value, reading.quality) == (True, Quality.GOOD)
    assert cached.value is True


async def test_read_without_a_link_is_a_bad_reading_not_an_exception() -> None:
    driver = ModbusDriver("fixture", example_device("fixture", 1), SystemClock())
    reading = await driver.read("clamped")
    assert reading.quality is Quality.BAD
    assert "not connected" in reading.reason


async def test_an_unknown_tag_is_an_error_naming_device_and_tag(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    with pytest.raises(DeviceError, match=r"fixture\.nope: no such tag"):
        driver.last("nope")


# ------------------------------------------------------------------------------------------- writing


async def test_a_float_setpoint_write_lands_in_both_registers_and_is_read_back(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port, poll_interval_s=60), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("width_sp", 455.5)
        cached = driver.last("width_sp")
    assert server.unit(2).get_float32(server.unit(2).holding, 0) == 455.5
    assert (cached.value, cached.quality) == (455.5, Quality.GOOD)


async def test_a_coil_write_switches_the_coil(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("clamp", False)
        cached = driver.last("clamp")
    assert server.unit(2).coils[0] is False
    assert cached.value is False


async def test_a_write_to_a_read_only_tag_is_refused_and_nothing_is_sent(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        before = len([r for r in server.requests if r.function in (5, 6, 15, 16, 22)])
        with pytest.raises(DeviceError, match=r"fixture\.clamped: tag is read-only") as caught:
            await driver.write("clamped", True)
        after = len([r for r in server.requests if r.function in (5, 6, 15, 16, 22)])
    assert not isinstance(caught.value, CommError | DeviceFault)
    assert after == before


async def test_a_value_the_tag_cannot_hold_is_refused_before_anything_is_sent() -> None:
    fake = FakeModbus()
    unit = fake.unit(1)
    unit.holding[0] = 0
    unit.input[0] = 0
    unit.discrete[0] = False
    await fake.start()
    try:
        driver = ModbusDriver("toolchanger", example_device("toolchanger", fake.port), SystemClock())
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            with pytest.raises(DeviceError, match=r"toolchanger\.tool_request: cannot write 70000"):
                await driver.write("tool_request", 70000)
        assert all(r.function != 6 for r in fake.requests)
    finally:
        await fake.stop()


async def test_a_write_without_a_link_is_a_comm_error() -> None:
    driver = ModbusDriver("fixture", example_device("fixture", 1), SystemClock())
    with pytest.raises(CommError, match=r"fixture\.clamp: not connected"):
        await driver.write("clamp", True)


async def test_an_exception_reply_to_a_write_is_a_device_fault_with_the_code(server: FakeModbus) -> None:
    server.exceptions[(2, 16, 2)] = 4
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(DeviceFault, match=r"fixture\.depth_sp: .*code 4 \(server device failure\)"):
            await driver.write("depth_sp", 300.0)


async def test_a_bit_in_a_register_is_written_with_a_masked_write_that_keeps_the_other_bits() -> None:
    fake = FakeModbus()
    fake.unit(1).holding[5] = 0b1010_0000_0000_0001
    await fake.start()
    device = DeviceConfig.model_validate(
        {
            "driver": "modbus",
            "endpoint": f"tcp://127.0.0.1:{fake.port}",
            "profile": "press",
            "tags": {
                "lamp": {
                    "table": "holding_register",
                    "address": 5,
                    "bit": 3,
                    "datatype": "bool",
                    "access": "rw",
                }
            },
        }
    )
    try:
        driver = ModbusDriver("press", device, SystemClock())
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            assert driver.last("lamp").value is False
            await driver.write("lamp", True)
            assert driver.last("lamp").value is True
        assert fake.unit(1).holding[5] == 0b1010_0000_0000_1001
        assert any(r.function == 22 for r in fake.requests)
    finally:
        await fake.stop()


async def test_a_write_only_tag_is_written_but_never_polled_nor_read() -> None:
    fake = FakeModbus()
    unit = fake.unit(1)
    unit.holding.update({0: 0, 1: 0})
    await fake.start()
    device = DeviceConfig.model_validate(
        {
            "driver": "modbus",
            "endpoint": f"tcp://127.0.0.1:{fake.port}",
            "profile": "press",
            "tags": {
                "command": {"table": "holding_register", "address": 0, "datatype": "uint16", "access": "w"},
                "status": {"table": "holding_register", "address": 1, "datatype": "uint16"},
            },
        }
    )
    try:
        driver = ModbusDriver("press", device, CLOCK)
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            await driver.write("command", 9)
            read = await driver.read("command")
            cached = driver.last("command")
        assert unit.holding[0] == 9
        assert [(b.start, b.count) for b in driver.blocks] == [(1, 1)]
        assert (read.quality, read.reason) == (Quality.BAD, "tag is write-only")
        assert cached.reason == "tag is write-only"
    finally:
        await fake.stop()


# --------------------------------------------------------------------------------------- bad replies


async def test_an_exception_reply_to_a_poll_spoils_only_its_block(server: FakeModbus) -> None:
    server.exceptions[(2, 4, 0)] = 2
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        act, sp = driver.last("width_act"), driver.last("width_sp")
    assert act.quality is Quality.BAD
    assert "exception code 2 (illegal data address)" in act.reason
    assert (sp.quality, sp.value) == (Quality.GOOD, 420.0)


async def test_a_reply_with_too_few_registers_is_never_decoded(server: FakeModbus) -> None:
    server.short_replies.add((2, 4, 0))
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        act = driver.last("width_act")
    assert act.quality is Quality.BAD
    assert act.value is None
    assert "malformed reply" in act.reason


async def test_a_block_recovers_when_the_device_accepts_the_read_again(server: FakeModbus) -> None:
    server.exceptions[(2, 4, 0)] = 6
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        assert driver.last("width_act").quality is Quality.BAD
        del server.exceptions[(2, 4, 0)]
        reading = await wait_reading(driver, "width_act", lambda r: r.quality is Quality.GOOD, 2)
    assert reading.value == 419.5


# ------------------------------------------------------------------------------------ outages


async def test_a_stopped_server_makes_every_tag_bad_and_health_down_within_3_s(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await server.stop()
        health = await wait_health(driver, LinkState.DOWN, 3)
        readings = [driver.last(tag) for tag in driver.config.tags]
    assert health.error
    assert all(r.quality is Quality.BAD and r.value is None for r in readings)


async def test_a_silent_server_is_found_down_within_3_s(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        server.blackhole = True
        health = await wait_health(driver, LinkState.DOWN, 3)
    assert "no reply" in health.error


async def test_values_resume_within_5_s_when_the_server_comes_back(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await server.stop()
        await wait_health(driver, LinkState.DOWN, 3)
        server.unit(2).set_float32(server.unit(2).input, 2, 299.0)
        await server.start()
        await wait_health(driver, LinkState.UP, 5)
        reading = driver.last("depth_act")
    assert (reading.quality, reading.value) == (Quality.GOOD, 299.0)


async def test_health_goes_connecting_then_up_then_down(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    states: list[LinkState] = []
    driver.on_health(lambda h: states.append(h.state))
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await server.stop()
        await wait_health(driver, LinkState.DOWN, 3)
    assert states[:3] == [LinkState.CONNECTING, LinkState.UP, LinkState.DOWN]


async def test_a_dead_endpoint_never_stalls_another_devices_polling(server: FakeModbus) -> None:
    dead = FakeModbus()
    dead.unit(1)
    await dead.start()
    dead.blackhole = True
    try:
        stuck = ModbusDriver("toolchanger", example_device("toolchanger", dead.port), SystemClock())
        live = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
        async with running(stuck, live):
            await wait_health(live, LinkState.UP, 5)
            for value in (1.0, 2.0, 3.0):
                server.unit(2).set_float32(server.unit(2).input, 0, value)
                await wait_reading(live, "width_act", lambda r, v=value: r.value == v, 1)
            assert stuck.health.state is not LinkState.UP
    finally:
        await dead.stop()


async def test_a_refused_port_keeps_retrying_and_reports_down() -> None:
    fake = FakeModbus()
    port = await fake.start()
    await fake.stop()  # the port is now closed
    driver = ModbusDriver("fixture", example_device("fixture", port), SystemClock())
    async with running(driver):
        health = await wait_health(driver, LinkState.DOWN, 5, lambda h: "cannot connect" in h.error)
    assert health.error == f"fixture: cannot connect to 127.0.0.1:{port}"
    assert driver.last("clamped").quality is Quality.BAD


# --------------------------------------------------------------------------------------- factory


def test_build_driver_picks_modbus_for_a_modbus_device() -> None:
    driver = build_driver("gauge", example_device("gauge", 1), SystemClock())
    assert isinstance(driver, ModbusDriver)
    assert driver.device == "gauge"


async def test_a_tag_handle_waits_for_a_value_fed_by_the_poll(server: FakeModbus) -> None:
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        server.unit(2).discrete[1] = True
        value = await Tag(driver, "in_position").wait_for_value(True, 2)
    assert value is True


async def test_nan_from_the_device_is_kept_but_not_usable(server: FakeModbus) -> None:
    server.unit(2).set_float32(server.unit(2).input, 0, math.nan)
    driver = ModbusDriver("fixture", example_device("fixture", server.port), SystemClock())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        reading = driver.last("width_act")
    assert isinstance(reading.value, float) and math.isnan(reading.value)
    assert not reading.usable


# ---------------------------------------------------------------------------- against the simulators

MODBUS_DEVICES = ["toolchanger", "fixture", "stapler", "gauge"]


def sim_driver(sim_cell: SimCell, name: str) -> ModbusDriver:
    """A driver for one Modbus device of the simulated example cell."""
    return ModbusDriver(name, sim_cell.cell_config().devices[name], CLOCK)


@pytest.mark.parametrize("device", MODBUS_DEVICES)
async def test_every_tag_of_each_simulated_device_reads_its_true_value(
    sim_cell: SimCell, device: str
) -> None:
    driver = sim_driver(sim_cell, device)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        readings = {tag: driver.last(tag) for tag in driver.config.tags}
    for tag, reading in readings.items():
        assert reading.quality is Quality.GOOD, (tag, reading)
        expected = sim_cell.value(f"{device}.{tag}")
        assert reading.value == pytest.approx(expected, rel=1e-6), tag


async def test_a_tool_change_written_to_the_sim_completes_and_the_poll_sees_it(sim_cell: SimCell) -> None:
    driver = sim_driver(sim_cell, "toolchanger")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        tool = next(
            n for n in driver.config.tools.values() if n != sim_cell.value("toolchanger.tool_current")
        )
        await driver.write("tool_request", tool)
        await Tag(driver, "tool_current").wait_for_value(tool, 5)
        await Tag(driver, "moving").wait_for_value(False, 5)
    assert sim_cell.counters[("toolchanger", "tool_change")] == 1
    assert sim_cell.value("toolchanger.tool_current") == tool


async def test_a_fixture_move_is_followed_by_the_actual_position(sim_cell: SimCell) -> None:
    driver = sim_driver(sim_cell, "fixture")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("clamp", False)
        await Tag(driver, "clamped").wait_for_value(False, 5)
        target = float(sim_cell.value("fixture.width_act")) + 12.5
        await driver.write("width_sp", target)
        await Tag(driver, "width_act").wait_until(lambda v: abs(float(v) - target) < 1e-3, 5)
        await Tag(driver, "in_position").wait_for_value(True, 5)
    assert sim_cell.value("fixture.width_sp") == pytest.approx(target)


async def test_a_write_to_a_read_only_simulated_tag_never_reaches_the_sim(sim_cell: SimCell) -> None:
    driver = sim_driver(sim_cell, "gauge")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(DeviceError, match=r"gauge\.ready: tag is read-only"):
            await driver.write("ready", True)
    assert sim_cell.writes[("gauge", "ready")] == 0


async def test_a_stopped_sim_server_makes_tags_bad_and_health_down_then_values_resume(
    sim_cell: SimCell,
) -> None:
    driver = sim_driver(sim_cell, "stapler")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        outage = await sim_cell.faults.refuse_connections("stapler")
        await wait_health(driver, LinkState.DOWN, 3)
        assert all(driver.last(tag).quality is Quality.BAD for tag in driver.config.tags)
        await outage.clear()
        await wait_health(driver, LinkState.UP, 5)
        reading = driver.last("staples")
    assert (reading.quality, reading.value) == (Quality.GOOD, sim_cell.value("stapler.staples"))


async def test_a_dropped_connection_is_reconnected(sim_cell: SimCell) -> None:
    driver = sim_driver(sim_cell, "fixture")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        assert sim_cell.faults.drop_connections("fixture") >= 1
        await wait_health(driver, LinkState.DOWN, 3)
        await wait_health(driver, LinkState.UP, 5)
        assert driver.last("clamped").quality is Quality.GOOD


async def test_a_blackholed_sim_is_found_down_within_3_s(sim_cell: SimCell) -> None:
    driver = sim_driver(sim_cell, "gauge")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        async with sim_cell.faults.blackhole("gauge"):
            health = await wait_health(driver, LinkState.DOWN, 3)
    assert "no reply" in health.error


async def test_a_blackholed_endpoint_never_stalls_a_device_on_another_endpoint(sim_cell: SimCell) -> None:
    gauge, fixture = sim_driver(sim_cell, "gauge"), sim_driver(sim_cell, "fixture")
    async with running(gauge, fixture):
        await wait_health(fixture, LinkState.UP, 5)
        await wait_health(gauge, LinkState.UP, 5)
        async with sim_cell.faults.blackhole("gauge"):
            # Each value must arrive within one second while the gauge's requests hang for two.
            for value in (101.0, 202.0, 303.0):
                async with sim_cell.faults.force_value("fixture", "depth_act", value):
                    await wait_reading(fixture, "depth_act", lambda r, v=value: r.value == v, 1)
            await wait_health(gauge, LinkState.DOWN, 3)


async def test_a_modbus_exception_from_the_sim_spoils_that_tag_and_faults_its_write(
    sim_cell: SimCell,
) -> None:
    driver = sim_driver(sim_cell, "stapler")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        sim_cell.faults.modbus_exception("stapler", "pitch_mm", code=4)
        reading = await wait_reading(driver, "pitch_mm", lambda r: r.quality is Quality.BAD, 2)
        with pytest.raises(DeviceFault, match="exception code 4"):
            await driver.write("pitch_mm", 25.0)
        await sim_cell.faults.clear_all()
        await wait_reading(driver, "pitch_mm", lambda r: r.quality is Quality.GOOD, 2)
    assert "exception code 4" in reading.reason
    assert driver.health.state is LinkState.UP


async def test_a_nan_gauge_channel_reads_as_unusable(sim_cell: SimCell) -> None:
    driver = sim_driver(sim_cell, "gauge")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        sim_cell.faults.gauge_value("gauge", "width_mm")
        reading = await wait_reading(
            driver, "width_mm", lambda r: isinstance(r.value, float) and math.isnan(r.value), 2
        )
        await sim_cell.faults.clear_all()
    assert not reading.usable
