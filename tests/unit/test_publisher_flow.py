"""The publisher's flow control in counters and its wire-order flag, without a broker."""

from __future__ import annotations

import asyncio

from cellctl.telemetry.publisher import _Flow, _WireOrder

WAIT_S = 5.0


def test_a_row_needs_a_wire_slot_a_backlog_slot_if_backlog_and_room_among_the_unsettled() -> None:
    flow = _Flow(wire=2, replay=1, settle_limit=3, mark=10)  # ids up to 10 are backlog
    flow.take(backlog=True)  # row 5
    assert flow.blocked(backlog=True) and not flow.blocked(backlog=False)  # backlog's share is taken
    flow.take(backlog=False)  # row 11
    assert flow.blocked(backlog=False)  # the wire is full

    flow.on_acked(5)
    assert (flow.wire, flow.replay, flow.acked) == (1, 1, [5]) and flow.acks_ready.is_set()
    flow.on_acked(11)
    assert (flow.wire, flow.replay, flow.acked) == (2, 1, [5, 11])  # a live row frees no backlog slot
    flow.take(backlog=False)
    # Two acknowledged rows wait for their delete and one is on the wire: no room among the unsettled.
    assert flow.unsettled == 3 and flow.blocked(backlog=False)
    flow.freed.clear()
    flow.settled(2)
    assert flow.unsettled == 1 and not flow.blocked(backlog=False) and flow.freed.is_set()


async def test_the_wire_taken_in_the_step_it_is_freed_goes_before_a_waiter_that_has_not_run_yet() -> None:
    wire = _WireOrder()
    owners: list[str] = []

    async def births() -> None:
        async with wire.held():
            owners.append("births")

    await wire.take()  # a row's messages going out
    waiter = asyncio.create_task(births())
    await asyncio.sleep(0)  # births waits for the wire
    wire.give_back()
    # The pump, in the same step: it sees the wire free and takes it (its row's numbers come first).
    assert not wire.busy
    wire.busy = True
    owners.append("pump")
    await asyncio.sleep(0)  # births wakes, finds the wire taken, and waits again
    assert owners == ["pump"] and not waiter.done()
    wire.give_back()
    async with asyncio.timeout(WAIT_S):
        await waiter
    assert owners == ["pump", "births"] and not wire.busy
