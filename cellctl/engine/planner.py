"""Changeover planning: read the current setup back, and turn its difference to a recipe's setup into a plan.

``plan_changeover`` is pure: the same setups, recipe and templates give the same plan. It emits one step per
setting that differs (a fixture's differing positions need three: unclamp, move, clamp), instantiated from the
cell's step templates, plus the recipe's operator steps (kind ``operator``: a person's work, confirmed with
evidence) when the changeover is to the variant from another one, and orders them so that the sequencer can
run the plan as a DAG.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from cellctl.core.devices import (
    Fixture,
    Profile,
    ProfileKind,
    Robot,
    ToolChanger,
    axis_actual_tag,
    axis_setpoint_tag,
)
from cellctl.core.plans import ChangeoverPlan, DeviceSetup, PlanStep, Setup
from cellctl.core.tags import TagValue
from cellctl.engine.durations import StepDurations
from cellctl.errors import DeviceFault, PlanError
from cellctl.schema.cell import CellConfig, Smed, StepKind, StepTemplate
from cellctl.schema.ordering import FIXTURE_SEQUENCE, Node, OrderCycle, node_of, step_order
from cellctl.schema.recipe import OperatorStep, Recipe

_log = structlog.get_logger(__name__)

_P = TypeVar("_P", bound=Profile)

POSITION_TOLERANCE = 0.05
"""Two fixture positions closer than this (in the axis' units) are the same setting."""

SETPOINT_REL_TOL = 1e-6
"""Two numeric setpoints within this relative difference are the same setting (float32 registers round)."""

_SETPOINT_ABS_TOL = 1e-9

OPERATOR_KIND = "operator"
"""Step kind of a recipe's operator steps: a person does the work and confirms it."""


# ------------------------------------------------------------------------------------------------------------
# Comparing settings: the planner (does it differ?) and the step handlers (did it arrive?) share these.


def position_matches(current: float | None, target: float) -> bool:
    """True when a fixture axis at ``current`` needs no move to reach ``target``."""
    return current is not None and math.isfinite(current) and abs(current - target) <= POSITION_TOLERANCE


def setpoint_matches(current: TagValue | None, target: TagValue) -> bool:
    """True when a setpoint reading ``current`` already equals ``target`` (numbers within a tolerance)."""
    if current is None:
        return False
    if isinstance(current, bool) or isinstance(target, bool):
        return current == target
    if isinstance(current, str) or isinstance(target, str):
        return current == target
    return math.isclose(float(current), float(target), rel_tol=SETPOINT_REL_TOL, abs_tol=_SETPOINT_ABS_TOL)


# ------------------------------------------------------------------------------------------------------------
# Checking a recipe against the cell, so nothing is planned or read for a device or tag that is not there.


def _check_recipe(recipe: Recipe, cell: CellConfig) -> None:
    """Raise PlanError listing every setting of ``recipe`` the cell cannot hold."""
    problems: list[str] = []
    for device, setup in recipe.setup.items():
        where = f"recipe {recipe.variant!r}: setup.{device}"
        config = cell.devices.get(device)
        if config is None:
            problems.append(f"{where}: no device {device!r} in the cell")
            continue
        profile = config.profile
        if setup.tool is not None:
            if profile is not ProfileKind.TOOL_CHANGER:
                problems.append(f"{where}.tool: {device!r} is a {profile.value}, not a tool_changer")
            elif setup.tool not in config.tools:
                known = ", ".join(sorted(config.tools)) or "none"
                problems.append(f"{where}.tool: unknown tool {setup.tool!r} (known: {known})")
        if setup.program is not None and profile is not ProfileKind.ROBOT:
            problems.append(f"{where}.program: {device!r} is a {profile.value}, not a robot")
        if setup.positions and profile is not ProfileKind.FIXTURE:
            problems.append(f"{where}.positions: {device!r} is a {profile.value}, not a fixture")
        elif setup.positions:
            for axis in setup.positions:
                for tag in (axis_setpoint_tag(axis), axis_actual_tag(axis)):
                    if tag not in config.tags:
                        problems.append(f"{where}.positions.{axis}: device has no tag {tag!r}")
        for name in setup.setpoints:
            tag_config = config.tags.get(name)
            if tag_config is None:
                problems.append(f"{where}.setpoints.{name}: device has no tag {name!r}")
            elif not tag_config.writable:
                problems.append(f"{where}.setpoints.{name}: tag {name!r} is not writable")
    if problems:
        raise PlanError("; ".join(problems))


def target_setup(recipe: Recipe, cell: CellConfig) -> dict[str, DeviceSetup]:
    """The setup ``recipe`` asks of each device it names, with tool names turned into tool numbers."""
    _check_recipe(recipe, cell)
    result: dict[str, DeviceSetup] = {}
    for device, setup in recipe.setup.items():
        tool = cell.devices[device].tools[setup.tool] if setup.tool is not None else None
        result[device] = DeviceSetup(
            tool=tool,
            program=setup.program,
            positions=dict(setup.positions),
            setpoints=dict(setup.setpoints),
        )
    return result


# ------------------------------------------------------------------------------------------------------------
# Reading the current setup back from the devices: never assumed.


@dataclass
class _Wanted:
    """What some recipe sets on one device, so that is what must be read back."""

    tool: bool = False
    program: bool = False
    axes: list[str] = field(default_factory=list)
    setpoints: list[str] = field(default_factory=list)


def _wanted(recipes: Iterable[Recipe]) -> dict[str, _Wanted]:
    wanted: dict[str, _Wanted] = {}
    for recipe in recipes:
        for device, setup in recipe.setup.items():
            entry = wanted.setdefault(device, _Wanted())
            entry.tool |= setup.tool is not None
            entry.program |= setup.program is not None
            entry.axes.extend(a for a in setup.positions if a not in entry.axes)
            entry.setpoints.extend(s for s in setup.setpoints if s not in entry.setpoints)
    return wanted


def _profile_of(profiles: Mapping[str, Profile], device: str, kind: type[_P]) -> _P:
    profile = profiles.get(device)
    if profile is None:
        raise PlanError(f"no profile for device {device!r}: it cannot be read")
    if not isinstance(profile, kind):
        raise PlanError(f"device {device!r} is a {type(profile).__name__}, not a {kind.__name__}")
    return profile


def _number(device: str, tag: str, value: TagValue) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DeviceFault(device, f"expected a number, read {value!r}", tag=tag)
    return float(value)


def _integer(device: str, tag: str, value: TagValue) -> int:
    number = _number(device, tag, value)
    if not number.is_integer():
        raise DeviceFault(device, f"expected a whole number, read {value!r}", tag=tag)
    return int(number)


async def read_setup(
    profiles: Mapping[str, Profile], cell: CellConfig, recipes: Mapping[str, Recipe]
) -> dict[str, DeviceSetup]:
    """The setup the devices report now, for every setting any recipe names.

    Tool numbers come from ``tool_current``, programs from ``active_program``, axes from ``<axis>_act`` and
    setpoints from their own tags. A tag without a usable reading raises CommError naming it.
    """
    for recipe in recipes.values():
        _check_recipe(recipe, cell)
    current: dict[str, DeviceSetup] = {}
    for device, wanted in _wanted(recipes.values()).items():
        tool: int | None = None
        program: int | None = None
        positions: dict[str, float] = {}
        setpoints: dict[str, TagValue] = {}
        clamped: bool | None = None
        if wanted.tool:
            changer = _profile_of(profiles, device, ToolChanger)
            tool = _integer(device, "tool_current", await changer.tag("tool_current").read_value())
        if wanted.program:
            robot = _profile_of(profiles, device, Robot)
            program = _integer(device, "active_program", await robot.tag("active_program").read_value())
        if wanted.axes:
            fixture = _profile_of(profiles, device, Fixture)
            for axis in wanted.axes:
                tag = axis_actual_tag(axis)
                positions[axis] = _number(device, tag, await fixture.tag(tag).read_value())
            # A fixture left unclamped at its positions (a changeover stopped before its clamp) is not set up.
            clamped = bool(await fixture.tag("clamped").read_value())
        if wanted.setpoints:
            profile = _profile_of(profiles, device, Profile)
            for name in wanted.setpoints:
                setpoints[name] = await profile.tag(name).read_value()
        current[device] = DeviceSetup(
            tool=tool, program=program, positions=positions, setpoints=setpoints, clamped=clamped
        )
    _log.debug("setup read back", devices=sorted(current))
    return current


# ------------------------------------------------------------------------------------------------------------
# Planning.


def _kind_order(
    templates: Mapping[StepKind, StepTemplate], operator_steps: Mapping[str, OperatorStep] | None = None
) -> list[Node]:
    """Step kinds and operator steps in an order that respects every ``after``, ``before`` and a fixture's own
    sequence; a template or operator step that contradicts them is a PlanError naming what is in the cycle.
    """
    try:
        return step_order(templates, operator_steps)
    except OrderCycle as exc:
        nodes = ", ".join(str(n) for n in exc.nodes)
        raise PlanError(
            f"changeover templates order these step kinds in a cycle: {nodes} "
            "(a fixture always unclamps, moves, then clamps)"
        ) from exc


def _describe_value(value: float) -> str:
    return f"{value:g}"


def _differences(
    device: str, have: DeviceSetup, want: DeviceSetup, tools: Mapping[str, int]
) -> dict[StepKind, tuple[tuple[tuple[str, TagValue], ...], str]]:
    """The steps one device needs, by kind, with their parameters and a description."""
    needed: dict[StepKind, tuple[tuple[tuple[str, TagValue], ...], str]] = {}
    if want.tool is not None and have.tool != want.tool:
        names = {number: name for name, number in tools.items()}
        label = names.get(want.tool, str(want.tool))
        was = "none" if not have.tool else names.get(have.tool, str(have.tool))
        needed[StepKind.TOOL_CHANGE] = ((("tool", want.tool),), f"{device}: change tool {was} -> {label}")
    if want.program is not None and have.program != want.program:
        needed[StepKind.ROBOT_PROGRAM] = (
            (("program", want.program),),
            f"{device}: load program {want.program} (was {have.program or 'none'})",
        )
    moves = {
        axis: float(target)
        for axis, target in want.positions.items()
        if not position_matches(have.positions.get(axis), float(target))
    }
    if moves:
        text = ", ".join(f"{axis} {_describe_value(target)}" for axis, target in moves.items())
        needed[StepKind.FIXTURE_UNCLAMP] = ((), f"{device}: unclamp")
        needed[StepKind.FIXTURE_MOVE] = (tuple(moves.items()), f"{device}: move {text}")
        needed[StepKind.FIXTURE_CLAMP] = ((), f"{device}: clamp")
    elif want.positions and have.clamped is False:
        needed[StepKind.FIXTURE_CLAMP] = ((), f"{device}: clamp (in position, left unclamped)")
    writes = {
        name: value
        for name, value in want.setpoints.items()
        if not setpoint_matches(have.setpoints.get(name), value)
    }
    if writes:
        text = ", ".join(f"{name}={value!r}" for name, value in writes.items())
        needed[StepKind.SETPOINTS] = (tuple(writes.items()), f"{device}: set {text}")
    return needed


def step_id(device: str, kind: StepKind | str) -> str:
    """Id of the step of ``kind`` on ``device``: one per device and kind, so it is unique in a plan."""
    return f"{device}:{kind}"


def operator_step_id(name: str) -> str:
    """Id of a recipe's operator step ``name`` in a plan (never a device step's: no step kind is its name)."""
    return f"{OPERATOR_KIND}:{name}"


def operator_steps_due(
    target: Recipe, *, from_variant: str | None, devices_differ: bool, resuming: bool = False
) -> bool:
    """Whether a changeover to ``target`` includes its operator steps.

    Yes from another variant; from an unknown one only when some device setting differs (a cell whose setup
    already matches is set up for the variant); never when the cell is set up for the variant already. When
    ``resuming`` a changeover that included them, yes: a person's work is not read back from any device.
    """
    if resuming:
        return True
    if from_variant == target.variant:
        return False
    return from_variant is not None or devices_differ


def _operator_step(name: str, step: OperatorStep, after: list[str]) -> PlanStep:
    where = f" at {step.device}" if step.device else ""
    return PlanStep(
        id=operator_step_id(name),
        kind=OPERATOR_KIND,
        device=step.device,
        description=f"operator{where}: {step.instruction}",
        after=tuple(after),
        expected_s=step.expected_s,
        timeout_s=step.timeout_s,
        external=step.smed is Smed.EXTERNAL,
        instruction=step.instruction,
        evidence=step.evidence.ask if step.evidence else None,
        expected_evidence=step.evidence.expect if step.evidence else None,
    )


def plan_changeover(
    current: Setup,
    target: Recipe,
    cell: CellConfig,
    *,
    from_variant: str | None,
    confirmed: Collection[str] = (),
    resuming: bool = False,
    durations: StepDurations | None = None,
) -> ChangeoverPlan:
    """The plan that takes the cell from ``current`` to ``target``'s setup: one step per differing setting,
    plus the recipe's operator steps when they are due (see ``operator_steps_due``).

    Dependencies: a template's or operator step's ``after`` become the instantiated steps of those kinds and
    operator steps (dropped when none is in the plan), an operator step's ``before`` likewise the other way;
    steps of one device are chained, so a device does one thing at a time. ``resuming`` an interrupted
    changeover that included the operator steps keeps them due; those whose ids are in ``confirmed`` (done
    already for this changeover) are left out, and what waited for them waits for what they waited for. A
    device step's ``expected_s`` is the measured one from ``durations`` where there are enough measurements,
    the template's otherwise; its timeout is always the template's (a measured median is no safe bound).
    """
    wanted = target_setup(target, cell)
    templates = cell.changeover.steps
    operator_steps = target.operator_steps
    nodes = _kind_order(templates, operator_steps)
    devices = [d for d in cell.devices if d in wanted]

    needed: dict[str, dict[StepKind, tuple[tuple[tuple[str, TagValue], ...], str]]] = {}
    for device in devices:
        config = cell.devices[device]
        have = current.get(device, DeviceSetup())
        needed[device] = _differences(device, have, wanted[device], config.tools)

    due = operator_steps_due(
        target,
        from_variant=from_variant,
        devices_differ=any(needed[d] for d in devices),
        resuming=resuming,
    )
    # What a dependency on a node means: the steps instantiated for it. An operator step left out stands for
    # what it came after, so the order through it holds.
    means: dict[Node, list[str]] = {}
    steps: list[PlanStep] = []
    last_on_device: dict[str, str] = {}

    def waits_for(node: Node, refs: Iterable[Node]) -> list[str]:
        after: list[str] = []
        preceding = [*refs, *(n for n, op in operator_steps.items() if node in map(node_of, op.before))]
        for ref in preceding:
            after.extend(s for s in means.get(ref, []) if s not in after)
        return after

    def chained(after: list[str], device: str | None) -> list[str]:
        previous = last_on_device.get(device) if device is not None else None
        if previous is not None and previous not in after:
            after.append(previous)
        return after

    for node in nodes:
        if not isinstance(node, StepKind):
            op = operator_steps[node]
            after = waits_for(node, map(node_of, op.after))
            sid = operator_step_id(node)
            if not due or sid in confirmed:
                means[node] = after
            else:
                steps.append(_operator_step(node, op, chained(after, op.device)))
                means[node] = [sid]
                if op.device is not None:
                    last_on_device[op.device] = sid
            continue
        kind = node
        template = templates.get(kind, StepTemplate())
        means[kind] = []
        for device in devices:
            if kind not in needed[device]:
                continue
            params, description = needed[device][kind]
            sid = step_id(device, kind)
            steps.append(
                PlanStep(
                    id=sid,
                    kind=kind.value,
                    device=device,
                    description=description,
                    params=params,
                    after=tuple(chained(waits_for(kind, template.after), device)),
                    expected_s=(
                        template.expected_s
                        if durations is None
                        else durations.expected_s(device, kind.value, template.expected_s)
                    ),
                    timeout_s=template.timeout_s,
                    external=template.smed is Smed.EXTERNAL,
                    retries=template.retries,
                    interruptible=template.interruptible,
                )
            )
            means[kind].append(sid)
            last_on_device[device] = sid
    plan = ChangeoverPlan(from_variant=from_variant, to_variant=target.variant, steps=tuple(steps))
    _log.debug(
        "changeover planned",
        from_variant=from_variant,
        to_variant=target.variant,
        steps=[s.id for s in plan.steps],
    )
    return plan


__all__ = [
    "FIXTURE_SEQUENCE",
    "OPERATOR_KIND",
    "POSITION_TOLERANCE",
    "SETPOINT_REL_TOL",
    "operator_step_id",
    "operator_steps_due",
    "plan_changeover",
    "position_matches",
    "read_setup",
    "setpoint_matches",
    "step_id",
    "target_setup",
]
