"""The changeover planner: one step per differing setting, ordered as a DAG the sequencer can run."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cellctl.core.plans import ChangeoverPlan, DeviceSetup, PlanStep
from cellctl.engine.planner import OPERATOR_KIND, operator_step_id, plan_changeover, target_setup
from cellctl.errors import PlanError
from cellctl.schema.cell import CellConfig, ChangeoverConfig, StepKind
from cellctl.schema.load import load_config
from cellctl.schema.ordering import OrderCycle, step_order
from cellctl.schema.recipe import Recipe
from tests.unit.test_plans import _is_path, _paths, _weight

CONFIG = Path(__file__).resolve().parents[2] / "config"
EXAMPLE = load_config(CONFIG)
CELL = EXAMPLE.cell
TOOLS = CELL.devices["toolchanger"].tools


def _recipe(setup: dict[str, Any], variant: str = "probe") -> Recipe:
    return Recipe.model_validate({"variant": variant, "version": 1, "setup": setup})


def _ancestors(plan: ChangeoverPlan, step_id: str) -> set[str]:
    seen: set[str] = set()
    todo = list(plan.step(step_id).after)
    for _ in range(len(plan.steps) ** 2 + 1):
        if not todo:
            break
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(plan.step(current).after)
    return seen


def _ids(plan: ChangeoverPlan) -> list[str]:
    return [s.id for s in plan.steps]


def _of_kind(plan: ChangeoverPlan, kind: StepKind) -> list[PlanStep]:
    return [s for s in plan.steps if s.kind == kind.value]


# ------------------------------------------------------------------------------------------------------------
# Random setups over the example cell. Values are equal, clearly within tolerance or clearly outside it, so
# the oracle below never sits on a tolerance's edge.

AXES = ("width", "depth")
POSITIONS = (400.0, 420.0, 480.0, 520.0)
SETPOINTS = {"force_sp": (800.0, 900.0, 950.0), "pitch_mm": (9.0, 12.0)}


@st.composite
def targets(draw: st.DrawFn) -> Recipe:
    setup: dict[str, Any] = {}
    if draw(st.booleans()):
        setup["toolchanger"] = {"tool": draw(st.sampled_from(sorted(TOOLS)))}
    if draw(st.booleans()):
        setup["robot1"] = {"program": draw(st.integers(1, 4))}
    axes = draw(st.sets(st.sampled_from(AXES)))
    if axes:
        setup["fixture"] = {"positions": {a: draw(st.sampled_from(POSITIONS)) for a in sorted(axes)}}
    names = draw(st.sets(st.sampled_from(sorted(SETPOINTS))))
    if names:
        setup["stapler"] = {"setpoints": {n: draw(st.sampled_from(SETPOINTS[n])) for n in sorted(names)}}
    return _recipe(setup)


def _near(draw: st.DrawFn, value: float, *, absolute: float, relative: float) -> tuple[float | None, bool]:
    """A current value for ``value`` and whether it differs: missing, equal, close, or far."""
    choice = draw(st.sampled_from(["missing", "equal", "close", "far"]))
    if choice == "missing":
        return None, True
    if choice == "equal":
        return value, False
    sign = draw(st.sampled_from([-1.0, 1.0]))
    if choice == "close":
        return value + sign * max(absolute, abs(value) * relative) / 5, False
    return value + sign * 1.0, True


@st.composite
def currents(draw: st.DrawFn, target: Recipe) -> tuple[dict[str, DeviceSetup], set[tuple[str, ...]]]:
    """A current setup for ``target`` and the settings that differ from it (the oracle)."""
    wanted = target_setup(target, CELL)
    current: dict[str, DeviceSetup] = {}
    differing: set[tuple[str, ...]] = set()
    for device, want in wanted.items():
        if draw(st.integers(0, 9)) == 0:
            # No reading at all for this device: everything it is asked differs.
            differing |= {(device, "tool")} if want.tool is not None else set()
            differing |= {(device, "program")} if want.program is not None else set()
            differing |= {(device, "axis", a) for a in want.positions}
            differing |= {(device, "setpoint", n) for n in want.setpoints}
            continue
        tool = program = None
        if want.tool is not None:
            tool = draw(st.sampled_from([0, *TOOLS.values()]))
            if tool != want.tool:
                differing.add((device, "tool"))
        if want.program is not None:
            program = draw(st.integers(0, 4))
            if program != want.program:
                differing.add((device, "program"))
        positions: dict[str, float] = {}
        for axis, value in want.positions.items():
            have, differs = _near(draw, value, absolute=0.05, relative=0.0)
            if have is not None:
                positions[axis] = have
            if differs:
                differing.add((device, "axis", axis))
        setpoints: dict[str, Any] = {}
        for name, value in want.setpoints.items():
            assert isinstance(value, float)
            have, differs = _near(draw, value, absolute=1e-9, relative=1e-6)
            if have is not None:
                setpoints[name] = have
            if differs:
                differing.add((device, "setpoint", name))
        current[device] = DeviceSetup(tool=tool, program=program, positions=positions, setpoints=setpoints)
    return current, differing


@st.composite
def cases(draw: st.DrawFn) -> tuple[Recipe, dict[str, DeviceSetup], set[tuple[str, ...]]]:
    target = draw(targets())
    current, differing = draw(currents(target))
    return target, current, differing


def _settings_of(step: PlanStep) -> list[tuple[str, ...]]:
    """The settings a step changes, in the oracle's terms."""
    assert step.device is not None
    if step.kind == StepKind.TOOL_CHANGE:
        return [(step.device, "tool")]
    if step.kind == StepKind.ROBOT_PROGRAM:
        return [(step.device, "program")]
    if step.kind == StepKind.FIXTURE_MOVE:
        return [(step.device, "axis", axis) for axis, _ in step.params]
    if step.kind == StepKind.SETPOINTS:
        return [(step.device, "setpoint", name) for name, _ in step.params]
    return []  # unclamp and clamp serve the move


# ------------------------------------------------------------------------------------------------------------
# Properties


@given(cases())
def test_every_differing_setting_gets_exactly_one_step_and_no_other(case: Any) -> None:
    target, current, differing = case
    plan = plan_changeover(current, target, CELL, from_variant="x")
    changed = Counter(s for step in plan.steps for s in _settings_of(step))
    assert set(changed) == differing
    assert all(n == 1 for n in changed.values())


@given(cases())
def test_steps_carry_the_target_values(case: Any) -> None:
    target, current, _differing = case
    wanted = target_setup(target, CELL)
    plan = plan_changeover(current, target, CELL, from_variant="x")
    for step in plan.steps:
        assert step.device is not None
        want = wanted[step.device]
        if step.kind == StepKind.TOOL_CHANGE:
            assert step.args == {"tool": want.tool}
        elif step.kind == StepKind.ROBOT_PROGRAM:
            assert step.args == {"program": want.program}
        elif step.kind == StepKind.FIXTURE_MOVE:
            assert all(want.positions[a] == v for a, v in step.params)
        elif step.kind == StepKind.SETPOINTS:
            assert all(want.setpoints[n] == v for n, v in step.params)


@given(cases())
def test_unclamp_move_and_clamp_come_together_and_in_that_order(case: Any) -> None:
    target, current, _differing = case
    plan = plan_changeover(current, target, CELL, from_variant="x")
    kinds = {s.kind for s in plan.steps if s.device == "fixture"}
    fixture_kinds = {
        StepKind.FIXTURE_UNCLAMP.value,
        StepKind.FIXTURE_MOVE.value,
        StepKind.FIXTURE_CLAMP.value,
    }
    assert kinds & fixture_kinds in (set(), fixture_kinds)
    if kinds:
        assert "fixture:fixture_unclamp" in _ancestors(plan, "fixture:fixture_move")
        assert "fixture:fixture_move" in _ancestors(plan, "fixture:fixture_clamp")


@given(cases())
def test_a_tool_change_comes_before_the_robot_program(case: Any) -> None:
    target, current, _differing = case
    plan = plan_changeover(current, target, CELL, from_variant="x")
    ids = _ids(plan)
    if "toolchanger:tool_change" in ids and "robot1:robot_program" in ids:
        assert "toolchanger:tool_change" in _ancestors(plan, "robot1:robot_program")


@given(cases())
def test_steps_of_one_device_are_never_ready_together(case: Any) -> None:
    # Of any two steps on one device, one always waits (transitively) for the other.
    target, current, _differing = case
    plan = plan_changeover(current, target, CELL, from_variant="x")
    for a in plan.steps:
        for b in plan.steps:
            if a.id < b.id and a.device == b.device:
                assert a.id in _ancestors(plan, b.id) or b.id in _ancestors(plan, a.id)


@given(cases())
def test_the_plan_is_a_dag_whose_steps_take_their_template(case: Any) -> None:
    target, current, _differing = case
    plan = plan_changeover(current, target, CELL, from_variant="oslo")
    assert len(plan.order()) == len(plan.steps)  # order() raises on a cycle
    assert (plan.from_variant, plan.to_variant) == ("oslo", target.variant)
    for step in plan.steps:
        template = CELL.changeover.steps[StepKind(step.kind)]
        assert step.id == f"{step.device}:{step.kind}"
        assert (step.expected_s, step.timeout_s, step.retries) == (
            template.expected_s,
            template.timeout_s,
            template.retries,
        )
        assert step.external == (template.smed == "external")


@given(targets())
def test_a_cell_already_set_up_needs_no_steps(target: Recipe) -> None:
    plan = plan_changeover(target_setup(target, CELL), target, CELL, from_variant=target.variant)
    assert plan.is_empty


# Random templates: whatever 'after' the integrator writes, the plan stays a DAG with one step at a time per
# device and the fixture's own sequence; templates that contradict that sequence are refused by name.

KINDS = list(StepKind)


@st.composite
def cells_with_random_templates(draw: st.DrawFn) -> CellConfig:
    steps = {
        kind.value: {
            "after": [k.value for k in draw(st.sets(st.sampled_from(KINDS), max_size=3)) if k != kind]
        }
        for kind in draw(st.sets(st.sampled_from(KINDS)))
    }
    try:
        changeover = ChangeoverConfig.model_validate({"steps": steps})
    except ValidationError:
        assume(False)  # a cycle among the templates: the schema refuses it already
        raise
    return CELL.model_copy(update={"changeover": changeover})


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(cells_with_random_templates(), cases())
def test_any_valid_templates_give_a_dag_with_the_fixture_sequence(cell: CellConfig, case: Any) -> None:
    target, current, _differing = case
    try:
        plan = plan_changeover(current, target, cell, from_variant="x")
    except PlanError as exc:
        assert "fixture always unclamps, moves, then clamps" in str(exc)
        return
    for a in plan.steps:
        for b in plan.steps:
            if a.id < b.id and a.device == b.device:
                assert a.id in _ancestors(plan, b.id) or b.id in _ancestors(plan, a.id)
    if any(s.device == "fixture" for s in plan.steps):
        assert "fixture:fixture_unclamp" in _ancestors(plan, "fixture:fixture_move")
        assert "fixture:fixture_move" in _ancestors(plan, "fixture:fixture_clamp")
    for step in plan.steps:
        template = cell.changeover.steps[StepKind(step.kind)]
        for dep in template.after:
            for other in _of_kind(plan, dep):
                assert other.id in step.after


# ------------------------------------------------------------------------------------------------------------
# The example recipes


def test_oslo_to_bergen_moves_the_fixture_changes_tool_and_program_and_sets_the_force() -> None:
    # Given the cell set up for oslo, when planning bergen, then:
    current = target_setup(EXAMPLE.recipes["oslo"], CELL)
    plan = plan_changeover(current, EXAMPLE.recipes["bergen"], CELL, from_variant="oslo")
    assert _ids(plan) == [
        "fixture:fixture_unclamp",
        "fixture:fixture_move",
        "fixture:fixture_clamp",
        "toolchanger:setpoints",
        "stapler:setpoints",
        "toolchanger:tool_change",
        "robot1:robot_program",
    ]
    assert plan.step("toolchanger:setpoints").args == {"preselect": TOOLS["FOAM-L"]}
    assert plan.step("toolchanger:tool_change").args == {"tool": TOOLS["FOAM-L"]}
    assert plan.step("fixture:fixture_move").args == {"width": 520.0, "depth": 480.0}
    assert plan.step("robot1:robot_program").args == {"program": 12}
    assert plan.step("stapler:setpoints").args == {"force_sp": 950.0}
    assert plan.step("fixture:fixture_move").after == ("fixture:fixture_unclamp",)
    assert plan.step("fixture:fixture_clamp").after == ("fixture:fixture_move",)
    assert plan.step("robot1:robot_program").after == ("toolchanger:tool_change",)
    assert plan.step("stapler:setpoints").after == ()
    # The magazine preselects the tool before the change (template: tool_change after setpoints).
    assert plan.step("toolchanger:tool_change").after == ("toolchanger:setpoints", "stapler:setpoints")
    path = ("toolchanger:setpoints", "toolchanger:tool_change", "robot1:robot_program")
    assert plan.critical_path() == (path, pytest.approx(4.6))
    assert plan.critical_path(internal_only=True) == (path[:2], 4.0)


def test_bergen_to_tromso_keeps_the_fixture() -> None:
    current = target_setup(EXAMPLE.recipes["bergen"], CELL)
    plan = plan_changeover(current, EXAMPLE.recipes["tromso"], CELL, from_variant="bergen")
    assert _ids(plan) == [
        "toolchanger:setpoints",
        "stapler:setpoints",
        "toolchanger:tool_change",
        "robot1:robot_program",
        "operator:load_fabric",
    ]
    assert plan.step("toolchanger:tool_change").args == {"tool": TOOLS["FABRIC-WIDE"]}
    assert plan.step("robot1:robot_program").args == {"program": 13}
    assert plan.step("stapler:setpoints").args == {"force_sp": 900.0}
    assert not any(s.device == "fixture" for s in plan.steps)


def test_a_fixture_in_position_but_left_unclamped_gets_only_its_clamp() -> None:
    """A changeover stopped between the move and the clamp: the positions match, the clamp is still due."""
    current = dict(target_setup(EXAMPLE.recipes["bergen"], CELL))
    current["fixture"] = DeviceSetup(positions=current["fixture"].positions, clamped=False)
    plan = plan_changeover(current, EXAMPLE.recipes["bergen"], CELL, from_variant=None)
    assert _ids(plan) == ["fixture:fixture_clamp"]
    clamped = DeviceSetup(positions=current["fixture"].positions, clamped=True)
    assert plan_changeover(
        {**current, "fixture": clamped}, EXAMPLE.recipes["bergen"], CELL, from_variant=None
    ).is_empty


def test_from_an_unknown_setup_everything_the_recipe_names_is_set() -> None:
    plan = plan_changeover({}, EXAMPLE.recipes["tromso"], CELL, from_variant=None)
    assert len([s for s in plan.steps if s.kind != OPERATOR_KIND]) == 7
    assert [s.id for s in plan.steps if s.kind == OPERATOR_KIND] == ["operator:load_fabric"]
    assert plan.from_variant is None


def test_only_the_differing_setpoints_are_written() -> None:
    target = _recipe({"stapler": {"setpoints": {"force_sp": 900.0, "pitch_mm": 12.0}}})
    current = {"stapler": DeviceSetup(setpoints={"force_sp": 900.0, "pitch_mm": 10.0})}
    plan = plan_changeover(current, target, CELL, from_variant=None)
    assert plan.step("stapler:setpoints").args == {"pitch_mm": 12.0}


def test_a_float32_rounded_setpoint_matches() -> None:
    target = _recipe({"stapler": {"setpoints": {"pitch_mm": 12.3}}})
    current = {"stapler": DeviceSetup(setpoints={"pitch_mm": 12.300000190734863})}  # 12.3 as float32
    assert plan_changeover(current, target, CELL, from_variant=None).is_empty


def test_a_position_within_005_matches_and_beyond_it_moves() -> None:
    target = _recipe({"fixture": {"positions": {"width": 520.0, "depth": 480.0}}})
    current = {"fixture": DeviceSetup(positions={"width": 520.04, "depth": 480.06})}
    plan = plan_changeover(current, target, CELL, from_variant=None)
    assert plan.step("fixture:fixture_move").args == {"depth": 480.0}


def test_a_dependency_on_a_kind_not_in_the_plan_is_dropped() -> None:
    changeover = ChangeoverConfig.model_validate({"steps": {"robot_program": {"after": ["fixture_clamp"]}}})
    cell = CELL.model_copy(update={"changeover": changeover})
    current = target_setup(EXAMPLE.recipes["bergen"], CELL)
    plan = plan_changeover(current, EXAMPLE.recipes["tromso"], cell, from_variant="bergen")
    assert plan.step("robot1:robot_program").after == ()


def test_template_timing_smed_and_retries_are_copied_into_the_steps() -> None:
    changeover = ChangeoverConfig.model_validate(
        {"steps": {"tool_change": {"expected_s": 7.5, "timeout_s": 12, "smed": "external", "retries": 2}}}
    )
    cell = CELL.model_copy(update={"changeover": changeover})
    plan = plan_changeover({}, EXAMPLE.recipes["oslo"], cell, from_variant=None)
    step = plan.step("toolchanger:tool_change")
    assert (step.expected_s, step.timeout_s, step.external, step.retries) == (7.5, 12.0, True, 2)


def test_templates_that_move_before_unclamping_are_refused() -> None:
    changeover = ChangeoverConfig.model_validate(
        {"steps": {"fixture_move": {"after": []}, "fixture_unclamp": {"after": ["fixture_move"]}}}
    )
    cell = CELL.model_copy(update={"changeover": changeover})
    with pytest.raises(PlanError, match="fixture always unclamps, moves, then clamps"):
        plan_changeover({}, EXAMPLE.recipes["oslo"], cell, from_variant=None)


def test_planning_is_pure() -> None:
    current = target_setup(EXAMPLE.recipes["oslo"], CELL)
    first = plan_changeover(current, EXAMPLE.recipes["bergen"], CELL, from_variant="oslo")
    second = plan_changeover(current, EXAMPLE.recipes["bergen"], CELL, from_variant="oslo")
    assert first == second


# ------------------------------------------------------------------------------------------------------------
# Bad recipes


def test_target_setup_turns_tool_names_into_numbers() -> None:
    setup = target_setup(EXAMPLE.recipes["bergen"], CELL)
    assert setup["toolchanger"].tool == TOOLS["FOAM-L"]
    assert setup["robot1"].program == 12
    assert setup["fixture"].positions == {"width": 520.0, "depth": 480.0}
    assert setup["stapler"].setpoints == {"force_sp": 950.0}


def test_an_unknown_device_is_a_plan_error_naming_it() -> None:
    with pytest.raises(PlanError, match="no device 'conveyor' in the cell"):
        plan_changeover({}, _recipe({"conveyor": {"program": 3}}), CELL, from_variant=None)


def test_an_unknown_tool_is_a_plan_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(PlanError, match="unknown tool 'HAMMER'") as caught:
        plan_changeover({}, _recipe({"toolchanger": {"tool": "HAMMER"}}), CELL, from_variant=None)
    assert "FOAM-S" in str(caught.value)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"robot1": {"tool": "FOAM-S"}}, "'robot1' is a robot, not a tool_changer"),
        ({"fixture": {"program": 3}}, "'fixture' is a fixture, not a robot"),
        ({"stapler": {"positions": {"width": 1.0}}}, "'stapler' is a press, not a fixture"),
        ({"fixture": {"positions": {"height": 1.0}}}, "device has no tag 'height_sp'"),
        ({"stapler": {"setpoints": {"staples": 3}}}, "tag 'staples' is not writable"),
        ({"stapler": {"setpoints": {"speed": 3}}}, "device has no tag 'speed'"),
    ],
)
def test_a_setting_the_device_cannot_hold_is_a_plan_error(setup: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_changeover({}, _recipe(setup), CELL, from_variant=None)


def test_every_problem_of_a_recipe_is_reported_at_once() -> None:
    recipe = _recipe({"conveyor": {"program": 3}, "toolchanger": {"tool": "HAMMER"}})
    with pytest.raises(PlanError) as caught:
        target_setup(recipe, CELL)
    assert "conveyor" in str(caught.value)
    assert "HAMMER" in str(caught.value)


# ------------------------------------------------------------------------------------------------------------
# Operator steps: random ones on random targets. Present exactly when due, ordered by their 'after' and
# 'before', one step at a time per device, still a DAG whose critical path is the longest path.

OPERATOR_NAMES = ("op_a", "op_b", "op_c")
KIND_NAMES = [k.value for k in StepKind]


@st.composite
def operator_cases(
    draw: st.DrawFn,
) -> tuple[Recipe, dict[str, DeviceSetup], set[tuple[str, ...]], str | None]:
    target, current, differing = draw(cases())
    names = OPERATOR_NAMES[: draw(st.integers(1, len(OPERATOR_NAMES)))]
    steps: dict[str, Any] = {}
    for name in names:
        refs = st.sampled_from([*KIND_NAMES, *(n for n in names if n != name)])
        steps[name] = {
            "instruction": f"do {name}",
            "device": draw(st.sampled_from([None, *CELL.devices])),
            "smed": draw(st.sampled_from(["internal", "external"])),
            "after": sorted(draw(st.sets(refs, max_size=2))),
            "before": sorted(draw(st.sets(refs, max_size=2))),
            "expected_s": draw(st.integers(0, 80)) / 4,
        }
    recipe = Recipe.model_validate({**target.model_dump(mode="json"), "operator_steps": steps})
    try:
        step_order(CELL.changeover.steps, recipe.operator_steps)
    except OrderCycle:
        assume(False)  # the loader refuses such a recipe at its line
    from_variant = draw(st.sampled_from([None, "other", recipe.variant]))
    return recipe, current, differing, from_variant


def _assert_declared_order(plan: ChangeoverPlan, target: Recipe, left_out: set[str] | None = None) -> None:
    """Every operator step's 'after' comes before it and its 'before' after it; through a step left out
    (confirmed), its 'after' still comes before its 'before'."""
    for name, spec in target.operator_steps.items():
        sid = operator_step_id(name)
        if sid in {s.id for s in plan.steps}:
            for ref in spec.after:
                assert set(_instances(plan, ref)) <= _ancestors(plan, sid)
            for ref in spec.before:
                assert all(sid in _ancestors(plan, other) for other in _instances(plan, ref))
        elif left_out is not None and sid in left_out:
            for before in spec.before:
                for other in _instances(plan, before):
                    for ref in spec.after:
                        assert set(_instances(plan, ref)) <= _ancestors(plan, other)


def _instances(plan: ChangeoverPlan, ref: str) -> list[str]:
    """The steps of the plan a reference in 'after' or 'before' means."""
    if ref in OPERATOR_NAMES:
        return [s.id for s in plan.steps if s.id == operator_step_id(ref)]
    return [s.id for s in plan.steps if s.kind == ref]


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(operator_cases())
def test_operator_steps_are_present_exactly_when_due_and_ordered_as_declared(case: Any) -> None:
    target, current, differing, from_variant = case
    plan = plan_changeover(current, target, CELL, from_variant=from_variant)

    assert len(plan.order()) == len(plan.steps)  # a DAG
    due = from_variant != target.variant and (from_variant is not None or bool(differing))
    present = [s for s in plan.steps if s.kind == OPERATOR_KIND]
    assert {s.id for s in present} == ({operator_step_id(n) for n in target.operator_steps} if due else set())
    for step in present:
        spec = target.operator_steps[step.id.removeprefix("operator:")]
        assert (step.instruction, step.device) == (spec.instruction, spec.device)
        assert (step.expected_s, step.external) == (spec.expected_s, spec.smed == "external")
    _assert_declared_order(plan, target)
    # Device settings are planned as without operator steps
    changed = Counter(s for step in plan.steps if step.kind != OPERATOR_KIND for s in _settings_of(step))
    assert set(changed) == differing
    for a in plan.steps:
        for b in plan.steps:
            if a.id < b.id and a.device is not None and a.device == b.device:
                assert a.id in _ancestors(plan, b.id) or b.id in _ancestors(plan, a.id)


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(operator_cases(), st.booleans())
def test_with_operator_steps_the_critical_path_is_still_the_longest_path(case: Any, internal: bool) -> None:
    target, current, _differing, from_variant = case
    plan = plan_changeover(current, target, CELL, from_variant=from_variant)
    chain, length = plan.critical_path(internal_only=internal)
    longest = max((_weight(p, internal_only=internal) for p in _paths(plan)), default=0.0)
    assert math.isclose(length, longest, abs_tol=1e-9)
    if plan.steps:
        assert _is_path(plan, chain)


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(operator_cases(), st.data())
def test_leaving_out_confirmed_operator_steps_keeps_every_other_order(case: Any, data: st.DataObject) -> None:
    # Given a plan with its operator steps, and some of them confirmed already
    target, current, _differing, _from = case
    full = plan_changeover(current, target, CELL, from_variant="other")
    ids = [s.id for s in full.steps if s.kind == OPERATOR_KIND]
    confirmed = data.draw(st.sets(st.sampled_from(ids))) if ids else set()
    # When re-planned, then exactly those are left out, and the declared order holds, through them too
    plan = plan_changeover(current, target, CELL, from_variant="other", confirmed=confirmed)
    assert {s.id for s in plan.steps} == {s.id for s in full.steps} - confirmed
    assert len(plan.order()) == len(plan.steps)
    _assert_declared_order(plan, target, left_out=confirmed)
