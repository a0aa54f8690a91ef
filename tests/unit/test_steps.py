"""Step handlers drive the profiles' handshakes and confirm each result by reading it back."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.devices import Profile, make_profile
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.engine.planner import OPERATOR_KIND
from cellctl.engine.steps import REGISTRY, StepContext, StepHandler, check_plan
from cellctl.errors import DeviceFault, PlanError, WriteVerifyError
from cellctl.schema.cell import StepKind
from cellctl.schema.load import load_config
from tests.softcell import soft_cell

CELL = load_config(Path(__file__).resolve().parents[2] / "config").cell


def _profiles(devices: Mapping[str, SoftDriver]) -> dict[str, Profile]:
    return {
        name: make_profile(config.profile, name, devices[name], config.tags)
        for name, config in CELL.devices.items()
    }


def _step(kind: StepKind, device: str, **params: TagValue) -> PlanStep:
    return PlanStep(
        id=f"{device}:{kind}",
        kind=kind.value,
        device=device,
        description="",
        params=tuple(params.items()),
        timeout_s=0.5,
    )


async def _run(step: PlanStep, devices: Mapping[str, SoftDriver]) -> None:
    await REGISTRY[step.kind].run(step, StepContext(_profiles(devices)))


def test_every_step_kind_of_the_planner_has_a_handler() -> None:
    # The template kinds, and the kind of a recipe's operator steps.
    assert set(REGISTRY) == {kind.value for kind in StepKind} | {OPERATOR_KIND}


async def test_tool_change_mounts_the_tool() -> None:
    devices = soft_cell(CELL)
    await _run(_step(StepKind.TOOL_CHANGE, "toolchanger", tool=2), devices)
    assert devices["toolchanger"].writes == [("tool_request", 2)]
    assert devices["toolchanger"].last("tool_current").value == 2


async def test_unclamp_move_clamp_take_the_fixture_to_its_positions() -> None:
    devices = soft_cell(CELL, initial={"fixture": {"clamped": True, "clamp": True}})
    await _run(_step(StepKind.FIXTURE_UNCLAMP, "fixture"), devices)
    await _run(_step(StepKind.FIXTURE_MOVE, "fixture", width=520.0, depth=480.0), devices)
    await _run(_step(StepKind.FIXTURE_CLAMP, "fixture"), devices)
    fixture = devices["fixture"]
    assert fixture.writes == [("clamp", False), ("width_sp", 520.0), ("depth_sp", 480.0), ("clamp", True)]
    assert (fixture.last("width_act").value, fixture.last("depth_act").value) == (520.0, 480.0)
    assert fixture.last("clamped").value is True


async def test_robot_program_loads_the_program() -> None:
    devices = soft_cell(CELL)
    await _run(_step(StepKind.ROBOT_PROGRAM, "robot1", program=12), devices)
    assert devices["robot1"].last("active_program").value == 12


async def test_setpoints_are_written_and_read_back() -> None:
    devices = soft_cell(CELL)
    await _run(_step(StepKind.SETPOINTS, "stapler", force_sp=950.0, pitch_mm=11.0), devices)
    assert devices["stapler"].writes == [("force_sp", 950.0), ("pitch_mm", 11.0)]


async def test_a_setpoint_the_device_does_not_keep_is_a_write_verify_error() -> None:
    # Given a press that limits its force to 900 N, when 950 is written, then the read-back fails.
    devices = soft_cell(CELL)
    stapler = devices["stapler"]

    def limit(tag: str, value: Any) -> None:
        if tag == "force_sp" and value > 900.0:
            stapler.set("force_sp", 900.0)

    stapler.on_write(limit)
    with pytest.raises(WriteVerifyError) as caught:
        await _run(_step(StepKind.SETPOINTS, "stapler", force_sp=950.0), devices)
    assert (caught.value.device, caught.value.tag) == ("stapler", "force_sp")
    assert "read back 900.0" in str(caught.value)


async def test_a_robot_faulting_after_the_program_load_is_a_device_fault() -> None:
    devices = soft_cell(CELL)
    robot = devices["robot1"]
    robot.on_write(lambda tag, _value: robot.set("fault_code", 7) if tag == "program" else None)
    with pytest.raises(DeviceFault, match="fault code 7"):
        await _run(_step(StepKind.ROBOT_PROGRAM, "robot1", program=12), devices)


async def test_moving_a_clamped_fixture_is_refused_without_a_write() -> None:
    devices = soft_cell(CELL, initial={"fixture": {"clamped": True}})
    with pytest.raises(DeviceFault, match="clamps are closed"):
        await _run(_step(StepKind.FIXTURE_MOVE, "fixture", width=520.0), devices)
    assert devices["fixture"].writes == []


async def test_a_changer_that_mounts_another_tool_never_confirms() -> None:
    # Given a changer that mounts tool 1 whatever is asked, the handshake does not confirm tool 2.
    devices = soft_cell(CELL)
    changer = devices["toolchanger"]
    changer.on_write(lambda tag, _value: changer.set("tool_current", 1) if tag == "tool_request" else None)
    step = PlanStep(
        id="t",
        kind="tool_change",
        device="toolchanger",
        description="",
        params=(("tool", 2),),
        timeout_s=0.05,
    )
    with pytest.raises(DeviceFault, match="tool change to 2 did not finish"):
        await _run(step, devices)


def test_check_plan_refuses_an_unknown_kind_and_a_wrong_device_in_one_error() -> None:
    plan = ChangeoverPlan(
        from_variant=None,
        to_variant="x",
        steps=(
            PlanStep(id="a", kind="weld", device="robot1", description=""),
            PlanStep(id="b", kind="tool_change", device="robot1", description="", params=(("tool", 1),)),
            PlanStep(id="c", kind="fixture_clamp", device="oven", description=""),
        ),
    )
    with pytest.raises(PlanError) as caught:
        check_plan(plan, _profiles(soft_cell(CELL)))
    message = str(caught.value)
    assert "no handler for step kind 'weld'" in message
    assert "'robot1' is a Robot, a tool_change step needs a ToolChanger" in message
    assert "no device 'oven'" in message


def test_check_plan_takes_a_custom_registry() -> None:
    async def noop(_step: PlanStep, _ctx: StepContext) -> None:
        return None

    plan = ChangeoverPlan(
        from_variant=None, to_variant="x", steps=(PlanStep(id="a", kind="noop", device=None, description=""),)
    )
    check_plan(plan, {}, {"noop": StepHandler("noop", noop)})
    with pytest.raises(PlanError):
        check_plan(plan, {})
