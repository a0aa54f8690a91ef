"""The Modbus poll schedule: groups at their own rates, fast before slow, refused blocks benched, splits.

Time is a ManualClock that a small loop moves by one request time per block read, so every figure here is
exact and no test waits.
"""

from __future__ import annotations

import math
import random

import pytest

from cellctl.core.clock import ManualClock
from cellctl.drivers.modbus_codec import ReadBlock, TagCodec
from cellctl.drivers.modbus_poll import PollGroupPlan, PollSchedule
from cellctl.schema.cell import Datatype, ModbusTable

HR = ModbusTable.HOLDING_REGISTER
REQUEST_S = 1 / 128
"""Simulated time one block read takes (a power of two, so sums stay exact)."""


def tag(name: str, address: int, datatype: Datatype = Datatype.UINT16, bit: int | None = None) -> TagCodec:
    return TagCodec(name=name, table=HR, address=address, datatype=datatype, bit=bit)


def block(*tags: TagCodec) -> ReadBlock:
    start = min(t.address for t in tags)
    return ReadBlock(HR, start, max(t.end for t in tags) - start, tags)


def single(name: str, address: int) -> ReadBlock:
    return block(tag(name, address))


def run(schedule: PollSchedule, clock: ManualClock, until: float) -> list[tuple[float, ReadBlock]]:
    """Read what the schedule hands out until ``until``; each read takes REQUEST_S. Returns (time, block)."""
    reads: list[tuple[float, ReadBlock]] = []
    for _ in range(100_000):
        now = clock.monotonic()
        if now >= until:
            return reads
        picked = schedule.next_block(now)
        if picked is None:
            clock.advance(min(schedule.next_due(), until) - now)
        else:
            reads.append((now, picked))
            clock.advance(REQUEST_S)
    raise AssertionError("the simulation did not reach its end")


def test_each_group_is_polled_at_its_own_interval() -> None:
    fast, slow = single("fast", 0), single("slow", 10)
    schedule = PollSchedule([PollGroupPlan(None, 0.125, (fast,)), PollGroupPlan("slow", 1.0, (slow,))])
    clock = ManualClock()
    schedule.restart(clock.monotonic())

    reads = run(schedule, clock, until=3.0)

    assert sum(1 for _, b in reads if b is fast) == 24
    assert sum(1 for _, b in reads if b is slow) == 3
    assert (schedule.cycles(None), schedule.cycles("slow")) == (24, 3)


def test_a_slow_group_with_many_blocks_delays_a_fast_one_by_at_most_one_request() -> None:
    fast = single("fast", 0)
    slow_blocks = tuple(single(f"s{i}", 100 + 20 * i) for i in range(40))
    interval = 1 / 16
    schedule = PollSchedule(
        [PollGroupPlan("slow", 10.0, slow_blocks), PollGroupPlan("fast", interval, (fast,))]
    )
    clock = ManualClock()
    schedule.restart(clock.monotonic())

    reads = run(schedule, clock, until=1.0)

    fast_times = [t for t, b in reads if b is fast]
    assert len(fast_times) == 16
    assert all(0 <= t - k * interval <= REQUEST_S for k, t in enumerate(fast_times))
    assert [b for _, b in reads if b is not fast] == list(slow_blocks)  # the slow group still completes


def test_a_group_that_falls_behind_starts_its_next_cycle_at_once_without_a_burst() -> None:
    blocks = tuple(single(f"b{i}", 20 * i) for i in range(3))
    schedule = PollSchedule([PollGroupPlan(None, REQUEST_S, blocks)])  # a cycle takes 3 intervals
    clock = ManualClock()
    schedule.restart(clock.monotonic())

    reads = run(schedule, clock, until=30 * REQUEST_S)

    assert len(reads) == 30  # back to back, never more than the link can carry
    assert schedule.cycles(None) == 10


def test_a_benched_block_is_left_out_until_its_retry_time() -> None:
    good, refused = single("good", 0), single("refused", 50)
    schedule = PollSchedule(
        [PollGroupPlan(None, 0.25, (good, refused))],
        mismatch_retry_start_s=2.0,
        mismatch_retry_cap_s=8.0,
        rng=random.Random(7),
    )
    clock = ManualClock()
    schedule.restart(clock.monotonic())
    assert schedule.next_block(0.0) is good
    assert schedule.next_block(0.0) is refused

    delay = schedule.bench(refused, 0.0)
    reads = run(schedule, clock, until=delay + 0.5)

    assert 1.0 <= delay <= 2.0  # start 2 s, jittered into [1/2, 1]
    refused_at = [t for t, b in reads if b is refused]
    assert refused_at and min(refused_at) >= delay
    assert min(refused_at) < delay + 0.25 + REQUEST_S  # in the first cycle after the retry time


def test_the_bench_backs_off_and_an_accepted_block_is_read_every_cycle_again() -> None:
    refused = single("refused", 0)
    schedule = PollSchedule(
        [PollGroupPlan(None, 0.25, (refused,))],
        mismatch_retry_start_s=2.0,
        mismatch_retry_cap_s=8.0,
        rng=random.Random(1),
    )
    delays = [schedule.bench(refused, 0.0) for _ in range(5)]
    assert 1.0 <= delays[0] <= 2.0 and 2.0 <= delays[1] <= 4.0
    assert all(4.0 <= d <= 8.0 for d in delays[3:])  # capped

    schedule.accepted(refused)

    assert not schedule.benched(refused, 0.0)


def test_a_restart_tries_benched_blocks_again_and_makes_every_group_due() -> None:
    refused = single("refused", 0)
    schedule = PollSchedule([PollGroupPlan(None, 60.0, (refused,))])
    schedule.restart(0.0)
    assert schedule.next_block(0.0) is refused
    schedule.bench(refused, 0.0)

    schedule.restart(5.0)

    assert schedule.next_block(5.0) is refused


def test_split_reads_one_block_per_register_span_in_the_current_cycle() -> None:
    word, lamp, horn, level = (
        tag("word", 0),
        tag("lamp", 1, Datatype.BOOL, bit=3),
        tag("horn", 1, Datatype.BOOL, bit=5),
        tag("level", 4, Datatype.FLOAT32),
    )
    coalesced, other = block(word, lamp, horn, level), single("other", 40)
    schedule = PollSchedule([PollGroupPlan(None, 1.0, (coalesced, other))])
    schedule.restart(0.0)
    assert schedule.next_block(0.0) is coalesced

    parts = schedule.split(coalesced)

    assert [(p.start, p.count, [t.name for t in p.tags]) for p in parts] == [
        (0, 1, ["word"]),
        (1, 1, ["lamp", "horn"]),
        (4, 2, ["level"]),
    ]
    assert [schedule.next_block(0.0) for _ in range(4)] == [*parts, other]
    assert schedule.blocks == (*parts, other)


def test_a_block_of_one_register_span_is_not_split() -> None:
    lamp, horn = tag("lamp", 1, Datatype.BOOL, bit=3), tag("horn", 1, Datatype.BOOL, bit=5)
    one = block(lamp, horn)
    schedule = PollSchedule([PollGroupPlan(None, 1.0, (one,))])

    assert schedule.split(one) == (one,)
    assert schedule.blocks == (one,)


def test_next_due_is_now_while_a_cycle_has_blocks_left_and_never_without_blocks() -> None:
    schedule = PollSchedule([PollGroupPlan(None, 1.0, (single("a", 0), single("b", 50)))])
    schedule.restart(0.0)
    schedule.next_block(0.0)
    assert schedule.next_due() == -math.inf
    schedule.next_block(0.0)
    assert schedule.next_due() == 1.0
    assert PollSchedule([PollGroupPlan(None, 1.0, ())]).next_due() == math.inf


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        PollSchedule([PollGroupPlan("x", 0.0, ())])


def test_accepting_a_block_releases_every_benched_block_sharing_a_tag() -> None:
    first, second = tag("first", 0), tag("second", 1)
    coalesced, alone, other = block(first, second), block(first), single("other", 50)
    schedule = PollSchedule([PollGroupPlan(None, 1.0, (coalesced, other))])
    schedule.bench(coalesced, 0.0)
    schedule.bench(other, 0.0)

    schedule.accepted(alone)  # e.g. a read of 'first' on demand

    assert not schedule.benched(coalesced, 0.0)
    assert schedule.benched(other, 0.0)
