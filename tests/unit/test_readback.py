"""Read-back of a step's result on the soft cell: each step kind reads back when (and only when) its device
holds what the step asks; a kind without a readable result never does."""

from __future__ import annotations

from typing import Any

import pytest

from cellctl.core.plans import PlanStep
from cellctl.core.tags import TagValue
from cellctl.engine.readback import reached
from tests.softcell import soft_cell
from tests.unit.test_sequencer import CELL, _profiles


def _step(kind: str, device: str | None, **params: Any) -> PlanStep:
    return PlanStep(
        id=f"{device}:{kind}", kind=kind, device=device, description=kind, params=tuple(params.items())
    )


CASES: list[tuple[PlanStep, dict[str, dict[str, TagValue]], dict[str, dict[str, TagValue]]]] = [
    (
        _step("tool_change", "toolchanger", tool=2),
        {"toolchanger": {"tool_current": 2}},
        {"toolchanger": {"tool_current": 0}},
    ),
    (
        _step("robot_program", "robot1", program=12),
        {"robot1": {"active_program": 12}},
        {"robot1": {"active_program": 11}},
    ),
    (_step("fixture_unclamp", "fixture"), {"fixture": {"clamped": False}}, {"fixture": {"clamped": True}}),
    (_step("fixture_clamp", "fixture"), {"fixture": {"clamped": True}}, {"fixture": {"clamped": False}}),
    (
        _step("fixture_move", "fixture", width=520.0, depth=480.0),
        {"fixture": {"width_act": 520.02, "depth_act": 480.0}},
        {"fixture": {"width_act": 520.0, "depth_act": 470.0}},
    ),
    (
        _step("setpoints", "stapler", force_sp=950.0),
        {"stapler": {"force_sp": 950.0}},
        {"stapler": {"force_sp": 900.0}},
    ),
]


@pytest.mark.parametrize(("step", "there", "not_there"), CASES, ids=[c[0].kind for c in CASES])
async def test_a_step_reads_back_only_when_the_device_holds_its_result(
    step: PlanStep, there: dict[str, dict[str, TagValue]], not_there: dict[str, dict[str, TagValue]]
) -> None:
    assert await reached(step, _profiles(soft_cell(CELL, initial=there)))
    assert not await reached(step, _profiles(soft_cell(CELL, initial=not_there)))


async def test_a_step_kind_without_a_readable_result_never_reads_back() -> None:
    operator_step = _step("operator", None)
    assert not await reached(operator_step, _profiles(soft_cell(CELL)))
