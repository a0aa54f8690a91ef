"""The Engine's queue order: the scheduler's proposed order in the status, the operator's reorder, and
taking the proposal; production follows the queue's order."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cellctl.core.events import JobEvent, JobStatus
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.scheduler import SchedJob, changeover_costs, evaluate
from cellctl.errors import JobError
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell
from tests.unit.test_engine import FakeSink, T, reset_and_start, running

ALTERNATING = ("oslo", "bergen", "oslo", "bergen", "oslo")
ORDER_NO = itertools.count(1)


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


async def submit_all(engine: Engine, variants: Sequence[str], *, priority: int = 0) -> list[str]:
    ids = []
    for variant in variants:
        order = OrderRequest(f"PO-{next(ORDER_NO)}", variant, 1, priority=priority)
        job = await engine.submit(order, by="mes")
        ids.append(job.job_id)
    return ids


def switches(engine: Engine, order: Sequence[str]) -> int:
    variants = [engine.job(i).variant for i in order]
    return sum(1 for a, b in itertools.pairwise(variants) if a != b)


def queue_ids(engine: Engine) -> list[str]:
    return [j.job_id for j in engine.status().queue]


async def test_status_proposes_an_order_grouping_variants_with_less_changeover(config: LoadedConfig) -> None:
    # Given jobs queued alternating oslo and bergen
    engine = Engine(config, soft_cell(config.cell), FakeSink())
    ids = await submit_all(engine, ALTERNATING)

    # When the status is read
    proposed = engine.status().proposed_order

    # Then the proposal is a permutation of the queue grouping the variants, predicted to change over less
    assert proposed is not None
    assert sorted(proposed.job_ids) == sorted(ids)
    assert switches(engine, proposed.job_ids) < switches(engine, ids) == 4
    assert proposed.changeover_s < proposed.queue_changeover_s
    jobs = [SchedJob.from_recipe(i, config.recipes[engine.job(i).variant], 1) for i in ids]
    cost = changeover_costs(config.recipes, config.cell)
    assert proposed.queue_changeover_s == pytest.approx(evaluate(ids, None, jobs, cost).changeover_s)
    assert engine.status().to_dict()["proposed_order"]["job_ids"] == list(proposed.job_ids)


async def test_a_new_job_goes_in_by_priority_after_the_jobs_of_equal_priority(config: LoadedConfig) -> None:
    # Given jobs of priority 0, then one of priority 5, then another of priority 0: the queue is by priority,
    # then by submission
    engine = Engine(config, soft_cell(config.cell), FakeSink())
    low_a, low_b = await submit_all(engine, ("oslo", "bergen"))
    (high,) = await submit_all(engine, ("tromso",), priority=5)
    (low_c,) = await submit_all(engine, ("oslo",))

    assert queue_ids(engine) == [high, low_a, low_b, low_c]


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda ids: ids[:-1], id="missing"),
        pytest.param(lambda ids: [*ids, "nope"], id="unknown"),
        pytest.param(lambda ids: [*ids[:-1], ids[0]], id="repeated"),
    ],
)
async def test_a_reorder_that_is_not_a_permutation_is_refused_and_changes_nothing(
    config: LoadedConfig, mangle: Callable[[list[str]], list[str]]
) -> None:
    # Given a queue
    engine = Engine(config, soft_cell(config.cell), FakeSink())
    async with running(engine):
        ids = await submit_all(engine, ALTERNATING)
        wrong = mangle(list(reversed(ids)))

        # When the operator's order is not every queued job exactly once, then it is refused, naming why
        with pytest.raises(JobError, match="every queued job exactly once"):
            await engine.reorder(wrong, by="op")

    # And the queue is as it was
    assert queue_ids(engine) == ids


async def test_after_a_reorder_production_follows_the_new_order(config: LoadedConfig) -> None:
    # Given three queued jobs, reordered by the operator
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        first, second, third = await submit_all(engine, ("oslo", "bergen", "tromso"))
        status = await engine.reorder([third, first, second], by="op")
        assert [j.job_id for j in status.queue] == [third, first, second]

        # When the cell runs the queue
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)

    # Then the jobs started in the operator's order
    started = [e.job for e in sink.of(JobEvent) if e.status is JobStatus.STARTED]
    assert started == [third, first, second]


async def test_apply_proposal_takes_the_proposed_order(config: LoadedConfig) -> None:
    # Given alternating jobs and the scheduler's proposal
    engine = Engine(config, soft_cell(config.cell), FakeSink())
    async with running(engine):
        await submit_all(engine, ALTERNATING)
        proposed = engine.status().proposed_order
        assert proposed is not None

        # When the operator takes it
        status = await engine.apply_proposal(by="op")

    # Then the queue is in the proposed order, with the predicted changeover time of the proposal
    assert [j.job_id for j in status.queue] == list(proposed.job_ids)
    assert status.proposed_order is not None
    assert status.proposed_order.job_ids == proposed.job_ids
    assert status.proposed_order.queue_changeover_s == pytest.approx(proposed.changeover_s)
