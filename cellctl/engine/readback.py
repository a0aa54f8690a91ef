"""Read-back of a step's result: whether the devices already show what a changeover step would leave them in.

Used after a restart to settle a step whose outcome the journal cannot tell: a step whose result reads back is
verified and never commanded again. A step kind without a readable result (an operator step) never verifies.
"""

from __future__ import annotations

from collections.abc import Mapping

from cellctl.core.devices import Fixture, Profile, Robot, ToolChanger
from cellctl.core.plans import PlanStep
from cellctl.core.tags import TagValue
from cellctl.engine.planner import position_matches, setpoint_matches
from cellctl.schema.cell import StepKind


async def reached(step: PlanStep, profiles: Mapping[str, Profile]) -> bool:
    """True when the step's device reads back the step's result; DeviceError when a read fails."""
    profile = profiles.get(step.device) if step.device is not None else None
    if profile is None:
        return False
    args = step.args
    kind = step.kind
    if kind == StepKind.TOOL_CHANGE and isinstance(profile, ToolChanger):
        return await profile.current_tool() == args.get("tool")
    if kind == StepKind.ROBOT_PROGRAM and isinstance(profile, Robot):
        return await profile.active_program() == args.get("program")
    if kind in (StepKind.FIXTURE_UNCLAMP, StepKind.FIXTURE_CLAMP) and isinstance(profile, Fixture):
        clamped = await profile.tag("clamped").read_value()
        return isinstance(clamped, bool) and clamped == (kind == StepKind.FIXTURE_CLAMP)
    if kind == StepKind.FIXTURE_MOVE and isinstance(profile, Fixture):
        for axis, target in args.items():
            if not isinstance(target, int | float) or isinstance(target, bool):
                return False
            if not position_matches(await profile.position(axis), float(target)):
                return False
        return True
    if kind == StepKind.SETPOINTS:
        values: dict[str, TagValue] = args
        for name, target in values.items():
            if not setpoint_matches(await profile.tag(name).read_value(), target):
                return False
        return True
    return False


__all__ = ["reached"]
