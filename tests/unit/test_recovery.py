"""Recovery from the journal: the interrupted changeover with each step's last outcome, and the unfinished
jobs with their counts, read from a real store file."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.core.events import (
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    JobEvent,
    JobStatus,
    PartProduced,
    StateChanged,
    StepEvent,
    StepStatus,
    Verdict,
)
from cellctl.engine.recovery import StepState, read_recovery
from cellctl.store import Store

STEPS = ("toolchanger:tool_change", "fixture:fixture_unclamp", "fixture:fixture_move", "stapler:setpoints")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "journal.db", synchronous="NORMAL")
    try:
        yield opened
    finally:
        await opened.close()


async def put(store: Store, *events: Event) -> None:
    for event in events:
        await store.append(event, [])


def state(to: str) -> StateChanged:
    return StateChanged(ts=time.time(), state=to, state_no=0, previous="?", command=None, by="op")


def job(job_id: str, status: JobStatus, *, order: str = "", produced: int = 0, priority: int = 0) -> JobEvent:
    return JobEvent(
        ts=time.time(),
        job=job_id,
        order_id=order or f"SO-{job_id}",
        variant="bergen",
        recipe_version=2,
        recipe_hash="h-bergen",
        quantity=5,
        status=status,
        produced=produced,
        good=produced,
        parameters={"staple_pitch": 9.5},
        by="mes" if status is JobStatus.QUEUED else "engine",
        priority=priority,
    )


def changeover(co: str, job_id: str, status: ChangeoverStatus, steps: tuple[str, ...] = STEPS) -> Event:
    return ChangeoverEvent(
        ts=time.time(),
        changeover=co,
        job=job_id,
        from_variant="oslo",
        to_variant="bergen",
        status=status,
        steps=steps,
    )


def step(co: str, job_id: str, step_id: str, status: StepStatus, detail: str = "") -> StepEvent:
    device, _, kind = step_id.partition(":")
    return StepEvent(
        ts=time.time(),
        changeover=co,
        job=job_id,
        step=step_id,
        step_kind=kind,
        device=device,
        status=status,
        detail=detail,
    )


def part(job_id: str, index: int, verdict: Verdict) -> PartProduced:
    return PartProduced(
        ts=time.time(),
        part=f"{job_id}-{index}",
        job=job_id,
        variant="bergen",
        index=index,
        verdict=verdict,
        measurements=(),
    )


async def test_an_orderly_stop_leaves_nothing_unclean(store: Store) -> None:
    await put(store, state("Execute"), job("J1", JobStatus.QUEUED), state("Stopping"), state("Stopped"))
    recovery = await read_recovery(store)
    assert not recovery.unclean
    assert recovery.changeover is None
    assert [j.job_id for j in recovery.jobs] == ["J1"]


async def test_an_empty_journal_has_nothing_to_recover(store: Store) -> None:
    recovery = await read_recovery(store)
    assert recovery.empty and recovery.last_state is None


async def test_a_killed_changeover_shows_each_steps_last_outcome(store: Store) -> None:
    """Given a changeover killed with one step done, one started, one failed earlier and one never started,
    then each gets its state and the stop is unclean."""
    await put(
        store,
        state("Execute"),
        job("J1", JobStatus.QUEUED),
        changeover("C1", "J1", ChangeoverStatus.STARTED),
        step("C1", "J1", STEPS[0], StepStatus.STARTED),
        step("C1", "J1", STEPS[1], StepStatus.STARTED),
        step("C1", "J1", STEPS[1], StepStatus.DONE),
        step("C1", "J1", STEPS[2], StepStatus.STARTED),
        step("C1", "J1", STEPS[2], StepStatus.FAILED, "device fault"),
    )
    recovery = await read_recovery(store)
    co = recovery.changeover
    assert recovery.unclean and recovery.last_state == "Execute"
    assert co is not None and (co.changeover_id, co.job_id, co.to_variant) == ("C1", "J1", "bergen")
    assert {s.id: s.state for s in co.steps} == {
        STEPS[0]: StepState.IN_DOUBT,
        STEPS[1]: StepState.DONE,
        STEPS[2]: StepState.FAILED,
        STEPS[3]: StepState.NOT_STARTED,
    }
    assert co.ids(StepState.IN_DOUBT) == (STEPS[0],)
    assert "1 in doubt (toolchanger:tool_change)" in recovery.describe()


async def test_a_step_waiting_for_the_operator_or_restarted_after_a_confirmation_stays_in_doubt(
    store: Store,
) -> None:
    """Given a resumed changeover (the same id started again) killed while one step waits for the operator and
    another, verified before, ran again: the waiting one is in doubt, the verified one done."""
    await put(
        store,
        job("J1", JobStatus.QUEUED),
        changeover("C1", "J1", ChangeoverStatus.STARTED),
        step("C1", "J1", STEPS[0], StepStatus.STARTED),
        step("C1", "J1", STEPS[2], StepStatus.STARTED),
        state("Stopped"),
        changeover("C1", "J1", ChangeoverStatus.STARTED, steps=(STEPS[0], STEPS[3])),
        step("C1", "J1", STEPS[2], StepStatus.DONE, "verified by read-back after restart"),
        step("C1", "J1", STEPS[0], StepStatus.WAITING, "check it"),
        state("Execute"),
    )
    co = (await read_recovery(store)).changeover
    assert co is not None
    assert {s.id: s.state for s in co.steps} == {
        STEPS[0]: StepState.IN_DOUBT,
        STEPS[3]: StepState.NOT_STARTED,
        STEPS[2]: StepState.DONE,
    }


async def test_a_changeover_that_ended_with_every_outcome_known_is_not_interrupted(store: Store) -> None:
    await put(
        store,
        job("J1", JobStatus.QUEUED),
        changeover("C1", "J1", ChangeoverStatus.STARTED),
        step("C1", "J1", STEPS[0], StepStatus.STARTED),
        step("C1", "J1", STEPS[0], StepStatus.FAILED, "cancelled"),
        changeover("C1", "J1", ChangeoverStatus.FAILED),
        state("Held"),
    )
    recovery = await read_recovery(store)
    assert recovery.changeover is None
    assert recovery.unclean, "killed while Held is still an unclean stop"


async def test_a_resumed_changeover_held_while_a_step_in_doubt_waited_keeps_it_in_doubt(store: Store) -> None:
    """Given a resumed changeover held while a step in doubt waited for the operator (no outcome recorded),
    closed FAILED, then a kill: the step is still in doubt, so it is still gated after the restart."""
    await put(
        store,
        job("J1", JobStatus.QUEUED),
        changeover("C1", "J1", ChangeoverStatus.STARTED),
        step("C1", "J1", STEPS[0], StepStatus.STARTED),
        state("Stopped"),
        changeover("C1", "J1", ChangeoverStatus.STARTED),
        step("C1", "J1", STEPS[0], StepStatus.WAITING, "check it"),
        changeover("C1", "J1", ChangeoverStatus.FAILED),
        state("Held"),
    )
    co = (await read_recovery(store)).changeover
    assert co is not None and co.ids(StepState.IN_DOUBT) == (STEPS[0],)


async def test_a_failed_changeover_of_a_finished_job_is_not_interrupted(store: Store) -> None:
    await put(
        store,
        job("J1", JobStatus.QUEUED),
        changeover("C1", "J1", ChangeoverStatus.STARTED),
        step("C1", "J1", STEPS[0], StepStatus.WAITING),
        changeover("C1", "J1", ChangeoverStatus.FAILED),
        job("J1", JobStatus.CANCELLED),
        state("Stopped"),
    )
    recovery = await read_recovery(store)
    assert recovery.changeover is None and not recovery.unclean


async def test_unfinished_jobs_come_back_in_submit_order_with_their_parts_counted(store: Store) -> None:
    """Given a started job with two parts after its STARTED event, a queued job, a completed one and a
    cancelled one, then only the first two come back, with counts, priority and submitter."""
    await put(
        store,
        job("J1", JobStatus.QUEUED, priority=2),
        job("J2", JobStatus.QUEUED),
        job("J3", JobStatus.QUEUED),
        job("J4", JobStatus.QUEUED),
        job("J3", JobStatus.STARTED),
        job("J3", JobStatus.COMPLETED, produced=5),
        job("J4", JobStatus.CANCELLED),
        job("J1", JobStatus.STARTED, priority=2),
        part("J1", 1, Verdict.PASS),
        part("J1", 2, Verdict.FAIL),
        part("J3", 1, Verdict.PASS),
    )
    jobs = (await read_recovery(store)).jobs
    assert [(j.job_id, j.status) for j in jobs] == [("J1", JobStatus.STARTED), ("J2", JobStatus.QUEUED)]
    first = jobs[0]
    assert (first.produced, first.good, first.bad, first.invalid) == (2, 1, 1, 0)
    assert (first.priority, first.submitted_by, first.parameters) == (2, "mes", {"staple_pitch": 9.5})
    assert first.started_at is not None and first.seq < jobs[1].seq


async def test_finished_jobs_of_a_long_history_are_not_restored(store: Store) -> None:
    """Given many finished jobs before the interrupted one, only the unfinished one comes back (the read cost
    on a long journal is measured by bench/recovery.py)."""
    for n in range(200):
        await put(store, job(f"old{n}", JobStatus.QUEUED), job(f"old{n}", JobStatus.COMPLETED, produced=1))
    await put(store, job("J1", JobStatus.QUEUED), changeover("C1", "J1", ChangeoverStatus.STARTED))
    recovery = await read_recovery(store)
    assert [j.job_id for j in recovery.jobs] == ["J1"]
    assert recovery.changeover is not None and recovery.changeover.job_id == "J1"
