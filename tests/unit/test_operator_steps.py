"""A recipe's operator steps: the schema declaring them, and where the planner puts them in a changeover."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.plans import ChangeoverPlan
from cellctl.engine.planner import OPERATOR_KIND, plan_changeover, target_setup
from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.export import json_schemas
from cellctl.schema.load import load_config
from cellctl.schema.recipe import Recipe

CONFIG = Path(__file__).resolve().parents[2] / "config"
EXAMPLE = load_config(CONFIG)
CELL = EXAMPLE.cell
TROMSO = EXAMPLE.recipes["tromso"]
BERGEN_SETUP = target_setup(EXAMPLE.recipes["bergen"], CELL)
OSLO_SETUP = target_setup(EXAMPLE.recipes["oslo"], CELL)


def _recipe(operator_steps: dict[str, Any], setup: dict[str, Any] | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "variant": "probe",
            "version": 1,
            "setup": setup if setup is not None else {"fixture": {"positions": {"width": 520.0}}},
            "operator_steps": operator_steps,
        }
    )


def _operator_ids(plan: ChangeoverPlan) -> list[str]:
    return [s.id for s in plan.steps if s.kind == OPERATOR_KIND]


# ------------------------------------------------------------------------------------------------------------
# When operator steps are part of a changeover


def test_a_changeover_to_tromso_from_another_variant_asks_for_the_fabric_roll() -> None:
    plan = plan_changeover(BERGEN_SETUP, TROMSO, CELL, from_variant="bergen")

    step = plan.step("operator:load_fabric")
    assert (step.kind, step.device, step.external) == (OPERATOR_KIND, "stapler", False)
    assert step.instruction == "Load the wide fabric roll on the stapler's cover feeder"
    assert (step.evidence, step.expected_evidence) == ("scan the roll label", "FAB-TROMSO")
    assert (step.expected_s, step.timeout_s, step.retries) == (40.0, 600.0, 0)
    # After every setpoints step (the recipe says so), the stapler's own included: the person works there.
    assert set(step.after) == {"stapler:setpoints", "toolchanger:setpoints"}


def test_a_cell_set_up_for_the_variant_needs_no_changeover_and_no_operator() -> None:
    tromso_setup = target_setup(TROMSO, CELL)
    assert plan_changeover(tromso_setup, TROMSO, CELL, from_variant="tromso").is_empty
    # Unknown variant, but every setting matches: the cell is set up for tromso (what Reset concludes).
    assert plan_changeover(tromso_setup, TROMSO, CELL, from_variant=None).is_empty


def test_from_an_unknown_variant_whose_setup_differs_the_operator_steps_are_due() -> None:
    plan = plan_changeover(OSLO_SETUP, TROMSO, CELL, from_variant=None)
    assert _operator_ids(plan) == ["operator:load_fabric"]


def test_a_variant_sharing_the_setup_still_needs_its_operator_steps() -> None:
    # Given a variant whose devices are set up like bergen but whose material differs
    recipe = EXAMPLE.recipes["bergen"].model_copy(
        update={"variant": "bergen_navy", "operator_steps": TROMSO.operator_steps}
    )
    # When changing over from bergen, then only the person has work to do
    plan = plan_changeover(BERGEN_SETUP, recipe, CELL, from_variant="bergen")
    assert [s.id for s in plan.steps] == ["operator:load_fabric"]
    assert plan.step("operator:load_fabric").after == ()


def test_a_drifted_device_of_the_same_variant_is_reset_without_the_operator() -> None:
    drifted = {**target_setup(TROMSO, CELL), "robot1": BERGEN_SETUP["robot1"]}
    plan = plan_changeover(drifted, TROMSO, CELL, from_variant="tromso")
    assert [s.id for s in plan.steps] == ["robot1:robot_program"]


# ------------------------------------------------------------------------------------------------------------
# Dependencies


SWAP = {
    "swap_plate": {
        "instruction": "Swap the fixture plate",
        "evidence": {"ask": "scan the plate id", "expect": "PL-7"},
        "device": "fixture",
        "after": ["fixture_unclamp"],
        "before": ["fixture_clamp"],
        "expected_s": 30,
    }
}


def test_a_manual_fixture_swap_comes_between_unclamp_and_clamp() -> None:
    plan = plan_changeover({}, _recipe(SWAP), CELL, from_variant="oslo")

    assert "fixture:fixture_unclamp" in plan.step("operator:swap_plate").after
    assert "operator:swap_plate" in plan.step("fixture:fixture_clamp").after
    # The move and the swap share the fixture: one after the other, never together.
    order = [s.id for s in plan.order()]
    assert order.index("fixture:fixture_unclamp") < order.index("operator:swap_plate")
    assert order.index("operator:swap_plate") < order.index("fixture:fixture_clamp")
    move = plan.step("fixture:fixture_move")
    assert (
        "operator:swap_plate" in move.after
        or "fixture:fixture_move" in plan.step("operator:swap_plate").after
    )


def test_an_operator_step_may_come_after_another_and_before_a_kind_not_in_the_plan() -> None:
    steps = {
        "fetch_roll": {"instruction": "Fetch the roll", "smed": "external", "before": ["tool_change"]},
        "load_roll": {"instruction": "Load the roll", "after": ["fetch_roll"]},
    }
    plan = plan_changeover({}, _recipe(steps), CELL, from_variant="oslo")

    assert plan.step("operator:load_roll").after == ("operator:fetch_roll",)
    assert plan.step("operator:fetch_roll").external
    assert plan.step("operator:fetch_roll").device is None
    assert plan.step("operator:fetch_roll").evidence is None  # confirm only


def test_a_confirmed_operator_step_is_left_out_and_its_order_holds() -> None:
    # unclamp -> swap -> clamp: with the swap confirmed, the clamp still waits for the unclamp.
    plan = plan_changeover({}, _recipe(SWAP), CELL, from_variant="oslo", confirmed={"operator:swap_plate"})

    assert "operator:swap_plate" not in [s.id for s in plan.steps]
    assert "fixture:fixture_unclamp" in plan.step("fixture:fixture_move").after
    assert "fixture:fixture_move" in plan.step("fixture:fixture_clamp").after


def test_the_critical_path_runs_through_a_long_operator_step() -> None:
    plan = plan_changeover(BERGEN_SETUP, TROMSO, CELL, from_variant="bergen")
    path, seconds = plan.critical_path(internal_only=True)
    assert path[-1] == "operator:load_fabric"
    assert seconds == pytest.approx(40.0)


# ------------------------------------------------------------------------------------------------------------
# The schema: a recipe's mistakes are refused with file and line


def _issues(tmp_path: Path, block: str) -> tuple[list[ConfigIssue], list[str]]:
    config = Path(shutil.copytree(CONFIG, tmp_path / "config"))
    tromso = config / "recipes" / "tromso.yaml"
    text = tromso.read_text()
    head = text[: text.index("operator_steps:")]
    tromso.write_text(head + block)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return list(caught.value.issues), (head + block).splitlines()


def _line_of(lines: list[str], fragment: str) -> int:
    return next(i for i, line in enumerate(lines, start=1) if fragment in line)


@pytest.mark.parametrize(
    ("block", "at", "path", "message"),
    [
        (
            "operator_steps:\n  load_fabric:\n    instruction: Load it\n    device: loader\n",
            "device: loader",
            "operator_steps.load_fabric.device",
            "unknown device 'loader'",
        ),
        (
            "operator_steps:\n  load_fabric:\n    instruction: Load it\n    after: [tool_swap]\n",
            "after: [tool_swap]",
            "operator_steps.load_fabric.after",
            "'tool_swap' is neither a step kind nor an operator step",
        ),
        (
            "operator_steps:\n  tool_change:\n    instruction: Change it by hand\n",
            "tool_change:",
            "operator_steps.tool_change",
            "has the name of a step kind",
        ),
        (
            "operator_steps:\n  load_fabric:\n    instruction: Load it\n"
            "    after: [fixture_clamp]\n    before: [fixture_unclamp]\n",
            "before: [fixture_unclamp]",
            "operator_steps.load_fabric.before",
            "closes a cycle",
        ),
        (
            "operator_steps:\n  a:\n    instruction: A\n    after: [b]\n  b:\n    instruction: B\n"
            "    after: [a]\n",
            "after: [a]",
            "operator_steps.b.after",
            "b -> a -> b",
        ),
        (
            "operator_steps:\n  load_fabric:\n    instruction: Load it\n    timeout_s: 0\n",
            "timeout_s: 0",
            "operator_steps.load_fabric.timeout_s",
            "greater than 0",
        ),
        (
            "operator_steps:\n  load_fabric:\n    instruction: Load it\n    evidence: {ask: scan}\n",
            "evidence:",
            "operator_steps.load_fabric.evidence.expect",
            "expect",
        ),
    ],
)
def test_a_bad_operator_step_is_refused_at_its_file_and_line(
    tmp_path: Path, block: str, at: str, path: str, message: str
) -> None:
    issues, lines = _issues(tmp_path, block)
    (issue,) = issues
    assert Path(issue.file).name == "tromso.yaml"
    assert issue.path == path
    assert message in issue.message
    # The line of the key at fault, or of the step when the model points at a whole entry
    assert issue.line in (_line_of(lines, at), _line_of(lines, at) + 1)


def test_operator_steps_are_in_the_exported_schema() -> None:
    recipe = json_schemas()["recipe"]
    assert "operator_steps" in recipe["properties"]
    assert recipe["$defs"]["OperatorStep"]["properties"]["timeout_s"]["maximum"] == 86400


def test_a_recipe_without_operator_steps_keeps_its_snapshot_hash() -> None:
    oslo = EXAMPLE.recipes["oslo"]
    with_empty = Recipe.model_validate({**oslo.model_dump(), "operator_steps": {}})
    assert with_empty.snapshot_hash() == oslo.snapshot_hash()
    assert TROMSO.snapshot_hash() != TROMSO.model_copy(update={"operator_steps": {}}).snapshot_hash()


def test_resuming_an_interrupted_changeover_keeps_the_unconfirmed_operator_steps_due() -> None:
    # The devices reached tromso's setup before a Hold; the person's work cannot be read back.
    tromso_setup = target_setup(TROMSO, CELL)
    plan = plan_changeover(tromso_setup, TROMSO, CELL, from_variant=None, resuming=True)
    assert [s.id for s in plan.steps] == ["operator:load_fabric"]
    confirmed = {"operator:load_fabric"}
    assert plan_changeover(
        tromso_setup, TROMSO, CELL, from_variant=None, resuming=True, confirmed=confirmed
    ).is_empty
