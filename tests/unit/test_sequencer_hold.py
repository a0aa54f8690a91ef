"""Hold and Abort of a changeover run on soft devices: interruptible steps are cut and finalized, the others
finish, finalizers run under their deadline; and the config that says which steps a Hold may cut."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from cellctl.core.clock import ManualClock
from cellctl.core.devices import make_profile
from cellctl.core.events import StepEvent, StepStatus
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.drivers.soft import SoftDriver
from cellctl.engine.planner import plan_changeover, target_setup
from cellctl.engine.sequencer import CANCELLED, FINALIZED, RunControl, RunResult, Sequencer
from cellctl.engine.steps import REGISTRY, StepContext, StepHandler
from cellctl.errors import PlanHeld, SequenceError
from cellctl.schema.cell import ChangeoverConfig, StepKind
from cellctl.schema.load import load_config
from tests.softcell import StalledFixture, soft_cell
from tests.unit.test_sequencer import RecordingSink

EXAMPLE = load_config(Path(__file__).resolve().parents[2] / "config")
CELL = EXAMPLE.cell
BOUND = 5.0
"""Upper bound on any wait here (s): a hang fails the test instead of blocking the suite."""

Handler = Callable[[PlanStep, StepContext], Awaitable[None]]


class Probe:
    """Test step kinds: ``wait`` runs until its step's gate opens, ``now`` returns at once; both count their
    runs and finalizer calls by step id."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.runs: list[str] = []
        self.finalized: list[str] = []
        self.finalizer: Handler | None = None

    def gate(self, step_id: str) -> asyncio.Event:
        return self.gates.setdefault(step_id, asyncio.Event())

    async def wait(self, step: PlanStep, _ctx: StepContext) -> None:
        self.runs.append(step.id)
        await self.gate(step.id).wait()

    async def now(self, step: PlanStep, _ctx: StepContext) -> None:
        self.runs.append(step.id)

    async def finalize(self, step: PlanStep, ctx: StepContext) -> None:
        self.finalized.append(step.id)
        if self.finalizer is not None:
            await self.finalizer(step, ctx)

    def registry(self) -> dict[str, StepHandler]:
        return {
            "wait": StepHandler("wait", self.wait, finalize=self.finalize),
            "now": StepHandler("now", self.now, finalize=self.finalize),
        }


def _step(kind: str, sid: str, *after: str, device: str | None = None, **extra: Any) -> PlanStep:
    return PlanStep(
        id=sid, kind=kind, device=device, description="", after=after, **{"timeout_s": BOUND, **extra}
    )


def _plan(*steps: PlanStep) -> ChangeoverPlan:
    return ChangeoverPlan(from_variant="a", to_variant="b", steps=steps)


def _sequencer(
    sink: RecordingSink,
    registry: Mapping[str, StepHandler] | None = None,
    devices: Mapping[str, SoftDriver] | None = None,
    **options: float,
) -> Sequencer:
    devices = devices or soft_cell(CELL)
    profiles = {
        name: make_profile(config.profile, name, devices[name], config.tags)
        for name, config in CELL.devices.items()
    }
    return Sequencer(profiles, sink, ManualClock(), registry=registry, **options)


def _start(sequencer: Sequencer, plan: ChangeoverPlan, control: RunControl) -> asyncio.Task[RunResult]:
    return asyncio.get_running_loop().create_task(
        sequencer.run(plan, changeover_id="co-1", job_id="job-1", control=control), name="run"
    )


def _is(step: str, status: StepStatus) -> Callable[[object], bool]:
    return lambda e: isinstance(e, StepEvent) and e.step == step and e.status is status


def _step_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("step:") and not t.done()]


async def _outcome(run: asyncio.Task[RunResult]) -> BaseException | RunResult:
    async with asyncio.timeout(BOUND):
        try:
            return await run
        except (Exception, asyncio.CancelledError) as exc:
            return exc


# ------------------------------------------------------------------------------------------------------------
# Hold


async def test_hold_cuts_the_interruptible_step_lets_the_other_finish_and_starts_no_new_one() -> None:
    # Given an interruptible and a non-interruptible step running and a step waiting for the latter, when the
    # run is held, then the interruptible one is FAILED "cancelled" with its finalizer called, the other is
    # DONE once it finishes, the waiting one never starts, and the run raises PlanHeld naming both.
    probe = Probe()
    sink = RecordingSink()
    plan = _plan(
        _step("wait", "move", device="fixture"),
        _step("wait", "tool", device="toolchanger", interruptible=False),
        _step("now", "program", "tool", device="robot1"),
    )
    control = RunControl()
    run = _start(_sequencer(sink, probe.registry()), plan, control)
    await sink.wait_for(_is("move", StepStatus.STARTED))
    await sink.wait_for(_is("tool", StepStatus.STARTED))

    control.hold()
    await sink.wait_for(_is("move", StepStatus.FAILED))
    assert not run.done()  # parked only once the tool change is through
    probe.gate("tool").set()
    outcome = await _outcome(run)

    assert isinstance(outcome, PlanHeld)
    assert (outcome.done, outcome.cut) == (("tool",), ("move",))
    assert sink.of("move")[-1].detail == FINALIZED
    assert sink.of("tool")[-1].status is StepStatus.DONE
    assert probe.finalized == ["move"]
    assert sink.of("program") == [] and probe.runs == ["move", "tool"]
    assert _step_tasks() == []


async def test_a_hold_between_steps_parks_with_nothing_cut() -> None:
    # Given a hold asked while the first step finishes, then its successor never starts and nothing is cut.
    control = RunControl()
    probe = Probe()

    async def hold_then_return(step: PlanStep, _ctx: StepContext) -> None:
        probe.runs.append(step.id)
        control.hold("stop")

    registry = {**probe.registry(), "hold": StepHandler("hold", hold_then_return)}
    sink = RecordingSink()
    outcome = await _outcome(
        _start(_sequencer(sink, registry), _plan(_step("hold", "a"), _step("now", "b", "a")), control)
    )
    assert isinstance(outcome, PlanHeld)
    assert (outcome.done, outcome.cut) == (("a",), ())
    assert "held by stop" in str(outcome)
    assert sink.steps == [("a", StepStatus.STARTED), ("a", StepStatus.DONE)]
    assert probe.runs == ["a"] and probe.finalized == []


async def test_a_run_asked_to_hold_before_it_starts_starts_nothing() -> None:
    control = RunControl()
    control.hold()
    probe = Probe()
    sink = RecordingSink()
    outcome = await _outcome(_start(_sequencer(sink, probe.registry()), _plan(_step("now", "a")), control))
    assert isinstance(outcome, PlanHeld) and outcome.done == ()
    assert sink.events == [] and probe.runs == []


async def test_a_hold_that_only_waits_for_the_last_steps_ends_in_a_completed_run() -> None:
    # Given only a non-interruptible step left, when held, then it finishes and the run completes normally.
    probe = Probe()
    sink = RecordingSink()
    control = RunControl()
    run = _start(
        _sequencer(sink, probe.registry()), _plan(_step("wait", "tool", interruptible=False)), control
    )
    await sink.wait_for(_is("tool", StepStatus.STARTED))
    control.hold()
    probe.gate("tool").set()
    outcome = await _outcome(run)
    assert isinstance(outcome, RunResult) and set(outcome.durations) == {"tool"}


async def test_a_control_belongs_to_one_run() -> None:
    control = RunControl()
    sequencer = _sequencer(RecordingSink(), Probe().registry())
    await _outcome(_start(sequencer, _plan(_step("now", "a")), control))
    with pytest.raises(SequenceError, match="one run"):
        await sequencer.run(_plan(_step("now", "a")), changeover_id="co-2", job_id="j", control=control)


# ------------------------------------------------------------------------------------------------------------
# Abort (cancelling the run)


async def test_abort_cuts_every_step_and_runs_their_finalizers() -> None:
    # Given two steps running, one not interruptible, when the run is cancelled, then both are cut, both
    # finalizers ran before CancelledError reached the caller, and no task is left.
    probe = Probe()
    finalizing = asyncio.Event()

    async def slow_finalizer(_step: PlanStep, _ctx: StepContext) -> None:
        finalizing.set()
        for _ in range(3):
            await asyncio.sleep(0)  # a finalizer that takes a few loop turns still completes

    probe.finalizer = slow_finalizer
    sink = RecordingSink()
    plan = _plan(_step("wait", "move", device="fixture"), _step("wait", "tool", interruptible=False))
    run = _start(_sequencer(sink, probe.registry()), plan, RunControl())
    await sink.wait_for(_is("tool", StepStatus.STARTED))
    await sink.wait_for(_is("move", StepStatus.STARTED))
    run.cancel()
    outcome = await _outcome(run)
    assert isinstance(outcome, asyncio.CancelledError)
    assert finalizing.is_set()
    assert sorted(probe.finalized) == ["move", "tool"]
    assert {e.step: e.detail for e in sink.events if isinstance(e, StepEvent) and e.status == "failed"} == {
        "move": FINALIZED,
        "tool": FINALIZED,
    }
    assert _step_tasks() == []


async def test_a_hanging_finalizer_is_cut_at_the_deadline_logged_and_recorded() -> None:
    probe = Probe()

    async def hang(_step: PlanStep, _ctx: StepContext) -> None:
        await asyncio.Event().wait()

    probe.finalizer = hang
    sink = RecordingSink()
    run = _start(
        _sequencer(sink, probe.registry(), finalizer_deadline_s=0.02), _plan(_step("wait", "a")), RunControl()
    )
    await sink.wait_for(_is("a", StepStatus.STARTED))
    with capture_logs() as logs:
        run.cancel()
        outcome = await _outcome(run)
    assert isinstance(outcome, asyncio.CancelledError)
    assert sink.of("a")[-1].detail == f"{CANCELLED}; finalizer cut at 0.02 s"
    cut = [entry for entry in logs if entry["event"] == "step finalizer cut at its deadline"]
    assert len(cut) == 1 and cut[0]["step"] == "a"
    assert _step_tasks() == []


async def test_a_failing_finalizer_is_recorded_and_the_others_still_run() -> None:
    probe = Probe()

    async def fail_on_a(step: PlanStep, _ctx: StepContext) -> None:
        if step.id == "a":
            raise SequenceError("clamp valve does not answer")

    probe.finalizer = fail_on_a
    sink = RecordingSink()
    run = _start(
        _sequencer(sink, probe.registry()),
        _plan(_step("wait", "a", device="fixture"), _step("wait", "b", device="stapler")),
        RunControl(),
    )
    await sink.wait_for(_is("a", StepStatus.STARTED))
    await sink.wait_for(_is("b", StepStatus.STARTED))
    run.cancel()
    assert isinstance(await _outcome(run), asyncio.CancelledError)
    assert sink.of("a")[-1].detail == f"{CANCELLED}; finalizer failed: clamp valve does not answer"
    assert sink.of("b")[-1].detail == FINALIZED


async def test_abort_while_a_hold_waits_cuts_the_step_it_let_run() -> None:
    # Given a hold waiting for a non-interruptible step, when the run is then cancelled, then that step is
    # cut and finalized too, and the cancellation wins over the hold.
    probe = Probe()
    sink = RecordingSink()
    control = RunControl()
    run = _start(
        _sequencer(sink, probe.registry()), _plan(_step("wait", "tool", interruptible=False)), control
    )
    await sink.wait_for(_is("tool", StepStatus.STARTED))
    control.hold()
    run.cancel()
    assert isinstance(await _outcome(run), asyncio.CancelledError)
    assert sink.of("tool")[-1].detail == FINALIZED
    assert probe.finalized == ["tool"]


# ------------------------------------------------------------------------------------------------------------
# The registered finalizers on soft devices


async def test_holding_a_fixture_move_stops_the_axis_where_it_is() -> None:
    # Given a fixture move under way (the axis half way), when held, then the setpoint is re-targeted to the
    # actual position: the axis stops there instead of finishing a move nobody waits for.
    fixture = StalledFixture(CELL, width_act=420.0, width_sp=420.0, depth_act=400.0, depth_sp=400.0)
    devices = {**soft_cell(CELL), "fixture": fixture.dev}
    sink = RecordingSink()
    control = RunControl()
    plan = _plan(_step("fixture_move", "fixture:fixture_move", device="fixture", params=(("width", 520.0),)))
    moving = asyncio.Event()
    fixture.dev.on_write(lambda _tag, _value: moving.set())
    run = _start(_sequencer(sink, devices=devices), plan, control)
    async with asyncio.timeout(BOUND):
        await moving.wait()
    control.hold()
    assert isinstance(await _outcome(run), PlanHeld)
    assert fixture.dev.writes == [("width_sp", 520.0), ("width_sp", 470.0)]
    assert sink.of("fixture:fixture_move")[-1].detail == FINALIZED


async def test_cutting_a_clamp_withdraws_the_clamp_command() -> None:
    # Given clamps closing that never confirm, when the run is cut, then the command goes back to what
    # 'clamped' reads (open), so the clamps do not close later on a stale command.
    fixture = SoftDriver.from_config("fixture", CELL.devices["fixture"], initial={"clamped": False})
    devices = {**soft_cell(CELL), "fixture": fixture}
    closing = asyncio.Event()
    fixture.on_write(lambda _tag, _value: closing.set())
    sink = RecordingSink()
    run = _start(
        _sequencer(sink, devices=devices),
        _plan(_step("fixture_clamp", "fixture:fixture_clamp", device="fixture")),
        RunControl(),
    )
    async with asyncio.timeout(BOUND):
        await closing.wait()
    run.cancel()
    assert isinstance(await _outcome(run), asyncio.CancelledError)
    assert fixture.writes == [("clamp", True), ("clamp", False)]


def test_finalizers_are_registered_for_the_kinds_that_leave_a_device_unsafe() -> None:
    finalized = {StepKind(kind) for kind, handler in REGISTRY.items() if handler.finalize is not None}
    assert finalized == {StepKind.FIXTURE_MOVE, StepKind.FIXTURE_UNCLAMP, StepKind.FIXTURE_CLAMP}


# ------------------------------------------------------------------------------------------------------------
# Config: which steps a Hold may cut, and the finalizers' deadline


def test_tool_changes_and_clamps_are_not_interruptible_unless_the_file_says_so() -> None:
    defaults = {kind: t.interruptible for kind, t in ChangeoverConfig().steps.items()}
    assert [k for k, cut in defaults.items() if not cut] == [
        StepKind.FIXTURE_UNCLAMP,
        StepKind.TOOL_CHANGE,
        StepKind.FIXTURE_CLAMP,
    ]
    # The example cell gives every template without 'interruptible': each takes its kind's default.
    assert {k: t.interruptible for k, t in CELL.changeover.steps.items()} == defaults
    given = ChangeoverConfig.model_validate(
        {"steps": {"tool_change": {"expected_s": 4, "interruptible": True}, "fixture_clamp": {}}}
    )
    assert given.steps[StepKind.TOOL_CHANGE].interruptible is True
    assert given.steps[StepKind.FIXTURE_CLAMP].interruptible is False


def test_the_abort_deadline_defaults_to_two_seconds_and_is_bounded() -> None:
    assert ChangeoverConfig().abort_deadline_s == 2.0
    for bad in (0, -1, 11):
        with pytest.raises(ValidationError, match="abort_deadline_s"):
            ChangeoverConfig.model_validate({"abort_deadline_s": bad})


def test_the_planner_copies_interruptible_onto_each_step() -> None:
    current = target_setup(EXAMPLE.recipes["oslo"], CELL)
    plan = plan_changeover(current, EXAMPLE.recipes["bergen"], CELL, from_variant="oslo")
    assert {s.kind: s.interruptible for s in plan.steps} == {
        "tool_change": False,
        "fixture_unclamp": False,
        "fixture_move": True,
        "fixture_clamp": False,
        "robot_program": True,
        "setpoints": True,
    }
