"""The job scheduler: keeps priorities, never worse than FIFO or EDD, its costs from the planner."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.engine.planner import plan_changeover, target_setup
from cellctl.engine.scheduler import (
    SchedJob,
    changeover_costs,
    edd_order,
    evaluate,
    fifo_order,
    propose,
)
from cellctl.errors import JobError, PlanError
from cellctl.schema.load import load_config

CONFIG = Path(__file__).resolve().parents[2] / "config"
VARIANTS = ("a", "b", "c", "d")
TOL = 1e-6

# An asymmetric cost matrix with a triangle-inequality violation, so greedy grouping alone is not optimal.
_MATRIX = {
    ("a", "b"): 5.0,
    ("b", "a"): 3.0,
    ("a", "c"): 9.0,
    ("c", "a"): 9.0,
    ("a", "d"): 1.0,
    ("d", "a"): 2.0,
    ("b", "c"): 2.0,
    ("c", "b"): 7.0,
    ("b", "d"): 6.0,
    ("d", "b"): 1.0,
    ("c", "d"): 4.0,
    ("d", "c"): 4.0,
}


def matrix_cost(from_variant: str | None, to_variant: str) -> float:
    if from_variant is None:
        return 10.0
    return 0.0 if from_variant == to_variant else _MATRIX[(from_variant, to_variant)]


@st.composite
def books(draw: st.DrawFn, *, due: bool, priorities: bool = True) -> list[SchedJob]:
    n = draw(st.integers(min_value=0, max_value=12))
    jobs = []
    for k in range(n):
        jobs.append(
            SchedJob(
                job_id=f"j{k}",
                variant=draw(st.sampled_from(VARIANTS)),
                quantity=1,
                expected_s=draw(st.floats(min_value=0.5, max_value=30.0)),
                priority=draw(st.integers(0, 2)) if priorities else 0,
                due_s=draw(st.one_of(st.none(), st.floats(0.0, 200.0))) if due else None,
                seq=k,
            )
        )
    return jobs


currents = st.one_of(st.none(), st.sampled_from(VARIANTS))


@given(books(due=True), currents)
@settings(max_examples=150, deadline=None)
def test_proposal_is_a_permutation_of_the_jobs(jobs: list[SchedJob], current: str | None) -> None:
    schedule = propose(current, jobs, matrix_cost)
    assert sorted(schedule.order) == sorted(j.job_id for j in jobs)


@given(books(due=True), currents)
@settings(max_examples=150, deadline=None)
def test_a_higher_priority_job_never_runs_after_a_lower_one(
    jobs: list[SchedJob], current: str | None
) -> None:
    schedule = propose(current, jobs, matrix_cost)
    by_id = {j.job_id: j for j in jobs}
    priorities = [by_id[i].priority for i in schedule.order]
    assert priorities == sorted(priorities, reverse=True)
    assert schedule.priority_inversions == 0


@given(books(due=False), currents)
@settings(max_examples=150, deadline=None)
def test_without_due_dates_changeover_is_at_most_fifos(jobs: list[SchedJob], current: str | None) -> None:
    schedule = propose(current, jobs, matrix_cost)
    fifo = evaluate(fifo_order(jobs), current, jobs, matrix_cost)
    assert schedule.changeover_s <= fifo.changeover_s + TOL


@given(books(due=True), currents)
@settings(max_examples=150, deadline=None)
def test_with_due_dates_lateness_is_at_most_the_earliest_due_date_orders(
    jobs: list[SchedJob], current: str | None
) -> None:
    schedule = propose(current, jobs, matrix_cost)
    edd = evaluate(edd_order(jobs), current, jobs, matrix_cost)
    fifo = evaluate(fifo_order(jobs), current, jobs, matrix_cost)
    assert schedule.lateness_s <= edd.lateness_s + TOL
    assert schedule.lateness_s <= fifo.lateness_s + TOL


@given(books(due=True), currents, st.floats(0.0, 1000.0))
@settings(max_examples=100, deadline=None)
def test_evaluating_the_proposed_order_reproduces_its_figures(
    jobs: list[SchedJob], current: str | None, now: float
) -> None:
    schedule = propose(current, jobs, matrix_cost, now=now)
    again = evaluate(schedule.order, current, jobs, matrix_cost, now=now)
    assert again == schedule


def test_jobs_of_one_variant_are_grouped_when_nothing_is_due() -> None:
    # Given alternating orders of two variants, all of one priority and without due dates
    jobs = [SchedJob(f"j{k}", "ab"[k % 2], 1, 1.0, seq=k) for k in range(10)]
    # When the scheduler proposes an order starting from variant a
    schedule = propose("a", jobs, matrix_cost)
    # Then it changes over once instead of nine times
    assert schedule.changeovers == 1
    assert schedule.changeover_s == pytest.approx(5.0)
    assert [j.variant for j in schedule.jobs] == ["a"] * 5 + ["b"] * 5


def test_a_due_date_wins_over_grouping() -> None:
    # Given the cell on a, two a-jobs, and a b-job due before the a-jobs could both finish
    jobs = [
        SchedJob("a1", "a", 1, 10.0, seq=0),
        SchedJob("a2", "a", 1, 10.0, seq=1),
        SchedJob("b1", "b", 1, 10.0, due_s=16.0, seq=2),
    ]
    # When the scheduler proposes an order
    schedule = propose("a", jobs, matrix_cost)
    # Then the due job runs first, although that costs a changeover more
    assert schedule.order[0] == "b1"
    assert schedule.lateness_s == 0.0
    assert schedule.changeovers == 2


def test_evaluate_predicts_start_finish_and_lateness_per_job() -> None:
    # Given two jobs and a known order
    jobs = [SchedJob("x", "b", 1, 10.0, due_s=12.0, seq=0), SchedJob("y", "d", 1, 5.0, due_s=100.0, seq=1)]
    # When the order is evaluated from variant a at t=100
    schedule = evaluate(["x", "y"], "a", jobs, matrix_cost, now=100.0)
    # Then each job starts after its changeover and its lateness is against its due time
    x, y = schedule.jobs
    assert (x.changeover_s, x.start_s, x.finish_s, x.late_s) == (5.0, 105.0, 115.0, 103.0)
    assert (y.changeover_s, y.start_s, y.finish_s, y.late_s) == (6.0, 121.0, 126.0, 26.0)
    assert schedule.changeover_s == 11.0
    assert schedule.lateness_s == 129.0
    assert schedule.changeovers == 2


def test_evaluate_counts_an_operators_priority_inversion() -> None:
    jobs = [SchedJob("hi", "a", 1, 1.0, priority=2, seq=0), SchedJob("lo", "a", 1, 1.0, priority=0, seq=1)]
    assert evaluate(["lo", "hi"], "a", jobs, matrix_cost).priority_inversions == 1


def test_evaluate_refuses_an_order_that_is_not_a_permutation() -> None:
    jobs = [SchedJob("x", "a", 1, 1.0), SchedJob("y", "b", 1, 1.0, seq=1)]
    with pytest.raises(JobError, match="not a permutation"):
        evaluate(["x", "x"], "a", jobs, matrix_cost)
    with pytest.raises(JobError, match="unknown"):
        evaluate(["x", "z"], "a", jobs, matrix_cost)


def test_duplicate_job_ids_are_refused() -> None:
    jobs = [SchedJob("x", "a", 1, 1.0), SchedJob("x", "b", 1, 1.0, seq=1)]
    with pytest.raises(JobError, match="twice"):
        propose("a", jobs, matrix_cost)


def test_empty_queue_gives_an_empty_schedule() -> None:
    schedule = propose("a", [], matrix_cost)
    assert schedule.order == ()
    assert schedule.changeover_s == 0.0


def test_expected_run_time_is_quantity_times_ideal_cycle() -> None:
    recipe = load_config(CONFIG).recipes["oslo"]
    job = SchedJob.from_recipe("j", recipe, 20, priority=1, due_s=50.0, seq=3)
    assert job.expected_s == pytest.approx(20 * recipe.ideal_cycle_s)
    assert (job.variant, job.priority, job.due_s, job.seq) == ("oslo", 1, 50.0, 3)


def test_example_costs_are_positive_between_variants_and_zero_for_the_same() -> None:
    # Given the example cell and its recipes
    config = load_config(CONFIG)
    cost = changeover_costs(config.recipes, config.cell)
    variants = sorted(config.recipes)
    # Then changing between different variants costs internal downtime, and staying costs nothing
    for a in variants:
        for b in variants:
            if a == b:
                assert cost(a, b) == 0.0
            else:
                assert cost(a, b) > 0.0
        # and from an unknown setup every variant needs a changeover
        assert cost(None, a) > 0.0


def test_costs_are_the_planners_internal_critical_path() -> None:
    config = load_config(CONFIG)
    cost = changeover_costs(config.recipes, config.cell)
    plan = plan_changeover(
        target_setup(config.recipes["bergen"], config.cell),
        config.recipes["tromso"],
        config.cell,
        from_variant="bergen",
    )
    assert cost("bergen", "tromso") == plan.critical_path(internal_only=True)[1]
    # internal only: the external robot program and setpoint steps do not count
    assert cost("bergen", "tromso") < plan.critical_path()[1]


def test_a_cost_to_an_unknown_variant_is_refused() -> None:
    config = load_config(CONFIG)
    cost = changeover_costs(config.recipes, config.cell)
    with pytest.raises(PlanError, match="unknown variant 'nope'"):
        cost("oslo", "nope")
