"""Changeover plans as data: ready set, topological order, cycle detection and the critical path."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.errors import PlanError


def _step(sid: str, *after: str, expected_s: float = 1.0, external: bool = False) -> PlanStep:
    return PlanStep(
        id=sid,
        kind="probe",
        device=None,
        description=sid,
        after=after,
        expected_s=expected_s,
        external=external,
    )


def _plan(*steps: PlanStep) -> ChangeoverPlan:
    return ChangeoverPlan(from_variant="a", to_variant="b", steps=steps)


# ------------------------------------------------------------------------------------------------------------
# Random DAGs: edges only go from a lower to a higher node number, then the plan lists the nodes shuffled.


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 8) -> ChangeoverPlan:
    n = draw(st.integers(min_value=0, max_value=max_nodes))
    order = draw(st.permutations(range(n)))
    steps = []
    for node in order:
        preds = draw(st.sets(st.integers(0, node - 1), max_size=node)) if node else set()
        steps.append(
            PlanStep(
                id=f"s{node}",
                kind="probe",
                device=None,
                description=f"step {node}",
                after=tuple(f"s{p}" for p in sorted(preds)),
                expected_s=draw(st.integers(min_value=0, max_value=20)) / 4,
                external=draw(st.booleans()),
            )
        )
    return ChangeoverPlan(from_variant=None, to_variant="x", steps=tuple(steps))


def _paths(plan: ChangeoverPlan) -> Iterator[list[PlanStep]]:
    """Every path of the DAG (each a chain along 'after' edges), found by brute force."""
    successors = {s.id: [t for t in plan.steps if s.id in t.after] for s in plan.steps}

    def extend(path: list[PlanStep]) -> Iterator[list[PlanStep]]:
        yield path
        for nxt in successors[path[-1].id]:
            yield from extend([*path, nxt])

    for step in plan.steps:
        yield from extend([step])


def _weight(path: list[PlanStep], *, internal_only: bool) -> float:
    return sum(0.0 if internal_only and s.external else s.expected_s for s in path)


def _is_path(plan: ChangeoverPlan, chain: tuple[str, ...]) -> bool:
    return all(a in plan.step(b).after for a, b in itertools.pairwise(chain))


# ------------------------------------------------------------------------------------------------------------
# Construction and validation


def test_a_step_after_an_unknown_step_is_refused() -> None:
    with pytest.raises(PlanError, match="unknown step"):
        _plan(_step("a", "ghost"))


def test_duplicate_step_ids_are_refused() -> None:
    with pytest.raises(PlanError, match="duplicate step ids: a"):
        _plan(_step("a"), _step("a"))


def test_a_cycle_is_refused_and_named() -> None:
    with pytest.raises(PlanError, match="cycle") as caught:
        _plan(_step("free"), _step("a", "c"), _step("b", "a"), _step("c", "b"))
    assert all(name in str(caught.value) for name in ("a", "b", "c"))
    assert "free" not in str(caught.value)


def test_a_step_after_itself_is_a_cycle() -> None:
    with pytest.raises(PlanError, match="cycle"):
        _plan(_step("a", "a"))


@given(dags(), st.data())
def test_closing_any_path_into_a_loop_is_refused(plan: ChangeoverPlan, data: st.DataObject) -> None:
    # Given a path of the DAG, when its first step is made to wait for its last, then the plan is a cycle.
    paths = list(_paths(plan))
    if not paths:
        return
    path = data.draw(st.sampled_from(paths))
    head, tail = path[0], path[-1]
    steps = tuple(
        PlanStep(id=s.id, kind=s.kind, device=None, description="", after=(*s.after, tail.id))
        if s.id == head.id
        else s
        for s in plan.steps
    )
    with pytest.raises(PlanError, match="cycle"):
        ChangeoverPlan(from_variant=None, to_variant="x", steps=steps)


# ------------------------------------------------------------------------------------------------------------
# Order and ready set


def test_order_of_independent_steps_keeps_plan_order() -> None:
    plan = _plan(_step("c"), _step("a"), _step("b"))
    assert [s.id for s in plan.order()] == ["c", "a", "b"]


@given(dags())
def test_order_lists_every_step_once_after_its_predecessors(plan: ChangeoverPlan) -> None:
    order = [s.id for s in plan.order()]
    assert sorted(order) == sorted(s.id for s in plan.steps)
    position = {sid: i for i, sid in enumerate(order)}
    for step in plan.steps:
        assert all(position[a] < position[step.id] for a in step.after)


def test_ready_set_holds_steps_whose_predecessors_are_done() -> None:
    plan = _plan(_step("a"), _step("b"), _step("c", "a"), _step("d", "a", "b"))
    assert [s.id for s in plan.ready(done=[])] == ["a", "b"]
    assert [s.id for s in plan.ready(done=["a"])] == ["b", "c"]
    assert [s.id for s in plan.ready(done=["a"], started=["b"])] == ["c"]
    assert [s.id for s in plan.ready(done=["a", "b"], started=["c"])] == ["d"]
    assert plan.ready(done=["a", "b", "c", "d"]) == []


@given(dags())
def test_running_the_ready_set_to_exhaustion_runs_each_step_once_in_dependency_order(
    plan: ChangeoverPlan,
) -> None:
    # Given a DAG, when ready steps are started, then finished one at a time, every step runs once.
    done: list[str] = []
    started: list[str] = []
    for _round in range(len(plan.steps) + 1):
        for step in plan.ready(done, started):
            assert all(a in done for a in step.after)
            started.append(step.id)
        if len(started) == len(done):
            break
        done.append(started[len(done)])
    assert sorted(done) == sorted(s.id for s in plan.steps)
    assert len(set(started)) == len(started)


# ------------------------------------------------------------------------------------------------------------
# Critical path


def test_critical_path_of_the_example_shape() -> None:
    plan = _plan(
        _step("unclamp", expected_s=0.4),
        _step("tool", expected_s=4.0),
        _step("move", "unclamp", expected_s=2.0),
        _step("clamp", "move", expected_s=0.4),
        _step("program", "tool", expected_s=0.5, external=True),
    )
    assert plan.critical_path() == (("tool", "program"), 4.5)
    assert plan.critical_path(internal_only=True) == (("tool",), 4.0)
    assert plan.total_s == pytest.approx(7.3)
    assert plan.internal_s == pytest.approx(6.8)


def test_critical_path_of_an_empty_plan_is_zero() -> None:
    plan = _plan()
    assert plan.is_empty
    assert plan.critical_path() == ((), 0.0)


@given(dags(), st.booleans())
def test_critical_path_is_the_longest_path(plan: ChangeoverPlan, internal_only: bool) -> None:
    # Given any DAG, the critical path's length equals the longest path found by brute force,
    # and the chain it names is a real path of that length.
    chain, length = plan.critical_path(internal_only=internal_only)
    longest = max((_weight(p, internal_only=internal_only) for p in _paths(plan)), default=0.0)
    assert math.isclose(length, longest, abs_tol=1e-9)
    if plan.steps:
        assert _is_path(plan, chain)
        weight = _weight([plan.step(s) for s in chain], internal_only=internal_only)
        assert math.isclose(weight, length, abs_tol=1e-9)


@given(dags())
def test_critical_path_lies_between_the_longest_step_and_the_sum(plan: ChangeoverPlan) -> None:
    _chain, length = plan.critical_path()
    assert max((s.expected_s for s in plan.steps), default=0.0) <= length + 1e-9
    assert length <= plan.total_s + 1e-9


# ------------------------------------------------------------------------------------------------------------
# Rendering (API and previews)


def test_plan_to_dict_carries_steps_and_times() -> None:
    plan = _plan(_step("a", expected_s=2.0), _step("b", "a", expected_s=1.0, external=True))
    data = plan.to_dict()
    assert [s["id"] for s in data["steps"]] == ["a", "b"]
    assert data["steps"][1]["after"] == ["a"]
    assert data["critical_path"] == ["a", "b"]
    assert data["planned_s"] == 3.0
    assert data["planned_internal_s"] == 2.0
    assert (data["from_variant"], data["to_variant"]) == ("a", "b")


def test_render_marks_the_critical_path() -> None:
    plan = _plan(_step("long", expected_s=5.0), _step("short", expected_s=1.0))
    lines = plan.render().splitlines()
    assert "2 steps, critical path 5 s" in lines[0]
    assert lines[1].startswith(" * long")
    assert lines[2].startswith("   short")


def test_render_of_an_empty_plan_says_so() -> None:
    assert _plan().render() == "changeover a -> b: nothing to do"
