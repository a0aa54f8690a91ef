"""Orders and the job queue: validation naming what and where, defaults, idempotent submit, snapshots."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from cellctl.core.events import JobStatus
from cellctl.engine.jobs import JobQueue, OrderRequest, resolve_parameters
from cellctl.errors import JobError
from cellctl.schema.load import load_config
from cellctl.schema.recipe import Recipe

NOW = 1_800_000_000.0


@pytest.fixture
def recipes(config_dir: Path) -> dict[str, Recipe]:
    return load_config(config_dir).recipes


@pytest.fixture
def queue(recipes: dict[str, Recipe]) -> JobQueue:
    ids = itertools.count(1)
    return JobQueue(recipes, new_id=lambda: f"job{next(ids)}")


def order(order_id: str = "PO-1", variant: str = "oslo", quantity: int = 3, **params: float) -> OrderRequest:
    return OrderRequest(order_id=order_id, variant=variant, quantity=quantity, parameters=params)


def test_an_unknown_variant_is_refused_naming_it_and_the_known_ones(queue: JobQueue) -> None:
    with pytest.raises(JobError) as caught:
        queue.submit(order(variant="helsinki"), by="mes", now=NOW)
    message = str(caught.value)
    assert "'PO-1'" in message and "'helsinki'" in message
    assert "bergen, oslo, tromso" in message
    assert len(queue) == 0


def test_an_unknown_parameter_is_refused_naming_it_and_the_recipe(queue: JobQueue) -> None:
    with pytest.raises(JobError, match=r"parameters\.glue_mm: unknown parameter of recipe oslo v3"):
        queue.submit(order(glue_mm=2.0), by="mes", now=NOW)
    assert len(queue) == 0


def test_a_parameter_out_of_range_is_refused_naming_value_range_and_units(queue: JobQueue) -> None:
    with pytest.raises(JobError) as caught:
        queue.submit(order(staple_pitch=20.0), by="mes", now=NOW)
    assert "parameters.staple_pitch: 20 is outside [8, 16] mm of recipe oslo v3" in str(caught.value)
    assert len(queue) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_parameter_that_is_not_finite_is_refused(queue: JobQueue, bad: float) -> None:
    with pytest.raises(JobError, match=r"parameters\.staple_pitch: .* is not a finite number"):
        queue.submit(order(staple_pitch=bad), by="mes", now=NOW)
    assert len(queue) == 0


def test_a_boolean_is_not_a_parameter_value(recipes: dict[str, Recipe]) -> None:
    request = OrderRequest("PO-1", "oslo", 1, parameters={"staple_pitch": True})
    with pytest.raises(JobError, match="not a finite number"):
        resolve_parameters(request, recipes["oslo"])


@pytest.mark.parametrize("quantity", [0, -1, 1_000_001])
def test_a_quantity_out_of_range_is_refused(queue: JobQueue, quantity: int) -> None:
    with pytest.raises(JobError, match=r"quantity: .* must be a whole number from 1"):
        queue.submit(order(quantity=quantity), by="mes", now=NOW)


@pytest.mark.parametrize("order_id", ["", " PO-1", "PO\n1", "x" * 129])
def test_a_bad_order_id_is_refused(queue: JobQueue, order_id: str) -> None:
    with pytest.raises(JobError, match="order_id"):
        queue.submit(order(order_id=order_id), by="mes", now=NOW)


def test_every_problem_of_an_order_is_named_at_once(queue: JobQueue) -> None:
    with pytest.raises(JobError) as caught:
        queue.submit(order(staple_pitch=99.0, glue=1.0), by="mes", now=NOW)
    assert "parameters.staple_pitch" in str(caught.value)
    assert "parameters.glue" in str(caught.value)


def test_every_problem_of_the_request_itself_is_named_at_once(queue: JobQueue) -> None:
    with pytest.raises(JobError) as caught:
        queue.submit(order(variant="helsinki", quantity=0), by="mes", now=NOW)
    assert "quantity" in str(caught.value)
    assert "variant" in str(caught.value)


def test_parameters_left_out_take_the_recipe_defaults(queue: JobQueue) -> None:
    job, _ = queue.submit(order(), by="mes", now=NOW)
    assert job.parameters == {"staple_pitch": 12.0}


def test_a_given_parameter_overrides_the_default(queue: JobQueue) -> None:
    job, _ = queue.submit(order(staple_pitch=9.5), by="mes", now=NOW)
    assert job.parameters == {"staple_pitch": 9.5}
    assert job.view().parameters == {"staple_pitch": 9.5}


def test_the_same_order_twice_is_the_same_job(queue: JobQueue) -> None:
    first, created = queue.submit(order(staple_pitch=9.5), by="mes", now=NOW)
    again, created_again = queue.submit(order(staple_pitch=9.5), by="mes", now=NOW + 5)
    assert created and not created_again
    assert again is first
    assert len(queue) == 1


def test_the_same_order_id_with_other_content_is_refused(queue: JobQueue) -> None:
    first, _ = queue.submit(order(quantity=3), by="mes", now=NOW)
    with pytest.raises(JobError, match=f"already accepted as job {first.id} with different content"):
        queue.submit(order(quantity=4), by="mes", now=NOW)
    assert len(queue) == 1
    assert queue.get(first.id).order.quantity == 3


def test_a_job_keeps_the_recipe_snapshot_taken_at_submit(queue: JobQueue, recipes: dict[str, Recipe]) -> None:
    original = recipes["oslo"]
    job, _ = queue.submit(order(), by="mes", now=NOW)
    edited = original.model_copy(update={"version": 4, "ideal_cycle_s": 3.0})
    queue.set_recipes({**recipes, "oslo": edited})
    later, _ = queue.submit(order(order_id="PO-2"), by="mes", now=NOW)

    assert (job.recipe.version, job.recipe_hash) == (3, original.snapshot_hash())
    assert job.recipe is original
    assert (later.recipe.version, later.recipe_hash) == (4, edited.snapshot_hash())
    assert later.recipe_hash != job.recipe_hash
    assert job.event(NOW).recipe_hash == original.snapshot_hash()


def test_jobs_run_by_priority_then_in_submit_order(queue: JobQueue) -> None:
    a, _ = queue.submit(order("A"), by="mes", now=NOW)
    b, _ = queue.submit(OrderRequest("B", "bergen", 1, priority=5), by="mes", now=NOW)
    c, _ = queue.submit(order("C"), by="mes", now=NOW)
    d, _ = queue.submit(OrderRequest("D", "tromso", 1, priority=5), by="mes", now=NOW)
    assert [j.id for j in queue.queued] == [b.id, d.id, a.id, c.id]
    assert [queue.pop_next() for _ in range(5)] == [b, d, a, c, None]


def test_a_queued_job_can_be_cancelled_and_leaves_the_queue(queue: JobQueue) -> None:
    job, _ = queue.submit(order(), by="mes", now=NOW)
    cancelled = queue.cancel(job.id, reason="cancelled by op")
    assert cancelled.status is JobStatus.CANCELLED
    assert len(queue) == 0
    with pytest.raises(JobError, match="not queued"):
        queue.cancel(job.id, reason="again")


def test_an_unknown_job_is_a_job_error(queue: JobQueue) -> None:
    with pytest.raises(JobError, match="no job 'nope'"):
        queue.get("nope")


def test_a_withdrawn_job_is_forgotten_so_the_order_can_be_sent_again(queue: JobQueue) -> None:
    job, _ = queue.submit(order(), by="mes", now=NOW)
    queue.withdraw(job)
    assert len(queue) == 0
    again, created = queue.submit(order(quantity=7), by="mes", now=NOW)
    assert created and again.id != job.id
