"""The Modbus simulators' request faults, seen through a raw pymodbus client (not cellctl's driver): malformed
replies, a unit held silent or answering an exception while the others at its endpoint answer, absent units
answered as a gateway does, and the console commands for them."""

from __future__ import annotations

import pytest
from pymodbus.exceptions import ModbusIOException

from device_sims.console import FaultConsole
from device_sims.harness import SimCell
from device_sims.modbus_tooling import spoil_reply
from tests.integration.test_sims import mb_client, read_bits, read_inputs, unit

# A reply to "read 2 holding registers" from unit 2, transaction 7: values 0x0102, 0x0304.
REPLY = bytes.fromhex("0007 0000 0007 02 03 04 0102 0304")


def test_spoiled_frames_differ_from_the_reply_in_exactly_the_named_way() -> None:
    assert spoil_reply(REPLY, "byte_count") == bytes.fromhex("0007 0000 0007 02 03 02 0102 0304")
    assert spoil_reply(REPLY, "short") == bytes.fromhex("0007 0000 0005 02 03 02 0102")
    assert spoil_reply(REPLY, "function_code") == bytes.fromhex("0007 0000 0007 02 04 04 0102 0304")
    assert spoil_reply(REPLY, "transaction_id") == bytes.fromhex("0008 0000 0007 02 03 04 0102 0304")
    assert spoil_reply(REPLY, "unit_id") == bytes.fromhex("0007 0000 0007 03 03 04 0102 0304")
    assert spoil_reply(REPLY, "truncated") == REPLY[: len(REPLY) // 2]


async def test_a_malformed_reply_fault_spoils_only_the_requests_touching_its_tag(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "fixture") as client:
        async with sim_cell.faults.malformed_reply("fixture", "width_act", "function_code"):
            spoiled = await client.read_input_registers(0, count=4, device_id=unit(sim_cell, "fixture"))
            assert await read_bits(client, sim_cell, "fixture")  # another table is answered as it is
        assert spoiled.function_code == 3  # a holding-register reply to an input-register read
        assert len(await read_inputs(client, sim_cell, "fixture", 0, 4)) == 4


async def test_a_short_reply_carries_one_register_fewer_than_asked(sim_cell: SimCell) -> None:
    fault = sim_cell.faults.malformed_reply("fixture", None, "short")
    async with mb_client(sim_cell, "fixture") as client, fault:
        reply = await client.read_input_registers(0, count=4, device_id=unit(sim_cell, "fixture"))
    assert len(reply.registers) == 3


async def test_a_reply_with_another_transaction_id_is_never_taken(sim_cell: SimCell) -> None:
    fault = sim_cell.faults.malformed_reply("gauge", "ready", "transaction_id")
    async with mb_client(sim_cell, "gauge", timeout=0.3) as client, fault:
        with pytest.raises(ModbusIOException):
            await client.read_discrete_inputs(0, count=1, device_id=unit(sim_cell, "gauge"))


async def test_a_unit_blackhole_holds_that_unit_while_the_others_at_its_endpoint_answer(
    sim_cell: SimCell,
) -> None:
    async with (
        mb_client(sim_cell, "stapler", timeout=0.3) as stapler,
        mb_client(sim_cell, "fixture") as fixture,
    ):
        async with sim_cell.faults.blackhole("stapler", unit=True):
            with pytest.raises(ModbusIOException):
                await read_bits(stapler, sim_cell, "stapler")
            assert len(await read_bits(fixture, sim_cell, "fixture")) == 2
        assert not sim_cell.faults.active
    async with mb_client(sim_cell, "stapler") as stapler:
        assert len(await read_bits(stapler, sim_cell, "stapler")) == 2


async def test_an_exception_on_every_request_of_one_unit(sim_cell: SimCell) -> None:
    fault = sim_cell.faults.modbus_exception("stapler", None, 11)
    async with mb_client(sim_cell, "stapler") as client, fault:
        bits = await client.read_discrete_inputs(0, count=2, device_id=unit(sim_cell, "stapler"))
        words = await client.read_holding_registers(0, count=4, device_id=unit(sim_cell, "stapler"))
        assert len(await read_bits(client, sim_cell, "fixture")) == 2
    assert (bits.exception_code, words.exception_code) == (11, 11)


async def test_a_unit_the_endpoint_does_not_serve_is_answered_with_exception_11(sim_cell: SimCell) -> None:
    async with mb_client(sim_cell, "fixture") as client:
        low = await client.read_coils(0, count=1, device_id=9)
        high = await client.read_holding_registers(4000, count=2, device_id=9)
    assert (low.exception_code, high.exception_code) == (11, 11)


async def test_console_commands_for_unit_faults_and_malformed_replies(sim_cell: SimCell) -> None:
    console = FaultConsole(sim_cell)
    assert await console.run("malformed fixture short width_sp") == "ok malformed_reply fixture.width_sp"
    assert await console.run("malformed gauge truncated") == "ok malformed_reply gauge.*"
    assert await console.run("exception stapler * 11") == "ok modbus_exception stapler.*"
    assert await console.run("blackhole stapler unit") == "ok blackhole_unit stapler"
    assert (await console.run("malformed gauge garbled")).startswith("error malformed: unknown malformation")
    assert (await console.run("blackhole stapler forever")).startswith("error blackhole: usage")
    assert await console.run("clear") == "ok cleared 4"
