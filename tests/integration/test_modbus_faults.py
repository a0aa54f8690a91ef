"""ModbusDriver under device faults: each exception code's reaction, malformed replies, poll groups,
write-then-verify, and one failing unit or endpoint never stalling another.

The exact fault scripts run against the spec-written FakeModbus; malformed frames, verify and isolation run
against device_sims. Waits are on health and reading events with generous bounds; counts are of requests
the server saw, never of elapsed time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from cellctl.core.clock import SystemClock
from cellctl.core.ports import LinkState
from cellctl.core.tags import Quality, Reading, TagValue
from cellctl.drivers import Backoff, ModbusDriver
from cellctl.errors import (
    CommError,
    ModbusDeviceBusy,
    ModbusDeviceFailure,
    ModbusExceptionError,
    ModbusGatewayError,
    ModbusGatewayPathUnavailable,
    ModbusGatewayTargetFailed,
    ModbusIllegalAddress,
    ModbusIllegalFunction,
    ModbusIllegalValue,
    WriteVerifyError,
)
from cellctl.schema.cell import DeviceConfig, Timeouts
from device_sims.gate import MALFORMATIONS, Malformation
from device_sims.harness import SimCell
from tests.integration._modbus_fake import FakeModbus, Request
from tests.integration.test_modbus_driver import (
    example_device,
    fixture_tables,
    running,
    wait_health,
    wait_reading,
)

CLOCK = SystemClock()
FAST_BACKOFF = (0.05, 0.2)
"""Reconnect backoff (start, cap) of drivers whose recovery a test waits for."""
WRITES = (5, 6, 15, 16, 22)


def fast_backoff() -> Backoff:
    return Backoff(*FAST_BACKOFF)


def gauge_device(port: int, tags: dict[str, dict[str, Any]], **fields: Any) -> DeviceConfig:
    """A Modbus gauge at unit 1 of ``port`` with the given tags."""
    return DeviceConfig.model_validate(
        {
            "driver": "modbus",
            "endpoint": f"tcp://127.0.0.1:{port}",
            "profile": "gauge",
            "poll_interval_s": 0.01,
            "tags": tags,
            **fields,
        }
    )


def requests_at(function: int, address: int, unit: int = 1) -> Callable[[list[Request]], int]:
    return lambda requests: sum(
        1 for r in requests if (r.unit, r.function, r.address) == (unit, function, address)
    )


def is_good(reading: Reading) -> bool:
    return reading.quality is Quality.GOOD


def is_bad(reading: Reading) -> bool:
    return reading.quality is Quality.BAD


@pytest.fixture
async def server() -> AsyncIterator[FakeModbus]:
    fake = FakeModbus()
    fixture_tables(fake)
    fake.unit(1).input.update({0: 11, 1: 12, 4: 44, 5: 45})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def two_words(port: int, second: int = 4, **fields: Any) -> DeviceConfig:
    """Input registers 0 and ``second`` (uint16 each) of unit 1: one coalesced block when close enough."""
    return gauge_device(
        port,
        {
            "first": {"table": "input_register", "address": 0, "datatype": "uint16"},
            "second": {"table": "input_register", "address": second, "datatype": "uint16"},
        },
        **fields,
    )


# ----------------------------------------------------------------------------- exception codes on reads


@pytest.mark.parametrize("code", [1, 2, 3])
async def test_a_refused_tag_is_bad_as_a_configuration_mismatch_and_is_not_read_every_poll(
    server: FakeModbus, code: int
) -> None:
    server.exceptions[(1, 4, 10)] = code
    device = gauge_device(
        server.port,
        {
            "good": {"table": "input_register", "address": 0, "datatype": "uint16"},
            "missing": {"table": "input_register", "address": 10, "datatype": "uint16"},
        },
    )
    driver = ModbusDriver("gauge", device, CLOCK, mismatch_retry_s=(60.0, 60.0))
    with capture_logs() as logs:
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            polled = requests_at(4, 0)(server.requests)
            await server.wait_requests(lambda rs: requests_at(4, 0)(rs) >= polled + 10, 5)
            missing, good = driver.last("missing"), driver.last("good")
    assert requests_at(4, 10)(server.requests) == 1
    assert (missing.quality, missing.value) == (Quality.BAD, None)
    assert missing.reason.startswith("configuration mismatch: device refused the read of 1 input_register")
    assert f"exception code {code}" in missing.reason
    assert (good.quality, good.value) == (Quality.GOOD, 11)
    mismatches = [e for e in logs if e["event"] == "modbus configuration mismatch"]
    assert len(mismatches) == 1 and mismatches[0]["log_level"] == "error"
    assert mismatches[0]["tags"] == ["missing"]
    assert driver.health.state is LinkState.UP


async def test_a_block_bridging_registers_the_device_lacks_is_split_and_every_tag_reads_good(
    server: FakeModbus,
) -> None:
    # Registers 2 and 3 do not exist: the coalesced read 0..5 is refused with exception 2.
    driver = ModbusDriver("gauge", two_words(server.port), CLOCK)
    assert [(b.start, b.count) for b in driver.blocks] == [(0, 5)]
    with capture_logs() as logs:
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            readings = driver.last("first"), driver.last("second")
    assert [(r.quality, r.value) for r in readings] == [(Quality.GOOD, 11), (Quality.GOOD, 44)]
    assert [(b.start, b.count) for b in driver.blocks] == [(0, 1), (4, 1)]
    assert not any(e["event"] == "modbus configuration mismatch" for e in logs)
    assert any(e["event"] == "block read refused; reading its tags one by one" for e in logs)


async def test_a_benched_block_is_read_again_later_and_recovers_once_the_device_has_it(
    server: FakeModbus,
) -> None:
    device = gauge_device(
        server.port, {"late": {"table": "input_register", "address": 20, "datatype": "uint16"}}
    )
    driver = ModbusDriver("gauge", device, CLOCK, mismatch_retry_s=(0.05, 0.1))
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        assert driver.last("late").reason.startswith("configuration mismatch")
        server.unit(1).input[20] = 2020
        reading = await wait_reading(driver, "late", is_good, 5)
    assert reading.value == 2020


async def test_a_device_failure_makes_the_block_bad_and_it_is_read_again_every_poll(
    server: FakeModbus,
) -> None:
    server.exceptions[(1, 4, 0)] = 4
    driver = ModbusDriver("gauge", two_words(server.port, second=1), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        asked = requests_at(4, 0)(server.requests)
        await server.wait_requests(lambda rs: requests_at(4, 0)(rs) >= asked + 5, 5)
        reading = driver.last("first")
        del server.exceptions[(1, 4, 0)]
        recovered = await wait_reading(driver, "first", is_good, 2)
    assert reading.quality is Quality.BAD
    assert reading.reason == (
        "device refused the read of 2 input_register(s) at 0: exception code 4 (server device failure)"
    )
    assert recovered.value == 11


async def test_a_busy_device_is_asked_again_within_the_request_and_the_tag_never_goes_bad(
    server: FakeModbus,
) -> None:
    driver = ModbusDriver("gauge", two_words(server.port, second=1), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        qualities: list[Quality] = []
        driver.watch(lambda tag, r: qualities.append(r.quality) if tag == "first" else None)
        server.busy_for[(1, 4, 0)] = 3
        server.unit(1).input[0] = 99
        reading = await wait_reading(driver, "first", lambda r: r.value == 99, 5)
    assert reading.quality is Quality.GOOD
    assert Quality.BAD not in qualities
    assert server.busy_for[(1, 4, 0)] == 0


async def test_a_device_busy_for_longer_than_the_request_timeout_makes_the_block_bad(
    server: FakeModbus,
) -> None:
    server.exceptions[(1, 4, 0)] = 6
    device = two_words(server.port, second=1, timeouts=Timeouts(request_s=0.3))
    driver = ModbusDriver("gauge", device, CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        reading = driver.last("first")
    assert reading.quality is Quality.BAD
    assert reading.reason.endswith("exception code 6 (server device busy)")
    assert requests_at(4, 0)(server.requests) > 2  # asked again before giving up


@pytest.mark.parametrize(
    ("code", "error"), [(10, ModbusGatewayPathUnavailable), (11, ModbusGatewayTargetFailed)]
)
async def test_a_gateway_error_takes_that_unit_down_and_it_recovers(
    server: FakeModbus, code: int, error: type[ModbusGatewayError]
) -> None:
    driver = ModbusDriver("gauge", two_words(server.port, second=1), CLOCK, backoff=fast_backoff())
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        server.exceptions[(1, 4, 0)] = code
        health = await wait_health(driver, LinkState.DOWN, 3)
        readings = driver.last("first"), driver.last("second")
        del server.exceptions[(1, 4, 0)]
        await wait_health(driver, LinkState.UP, 5)
        resumed = driver.last("first")
    assert f"exception code {code} ({error('x', code, 'y').name})" in health.error
    assert all(r.quality is Quality.BAD for r in readings)
    assert (resumed.quality, resumed.value) == (Quality.GOOD, 11)


async def test_a_unit_the_gateway_cannot_reach_never_stalls_another_unit_at_the_same_endpoint(
    server: FakeModbus,
) -> None:
    # The fake has no unit 9 and answers its requests with exception 11, as a gateway does.
    absent = ModbusDriver("gauge", two_words(server.port, unit_id=9), CLOCK)
    fixture = ModbusDriver("fixture", example_device("fixture", server.port), CLOCK)
    async with running(absent, fixture):
        health = await wait_health(absent, LinkState.DOWN, 3, lambda h: "exception code 11" in h.error)
        await wait_health(fixture, LinkState.UP, 5)
        for value in (1.0, 2.0, 3.0):
            server.unit(2).set_float32(server.unit(2).input, 0, value)
            await wait_reading(fixture, "width_act", lambda r, v=value: r.value == v, 1)
        assert absent.health.state is LinkState.DOWN
    assert "gateway target failed to respond" in health.error


# ---------------------------------------------------------------------------- exception codes on writes


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (1, ModbusIllegalFunction),
        (2, ModbusIllegalAddress),
        (3, ModbusIllegalValue),
        (4, ModbusDeviceFailure),
        (11, ModbusGatewayTargetFailed),
    ],
)
async def test_a_refused_write_raises_the_codes_error_and_is_sent_once(
    server: FakeModbus, code: int, error: type[ModbusExceptionError]
) -> None:
    server.exceptions[(2, 16, 2)] = code
    driver = ModbusDriver("fixture", example_device("fixture", server.port), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(error) as caught:
            await driver.write("depth_sp", 300.0)
    assert caught.value.code == code
    assert (caught.value.device, caught.value.tag) == ("fixture", "depth_sp")
    assert isinstance(caught.value, CommError) is (code == 11)
    assert sum(1 for r in server.requests if (r.function, r.address) == (16, 2)) == 1


async def test_a_write_to_a_busy_device_is_sent_again_until_it_is_taken(server: FakeModbus) -> None:
    server.busy_for[(2, 16, 2)] = 2
    driver = ModbusDriver("fixture", example_device("fixture", server.port, poll_interval_s=60), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("depth_sp", 301.5)
    assert server.unit(2).get_float32(server.unit(2).holding, 2) == 301.5
    assert sum(1 for r in server.requests if (r.function, r.address) == (16, 2)) == 3


async def test_a_write_to_a_device_busy_past_the_request_timeout_raises_busy(server: FakeModbus) -> None:
    server.exceptions[(2, 16, 2)] = 6
    device = example_device("fixture", server.port, timeouts=Timeouts(request_s=0.3))
    driver = ModbusDriver("fixture", device, CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        with pytest.raises(ModbusDeviceBusy, match=r"fixture\.depth_sp: .*exception code 6"):
            await driver.write("depth_sp", 300.0)


# ---------------------------------------------------------------------------------- malformed replies

TIMED_OUT: set[Malformation] = {"transaction_id", "unit_id", "truncated"}
"""Malformations pymodbus never matches to the request: the request times out and the link is renewed."""


def quick_device(sim_cell: SimCell, name: str, **tag_updates: dict[str, Any]) -> DeviceConfig:
    """A device of the simulated cell with a short request timeout (and changed tags)."""
    device = sim_cell.cell_config().devices[name]
    tags = dict(device.tags)
    for tag, update in tag_updates.items():
        tags[tag] = tags[tag].model_copy(update=update)
    return device.model_copy(update={"timeouts": Timeouts(connect_s=1.0, request_s=0.4), "tags": tags})


def values_seen(driver: ModbusDriver, tag: str) -> list[TagValue | None]:
    """Every value the tag's readings carry from now on (BAD ones carry None)."""
    seen: list[TagValue | None] = []
    driver.watch(lambda name, reading: seen.append(reading.value) if name == tag else None)
    return seen


@pytest.mark.parametrize("tag", ["width_sp", "clamped", "clamp"])
@pytest.mark.parametrize("kind", MALFORMATIONS)
async def test_a_malformed_reply_is_never_decoded_and_the_link_recovers(
    sim_cell: SimCell, kind: Malformation, tag: str
) -> None:
    driver = ModbusDriver("fixture", quick_device(sim_cell, "fixture"), CLOCK, backoff=fast_backoff())
    truth = sim_cell.value(f"fixture.{tag}")
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        seen = values_seen(driver, tag)
        async with sim_cell.faults.malformed_reply("fixture", tag, kind):
            spoiled = await wait_reading(driver, tag, is_bad, 3)
            if kind in TIMED_OUT:
                assert "no reply" in (await wait_health(driver, LinkState.DOWN, 3)).error
            else:
                assert "malformed reply" in spoiled.reason
                assert driver.health.state is LinkState.UP
        recovered = await wait_reading(driver, tag, is_good, 5)
        await wait_health(driver, LinkState.UP, 5)
    assert recovered.value == truth
    assert set(seen) <= {None, truth}, f"a spoiled reply was decoded: {seen}"


async def test_a_malformed_reply_to_a_write_is_a_comm_error(sim_cell: SimCell) -> None:
    driver = ModbusDriver("fixture", quick_device(sim_cell, "fixture"), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        async with sim_cell.faults.malformed_reply("fixture", "width_sp", "function_code"):
            with pytest.raises(CommError, match=r"fixture\.width_sp: malformed reply to the write"):
                await driver.write("width_sp", 401.0)


# --------------------------------------------------------------------------------------- poll groups


async def test_each_poll_group_is_polled_at_its_own_rate(server: FakeModbus) -> None:
    device = gauge_device(
        server.port,
        {
            "fast": {"table": "input_register", "address": 0, "datatype": "uint16"},
            "slow": {"table": "input_register", "address": 1, "datatype": "uint16", "poll_group": "slow"},
        },
        poll_groups={"slow": {"interval_s": 60}},
    )
    driver = ModbusDriver("gauge", device, CLOCK)
    assert [(b.start, b.count) for b in driver.group_blocks(None)] == [(0, 1)]
    assert [(b.start, b.count) for b in driver.group_blocks("slow")] == [(1, 1)]
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await server.wait_requests(lambda rs: requests_at(4, 0)(rs) >= 20, 5)
        readings = driver.last("fast"), driver.last("slow")
    assert requests_at(4, 1)(server.requests) == 1
    assert [(r.quality, r.value) for r in readings] == [(Quality.GOOD, 11), (Quality.GOOD, 12)]


async def test_a_slow_groups_value_is_refreshed_at_its_rate(server: FakeModbus) -> None:
    device = gauge_device(
        server.port,
        {
            "fast": {"table": "input_register", "address": 0, "datatype": "uint16"},
            "slow": {"table": "input_register", "address": 4, "datatype": "uint16", "poll_group": "slow"},
        },
        poll_groups={"slow": {"interval_s": 0.05}},
    )
    driver = ModbusDriver("gauge", device, CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        server.unit(1).input[4] = 4444
        reading = await wait_reading(driver, "slow", lambda r: r.value == 4444, 2)
    assert reading.quality is Quality.GOOD


# ------------------------------------------------------------------------------------ write-then-verify


async def test_a_verified_write_that_the_device_keeps_succeeds(sim_cell: SimCell) -> None:
    device = quick_device(sim_cell, "stapler", pitch_mm={"verify": True})
    driver = ModbusDriver("stapler", device, CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        await driver.write("pitch_mm", 27.5)
        cached = driver.last("pitch_mm")
    assert sim_cell.value("stapler.pitch_mm") == 27.5
    assert (cached.quality, cached.value) == (Quality.GOOD, 27.5)


async def test_a_write_the_device_ignores_fails_verification_naming_both_values(sim_cell: SimCell) -> None:
    device = quick_device(sim_cell, "stapler", pitch_mm={"verify": True})
    driver = ModbusDriver("stapler", device, CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        async with sim_cell.faults.force_value("stapler", "pitch_mm", 12.0):
            with pytest.raises(WriteVerifyError) as caught:
                await driver.write("pitch_mm", 25.0)
    error = caught.value
    assert (error.device, error.tag, error.written, error.read_back) == ("stapler", "pitch_mm", 25.0, 12.0)
    assert str(error) == "stapler.pitch_mm: wrote 25.0, read back 12.0"


async def test_a_coil_the_device_ignores_fails_verification(sim_cell: SimCell) -> None:
    device = quick_device(sim_cell, "gauge", trigger={"verify": True})
    driver = ModbusDriver("gauge", device, CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        async with sim_cell.faults.force_value("gauge", "trigger", False):
            with pytest.raises(WriteVerifyError, match="wrote True, read back False"):
                await driver.write("trigger", True)


async def test_a_write_without_verify_is_not_compared(sim_cell: SimCell) -> None:
    driver = ModbusDriver("stapler", quick_device(sim_cell, "stapler"), CLOCK)
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        async with sim_cell.faults.force_value("stapler", "pitch_mm", 12.0):
            await driver.write("pitch_mm", 25.0)
            reading = driver.last("pitch_mm")
    assert reading.value == 12.0  # the read-back still feeds the cache


async def test_a_bit_in_a_register_is_verified_by_its_bit_alone() -> None:
    fake = FakeModbus()
    fake.unit(1).holding[5] = 0b1000_0000_0000_0000
    await fake.start()
    try:
        lamp = {"table": "holding_register", "address": 5, "bit": 3, "datatype": "bool", "access": "rw"}
        device = gauge_device(fake.port, {"lamp": {**lamp, "verify": True}})
        driver = ModbusDriver("gauge", device, CLOCK)
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            await driver.write("lamp", True)
        assert fake.unit(1).holding[5] == 0b1000_0000_0000_1000
    finally:
        await fake.stop()


# ------------------------------------------------------------------- one unit never stalls another


async def assert_keeps_polling(sim_cell: SimCell, driver: ModbusDriver) -> None:
    """Each of three new fixture values reaches the driver within a second."""
    for value in (101.0, 202.0, 303.0):
        async with sim_cell.faults.force_value("fixture", "depth_act", value):
            await wait_reading(driver, "depth_act", lambda r, v=value: r.value == v, 1)


async def test_a_unit_answering_gateway_errors_never_stalls_another_unit_at_its_endpoint(
    sim_cell: SimCell,
) -> None:
    stapler = ModbusDriver("stapler", quick_device(sim_cell, "stapler"), CLOCK, backoff=fast_backoff())
    fixture = ModbusDriver("fixture", quick_device(sim_cell, "fixture"), CLOCK)
    assert sim_cell.server_of("stapler") is sim_cell.server_of("fixture")
    async with running(stapler, fixture):
        await wait_health(stapler, LinkState.UP, 5)
        await wait_health(fixture, LinkState.UP, 5)
        async with sim_cell.faults.modbus_exception("stapler", None, 11):
            health = await wait_health(stapler, LinkState.DOWN, 3)
            await assert_keeps_polling(sim_cell, fixture)
            assert all(stapler.last(tag).quality is Quality.BAD for tag in ("busy", "staples"))
        await wait_health(stapler, LinkState.UP, 5)
    assert "gateway target failed to respond" in health.error
    assert fixture.health.state is LinkState.UP


async def test_a_silent_unit_never_stalls_another_unit_at_its_endpoint(sim_cell: SimCell) -> None:
    stapler = ModbusDriver("stapler", quick_device(sim_cell, "stapler"), CLOCK, backoff=fast_backoff())
    fixture = ModbusDriver("fixture", quick_device(sim_cell, "fixture"), CLOCK)
    async with running(stapler, fixture):
        await wait_health(stapler, LinkState.UP, 5)
        await wait_health(fixture, LinkState.UP, 5)
        async with sim_cell.faults.blackhole("stapler", unit=True):
            health = await wait_health(stapler, LinkState.DOWN, 3)
            await assert_keeps_polling(sim_cell, fixture)
        await wait_health(stapler, LinkState.UP, 5)
    assert "no reply" in health.error
    assert fixture.health.state is LinkState.UP


async def test_an_endpoint_answering_gateway_errors_never_stalls_another_endpoint(sim_cell: SimCell) -> None:
    gauge = ModbusDriver("gauge", quick_device(sim_cell, "gauge"), CLOCK, backoff=fast_backoff())
    fixture = ModbusDriver("fixture", quick_device(sim_cell, "fixture"), CLOCK)
    assert sim_cell.server_of("gauge") is not sim_cell.server_of("fixture")
    async with running(gauge, fixture):
        await wait_health(gauge, LinkState.UP, 5)
        await wait_health(fixture, LinkState.UP, 5)
        async with sim_cell.faults.modbus_exception("gauge", None, 10):
            health = await wait_health(gauge, LinkState.DOWN, 3)
            await assert_keeps_polling(sim_cell, fixture)
        await wait_health(gauge, LinkState.UP, 5)
    assert "gateway path unavailable" in health.error


async def test_a_unit_the_sim_endpoint_does_not_serve_answers_like_a_gateway(sim_cell: SimCell) -> None:
    device = quick_device(sim_cell, "fixture").model_copy(update={"unit_id": 9})
    driver = ModbusDriver("fixture", device, CLOCK)
    async with running(driver):
        health = await wait_health(driver, LinkState.DOWN, 3, lambda h: "exception code" in h.error)
    assert "exception code 11 (gateway target failed to respond)" in health.error
    assert isinstance(driver.last_failure, ModbusGatewayTargetFailed)


async def test_the_last_failure_is_forgotten_once_the_link_is_up(server: FakeModbus) -> None:
    driver = ModbusDriver("gauge", two_words(server.port, second=1), CLOCK, backoff=fast_backoff())
    server.exceptions[(1, 4, 0)] = 10
    async with running(driver):
        await wait_health(driver, LinkState.DOWN, 3, lambda h: "exception code 10" in h.error)
        failure = driver.last_failure
        del server.exceptions[(1, 4, 0)]
        await wait_health(driver, LinkState.UP, 5)
    assert isinstance(failure, ModbusGatewayPathUnavailable)
    assert driver.last_failure is None


async def test_a_tag_read_on_demand_brings_its_benched_block_back_into_the_polls(server: FakeModbus) -> None:
    server.exceptions[(1, 4, 0)] = 1
    driver = ModbusDriver("gauge", two_words(server.port, second=1), CLOCK, mismatch_retry_s=(60.0, 60.0))
    async with running(driver):
        await wait_health(driver, LinkState.UP, 5)
        assert driver.last("second").reason.startswith("configuration mismatch")
        del server.exceptions[(1, 4, 0)]
        server.unit(1).input[1] = 1212
        on_demand = await driver.read("first")
        polled = await wait_reading(driver, "second", lambda r: r.value == 1212, 2)
    assert (on_demand.quality, on_demand.value) == (Quality.GOOD, 11)
    assert polled.quality is Quality.GOOD
