"""Step handlers: a registry from step kind to the async handler that does a step and checks it by read-back.

Adding a step kind adds one handler here. Handlers drive devices through their profiles' handshakes and raise
WriteVerifyError or DeviceFault when the device does not end up where the step asked; the sequencer owns
timeouts, retries and the recording of outcomes.

A kind may also have a finalizer, registered here next to its handler: what leaves the device safe when the
step is cut (Hold, Stop, Suspend, Abort, or another step's failure). The sequencer runs it once, in the cut
step's task, under the changeover's ``abort_deadline_s``. Finalizers per kind:

- ``fixture_move``: stops the axes where they are by re-targeting each moving axis' setpoint to its actual
  position (the profile has no stop tag; a fixture follows its setpoint, so this is its stop).
- ``fixture_unclamp`` / ``fixture_clamp``: withdraw the clamp command, writing back the state ``clamped``
  reads, so clamps do not finish a stroke nobody waits for any more.
- ``tool_change``: none. A tool changer has no stop and refuses a new request while it moves; a change cut
  half way must complete its coupling (that is why Hold lets it finish). Its request is the target the
  changer reaches on its own, and the next plan reads ``tool_current`` back.
- ``robot_program``: none. Loading a program moves nothing and holds no strobe; the next plan reads
  ``active_program`` back. (A robot cycle's ``start`` is dropped by the profile itself, shielded.)
- ``setpoints``: none. A setpoint is a value, not a command; the next plan reads each back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from cellctl.core.devices import Fixture, Profile, Robot, ToolChanger, axis_actual_tag, axis_setpoint_tag
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.core.tags import TagValue
from cellctl.engine.confirm import Confirmation, PromptKind
from cellctl.engine.planner import OPERATOR_KIND, position_matches, setpoint_matches
from cellctl.errors import DeviceFault, PlanError, WriteVerifyError
from cellctl.schema.cell import StepKind

_P = TypeVar("_P", bound=Profile)


Ask = Callable[[PlanStep, PromptKind], Awaitable[Confirmation]]
"""Shows a step's prompt to the operator and waits for an accepted answer (the sequencer records it)."""


async def _nobody_answers(step: PlanStep, _kind: PromptKind) -> Confirmation:
    raise PlanError(f"step {step.id!r} needs an operator, and this run has nobody to ask")


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler may use: the profiles of the cell's devices, by device name, and the operator."""

    profiles: Mapping[str, Profile]
    ask: Ask = field(default=_nobody_answers)

    def profile(self, step: PlanStep, kind: type[_P]) -> _P:
        """The profile of the step's device, which must be a ``kind``; PlanError otherwise."""
        if step.device is None:
            raise PlanError(f"step {step.id!r} names no device")
        profile = self.profiles.get(step.device)
        if profile is None:
            raise PlanError(f"step {step.id!r}: no device {step.device!r} in the cell")
        if not isinstance(profile, kind):
            raise PlanError(
                f"step {step.id!r}: device {step.device!r} is a {type(profile).__name__}, "
                f"not a {kind.__name__}"
            )
        return profile


StepFn = Callable[[PlanStep, StepContext], Awaitable[None]]
"""Performs one step and verifies its result; returns normally only when the device confirmed it."""


@dataclass(frozen=True, slots=True)
class StepHandler:
    """A step kind's handler, the profile its device must have (None: any device, or none) and its finalizer
    (None: nothing to undo when the step is cut)."""

    kind: str
    run: StepFn
    profile: type[Profile] | None = None
    finalize: StepFn | None = None


REGISTRY: dict[str, StepHandler] = {}
"""Step kind -> handler; the sequencer's default."""


def register(kind: str, *, profile: type[Profile] | None = None) -> Callable[[StepFn], StepFn]:
    """Register the decorated function as the handler of ``kind`` (one handler per kind)."""

    def decorate(fn: StepFn) -> StepFn:
        if kind in REGISTRY:
            raise ValueError(f"step kind {kind!r} already has a handler")
        REGISTRY[kind] = StepHandler(kind, fn, profile)
        return fn

    return decorate


def finalizer(kind: str) -> Callable[[StepFn], StepFn]:
    """Register the decorated function as the finalizer of ``kind``, whose handler is registered already."""

    def decorate(fn: StepFn) -> StepFn:
        handler = REGISTRY.get(kind)
        if handler is None:
            raise ValueError(f"step kind {kind!r} has no handler to add a finalizer to")
        if handler.finalize is not None:
            raise ValueError(f"step kind {kind!r} already has a finalizer")
        REGISTRY[kind] = replace(handler, finalize=fn)
        return fn

    return decorate


def check_plan(
    plan: ChangeoverPlan, profiles: Mapping[str, Profile], registry: Mapping[str, StepHandler] | None = None
) -> None:
    """Raise PlanError listing every step that has no handler or no suitable device, before anything runs."""
    handlers = REGISTRY if registry is None else registry
    problems: list[str] = []
    for step in plan.steps:
        handler = handlers.get(step.kind)
        if handler is None:
            problems.append(f"step {step.id!r}: no handler for step kind {step.kind!r}")
            continue
        if handler.profile is None:
            continue
        profile = profiles.get(step.device) if step.device is not None else None
        if profile is None:
            problems.append(f"step {step.id!r}: no device {step.device!r} to run it on")
        elif not isinstance(profile, handler.profile):
            problems.append(
                f"step {step.id!r}: device {step.device!r} is a {type(profile).__name__}, "
                f"a {step.kind} step needs a {handler.profile.__name__}"
            )
    if problems:
        raise PlanError("; ".join(problems))


def _int_arg(step: PlanStep, name: str) -> int:
    value = step.args.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"step {step.id!r}: parameter {name!r} must be a whole number, not {value!r}")
    return value


def _float_args(step: PlanStep) -> dict[str, float]:
    result: dict[str, float] = {}
    for name, value in step.params:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PlanError(f"step {step.id!r}: position {name!r} must be a number, not {value!r}")
        result[name] = float(value)
    return result


async def _commanded(profile: Profile, tag: str) -> TagValue | None:
    """What a command tag holds now, or None when it cannot be read back (a write-only tag, a BAD reading)."""
    reading = await profile.tag(tag).read()
    return reading.value if reading.usable else None


async def _verify_clamped(fixture: Fixture, closed: bool) -> None:
    value = await fixture.tag("clamped").read_value()
    if value != closed:
        word = "closed" if closed else "open"
        raise WriteVerifyError(fixture.device, f"clamps should be {word}, read back {value!r}", tag="clamped")


@register(StepKind.TOOL_CHANGE, profile=ToolChanger)
async def tool_change(step: PlanStep, ctx: StepContext) -> None:
    """Mount the step's ``tool`` and confirm ``tool_current`` reads it back."""
    changer = ctx.profile(step, ToolChanger)
    tool = _int_arg(step, "tool")
    await changer.change(tool, step.timeout_s)
    mounted = await changer.current_tool()
    if mounted != tool:
        raise WriteVerifyError(
            changer.device, f"requested tool {tool}, mounted {mounted}", tag="tool_current"
        )


@register(StepKind.FIXTURE_UNCLAMP, profile=Fixture)
async def fixture_unclamp(step: PlanStep, ctx: StepContext) -> None:
    """Open the fixture's clamps and confirm ``clamped`` reads false."""
    fixture = ctx.profile(step, Fixture)
    await fixture.set_clamped(False, step.timeout_s)
    await _verify_clamped(fixture, False)


@finalizer(StepKind.FIXTURE_UNCLAMP)
async def withdraw_clamp_command(step: PlanStep, ctx: StepContext) -> None:
    """Write the clamp command back to what ``clamped`` reads, so a cut stroke does not finish later."""
    fixture = ctx.profile(step, Fixture)
    clamped = bool(await fixture.tag("clamped").read_value())
    command = await _commanded(fixture, "clamp")
    if command is None or bool(command) != clamped:  # else no stroke is pending: no write
        await fixture.tag("clamp").write(clamped)


@register(StepKind.FIXTURE_MOVE, profile=Fixture)
async def fixture_move(step: PlanStep, ctx: StepContext) -> None:
    """Move the fixture's axes to the step's positions and confirm each actual within tolerance."""
    fixture = ctx.profile(step, Fixture)
    positions = _float_args(step)
    # A clamped fixture refuses to move; say so rather than wait for a move that never starts.
    if await fixture.tag("clamped").read_value():
        raise DeviceFault(fixture.device, "clamps are closed: the fixture cannot move", tag="clamped")
    await fixture.move(positions, step.timeout_s)
    for axis, target in positions.items():
        actual = await fixture.position(axis)
        if not position_matches(actual, target):
            raise WriteVerifyError(
                fixture.device,
                f"axis {axis} should be at {target:g}, is at {actual:g}",
                tag=axis_actual_tag(axis),
            )


@finalizer(StepKind.FIXTURE_MOVE)
async def stop_fixture_move(step: PlanStep, ctx: StepContext) -> None:
    """Stop each axis of the step where it is: its setpoint re-targeted to its actual position."""
    fixture = ctx.profile(step, Fixture)
    for axis, target in _float_args(step).items():
        actual = await fixture.position(axis)
        setpoint = await _commanded(fixture, axis_setpoint_tag(axis))
        # An axis at its target (or never started) is left alone: re-targeting it would be a new command.
        idle = isinstance(setpoint, int | float) and position_matches(float(setpoint), actual)
        if not position_matches(actual, target) and not idle:
            await fixture.tag(axis_setpoint_tag(axis)).write(actual)


@register(StepKind.FIXTURE_CLAMP, profile=Fixture)
async def fixture_clamp(step: PlanStep, ctx: StepContext) -> None:
    """Close the fixture's clamps and confirm ``clamped`` reads true."""
    fixture = ctx.profile(step, Fixture)
    await fixture.set_clamped(True, step.timeout_s)
    await _verify_clamped(fixture, True)


finalizer(StepKind.FIXTURE_CLAMP)(withdraw_clamp_command)


@register(StepKind.ROBOT_PROGRAM, profile=Robot)
async def robot_program(step: PlanStep, ctx: StepContext) -> None:
    """Load the step's ``program`` and confirm ``active_program`` reads it back with no fault."""
    robot = ctx.profile(step, Robot)
    program = _int_arg(step, "program")
    await robot.load_program(program, step.timeout_s)
    active = await robot.active_program()
    if active != program:
        raise WriteVerifyError(
            robot.device, f"requested program {program}, active {active}", tag="active_program"
        )
    code = await robot.tag("fault_code").read_value()
    if code:
        raise DeviceFault(robot.device, f"robot reports fault code {code} after loading", tag="fault_code")


@register(StepKind.SETPOINTS, profile=Profile)
async def setpoints(step: PlanStep, ctx: StepContext) -> None:
    """Write the step's setpoints and confirm each reads back equal (numbers within a tolerance)."""
    profile = ctx.profile(step, Profile)
    values: dict[str, TagValue] = step.args
    for name, value in values.items():
        await profile.tag(name).write(value)
    for name, value in values.items():
        actual = await profile.tag(name).read_value()
        if not setpoint_matches(actual, value):
            raise WriteVerifyError(profile.device, f"wrote {value!r}, read back {actual!r}", tag=name)


@register(OPERATOR_KIND)
async def operator(step: PlanStep, ctx: StepContext) -> None:
    """Show the person the step's instruction and wait until they confirm it with the evidence it asks.

    Nothing is read back: the evidence is the check. The step's timeout (minutes, from the recipe) bounds the
    wait; cancelling it (Hold, Stop, Abort, the timeout) withdraws the prompt.
    """
    await ctx.ask(step, PromptKind.OPERATOR_STEP)


__all__ = [
    "REGISTRY",
    "StepContext",
    "StepFn",
    "StepHandler",
    "check_plan",
    "finalizer",
    "register",
]
