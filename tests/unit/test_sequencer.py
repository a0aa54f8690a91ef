"""The sequencer runs a plan's DAG on soft devices: parallel where allowed, one step per device at a time,
timeouts, retries, cancellation, and every outcome recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cellctl.core.clock import ManualClock
from cellctl.core.devices import Profile, make_profile
from cellctl.core.events import Event, StepEvent, StepStatus
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.engine.planner import OPERATOR_KIND, plan_changeover, read_setup, target_setup
from cellctl.engine.sequencer import CANCELLED, FINALIZED, RunResult, Sequencer
from cellctl.engine.steps import REGISTRY, StepContext, StepHandler
from cellctl.errors import DeviceFault, PlanError, StepFailed, StepTimeout, WriteVerifyError
from cellctl.schema.cell import StepKind
from cellctl.schema.load import load_config
from tests.softcell import soft_cell

EXAMPLE = load_config(Path(__file__).resolve().parents[2] / "config")
CELL = EXAMPLE.cell
BOUND = 5.0
"""Upper bound on any wait in these tests (s): a hang fails the test instead of blocking the suite."""

OSLO_ON_DEVICES: dict[str, dict[str, TagValue]] = {
    "toolchanger": {"tool_current": 1, "tool_request": 1, "preselect": 1},
    "robot1": {"active_program": 11, "program": 11},
    "fixture": {"width_act": 420.0, "depth_act": 400.0, "clamped": True, "clamp": True, "in_position": True},
    "stapler": {"force_sp": 800.0},
}


class RecordingSink:
    """An EventSink that keeps the events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def record(self, event: Event) -> int:
        self.events.append(event)
        self._changed.set()
        return len(self.events)

    @property
    def steps(self) -> list[tuple[str, StepStatus]]:
        return [(e.step, e.status) for e in self.events if isinstance(e, StepEvent)]

    def of(self, step: str) -> list[StepEvent]:
        return [e for e in self.events if isinstance(e, StepEvent) and e.step == step]

    async def wait_for(self, predicate: Callable[[Event], bool]) -> None:
        async with asyncio.timeout(BOUND):
            while not any(predicate(e) for e in self.events):
                self._changed.clear()
                await self._changed.wait()


def _profiles(devices: Mapping[str, SoftDriver]) -> dict[str, Profile]:
    return {
        name: make_profile(config.profile, name, devices[name], config.tags)
        for name, config in CELL.devices.items()
    }


def _plan(*steps: PlanStep) -> ChangeoverPlan:
    return ChangeoverPlan(from_variant="a", to_variant="b", steps=steps)


def _step(kind: str, device: str | None, *after: str, sid: str | None = None, **extra: Any) -> PlanStep:
    params = extra.pop("params", ())
    return PlanStep(
        id=sid or f"{device}:{kind}",
        kind=kind,
        device=device,
        description="",
        params=params,
        after=after,
        **{"timeout_s": 1.0, **extra},
    )


def _sequencer(
    devices: Mapping[str, SoftDriver],
    sink: RecordingSink,
    clock: ManualClock | None = None,
    registry: Mapping[str, StepHandler] | None = None,
) -> Sequencer:
    return Sequencer(_profiles(devices), sink, clock or ManualClock(), registry=registry)


async def _run(sequencer: Sequencer, plan: ChangeoverPlan) -> RunResult:
    async with asyncio.timeout(BOUND):
        return await sequencer.run(plan, changeover_id="co-1", job_id="job-1")


def _oslo_to_bergen() -> ChangeoverPlan:
    current = target_setup(EXAMPLE.recipes["oslo"], CELL)
    return plan_changeover(current, EXAMPLE.recipes["bergen"], CELL, from_variant="oslo")


def _step_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("step:") and not t.done()]


# ------------------------------------------------------------------------------------------------------------
# Running a whole plan


async def test_a_plan_runs_every_step_and_leaves_the_cell_set_up() -> None:
    # Given soft devices set up for oslo, when the oslo -> bergen plan runs, then the devices hold bergen.
    devices = soft_cell(CELL, initial=OSLO_ON_DEVICES)
    sink = RecordingSink()
    plan = _oslo_to_bergen()
    result = await _run(_sequencer(devices, sink), plan)
    assert set(result.durations) == {s.id for s in plan.steps}
    assert devices["toolchanger"].last("tool_current").value == 2
    assert devices["robot1"].last("active_program").value == 12
    assert devices["fixture"].last("width_act").value == 520.0
    assert devices["fixture"].last("depth_act").value == 480.0
    assert devices["fixture"].last("clamped").value is True
    assert devices["stapler"].last("force_sp").value == 950.0


async def test_each_step_is_recorded_started_then_done_after_its_predecessors() -> None:
    devices = soft_cell(CELL, initial=OSLO_ON_DEVICES)
    sink = RecordingSink()
    plan = _oslo_to_bergen()
    await _run(_sequencer(devices, sink), plan)
    position = {entry: i for i, entry in enumerate(sink.steps)}
    assert len(position) == len(sink.steps) == 2 * len(plan.steps)  # each entry once
    for step in plan.steps:
        started, done = position[(step.id, StepStatus.STARTED)], position[(step.id, StepStatus.DONE)]
        assert started < done
        assert all(position[(dep, StepStatus.DONE)] < started for dep in step.after)
    events = [e for e in sink.events if isinstance(e, StepEvent)]
    assert all((e.changeover, e.job) == ("co-1", "job-1") for e in events)
    assert all(e.duration_s is not None for e in events if e.status is StepStatus.DONE)
    assert {(e.step, e.step_kind, e.device) for e in events} == {(s.id, s.kind, s.device) for s in plan.steps}


async def test_after_a_run_the_read_back_setup_needs_no_further_changeover() -> None:
    # Given a fresh cell (no tool, no program, axes at 0), when the plan from its read-back setup to tromso
    # runs, then reading the setup again gives an empty plan to tromso.
    devices = soft_cell(CELL)
    profiles = _profiles(devices)
    recipes = EXAMPLE.recipes
    # The devices' steps only: tromso's operator step is a person's (tests/unit/test_operator_steps.py).
    tromso = recipes["tromso"].model_copy(update={"operator_steps": {}})
    plan = plan_changeover(await read_setup(profiles, CELL, recipes), tromso, CELL, from_variant=None)
    assert len(plan.steps) == 7
    await _run(Sequencer(profiles, RecordingSink(), ManualClock()), plan)
    again = plan_changeover(await read_setup(profiles, CELL, recipes), tromso, CELL, from_variant="tromso")
    assert again.is_empty


async def test_an_empty_plan_completes_with_no_events() -> None:
    sink = RecordingSink()
    result = await _run(_sequencer(soft_cell(CELL), sink), _plan())
    assert (result.durations, sink.events) == ({}, [])


async def test_durations_come_from_the_injected_clock() -> None:
    # Given a step that takes 2.5 s on the cell's clock, then its DONE event and the result say 2.5 s.
    clock = ManualClock()

    async def slow(_step: PlanStep, _ctx: StepContext) -> None:
        clock.advance(2.5)

    sink = RecordingSink()
    sequencer = _sequencer(soft_cell(CELL), sink, clock, {"slow": StepHandler("slow", slow)})
    result = await _run(sequencer, _plan(_step("slow", None, sid="s")))
    assert result.durations == {"s": 2.5}
    assert result.total_s == 2.5
    assert sink.of("s")[-1].duration_s == 2.5


# ------------------------------------------------------------------------------------------------------------
# Parallelism and the device resource


async def test_independent_steps_run_at_the_same_time() -> None:
    # Given a tool change that completes only once the fixture was told to unclamp, and a fixture that
    # opens only once a tool was requested, when both run, then each needs the other running: parallel.
    devices = soft_cell(CELL, initial=OSLO_ON_DEVICES)
    changer = SoftDriver.from_config(
        "toolchanger",
        CELL.devices["toolchanger"],
        initial={"tool_current": 1, "tool_request": 1, "moving": False},
    )
    fixture = SoftDriver.from_config(
        "fixture", CELL.devices["fixture"], initial={"clamp": True, "clamped": True, "in_position": True}
    )
    devices = {**devices, "toolchanger": changer, "fixture": fixture}
    asked: dict[str, TagValue] = {}

    def rendezvous(tag: str, value: TagValue) -> None:
        asked[tag] = value
        if "tool_request" in asked and asked.get("clamp") is False:
            changer.set("tool_current", asked["tool_request"])
            fixture.set("clamped", False)

    changer.on_write(rendezvous)
    fixture.on_write(rendezvous)
    plan = _plan(
        _step("tool_change", "toolchanger", params=(("tool", 2),)),
        _step("fixture_unclamp", "fixture"),
    )
    result = await _run(_sequencer(devices, RecordingSink()), plan)
    assert set(result.durations) == {"toolchanger:tool_change", "fixture:fixture_unclamp"}


async def test_one_device_never_runs_two_steps_at_once() -> None:
    # Given four steps with no dependencies, three on the fixture, when they run, then the fixture's steps
    # never overlap while the stapler's step overlaps them.
    active: dict[str, int] = {}
    most: dict[str, int] = {}
    overlapped: list[bool] = []

    async def probe(step: PlanStep, _ctx: StepContext) -> None:
        assert step.device is not None
        active[step.device] = active.get(step.device, 0) + 1
        most[step.device] = max(most.get(step.device, 0), active[step.device])
        for _ in range(5):
            overlapped.append(len([d for d, n in active.items() if n]) > 1)
            await asyncio.sleep(0)
        active[step.device] -= 1

    plan = _plan(
        _step("probe", "fixture", sid="f1"),
        _step("probe", "fixture", sid="f2"),
        _step("probe", "stapler", sid="s1"),
        _step("probe", "fixture", sid="f3"),
    )
    sink = RecordingSink()
    sequencer = _sequencer(soft_cell(CELL), sink, registry={"probe": StepHandler("probe", probe)})
    result = await _run(sequencer, plan)
    assert set(result.durations) == {"f1", "f2", "f3", "s1"}
    assert most == {"fixture": 1, "stapler": 1}
    assert any(overlapped)  # the probe does see parallel work: the stapler ran beside the fixture


async def test_a_step_waits_for_its_predecessors() -> None:
    order: list[str] = []

    async def probe(step: PlanStep, _ctx: StepContext) -> None:
        order.append(step.id)
        await asyncio.sleep(0)

    plan = _plan(
        _step("probe", None, "b", sid="c"), _step("probe", None, sid="a"), _step("probe", None, "a", sid="b")
    )
    sequencer = _sequencer(soft_cell(CELL), RecordingSink(), registry={"probe": StepHandler("probe", probe)})
    await _run(sequencer, plan)
    assert order == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------------------------
# Retries, failures and timeouts


def _stapler_keeping(devices: Mapping[str, SoftDriver], refusals: int) -> None:
    """Make the stapler drop its first ``refusals`` force setpoints (it reads back 0)."""
    stapler = devices["stapler"]
    left = [refusals]

    def drop(tag: str, _value: TagValue) -> None:
        if tag == "force_sp" and left[0] > 0:
            left[0] -= 1
            stapler.set("force_sp", 0.0)

    stapler.on_write(drop)


async def test_a_failed_attempt_is_retried_and_then_succeeds() -> None:
    devices = soft_cell(CELL)
    _stapler_keeping(devices, refusals=2)
    sink = RecordingSink()
    plan = _plan(_step("setpoints", "stapler", params=(("force_sp", 950.0),), retries=2))
    result = await _run(_sequencer(devices, sink), plan)
    assert result.attempts == {"stapler:setpoints": 3}
    assert devices["stapler"].writes == [("force_sp", 950.0)] * 3
    assert sink.steps == [("stapler:setpoints", StepStatus.STARTED), ("stapler:setpoints", StepStatus.DONE)]


async def test_exhausted_retries_fail_the_run_naming_the_step() -> None:
    devices = soft_cell(CELL)
    _stapler_keeping(devices, refusals=10)
    sink = RecordingSink()
    plan = _plan(_step("setpoints", "stapler", params=(("force_sp", 950.0),), retries=1))
    with pytest.raises(StepFailed) as caught:
        await _run(_sequencer(devices, sink), plan)
    assert type(caught.value) is StepFailed
    assert caught.value.step == "stapler:setpoints"
    assert len(devices["stapler"].writes) == 2
    failed = sink.of("stapler:setpoints")[-1]
    assert failed.status is StepStatus.FAILED
    assert "attempt 2 of 2" in failed.detail


async def test_a_read_back_mismatch_fails_the_step_with_a_write_verify_error() -> None:
    devices = soft_cell(CELL)
    _stapler_keeping(devices, refusals=1)
    sink = RecordingSink()
    with pytest.raises(StepFailed) as caught:
        await _run(
            _sequencer(devices, sink), _plan(_step("setpoints", "stapler", params=(("force_sp", 950.0),)))
        )
    assert isinstance(caught.value.__cause__, WriteVerifyError)
    assert caught.value.__cause__.tag == "force_sp"
    assert "wrote 950.0, read back 0.0" in sink.of("stapler:setpoints")[-1].detail


async def test_a_device_fault_fails_the_step_with_the_fault_as_cause() -> None:
    devices = soft_cell(CELL)
    robot = devices["robot1"]
    robot.on_write(lambda tag, _value: robot.set("fault_code", 4) if tag == "program" else None)
    with pytest.raises(StepFailed) as caught:
        await _run(
            _sequencer(devices, RecordingSink()),
            _plan(_step("robot_program", "robot1", params=(("program", 12),))),
        )
    assert isinstance(caught.value.__cause__, DeviceFault)


async def test_a_step_that_never_completes_times_out_naming_it() -> None:
    # Given a tool changer that never answers, when the tool change runs, then StepTimeout names the step.
    changer = SoftDriver.from_config("toolchanger", CELL.devices["toolchanger"], initial={"tool_current": 1})
    devices = {**soft_cell(CELL), "toolchanger": changer}
    sink = RecordingSink()
    plan = _plan(_step("tool_change", "toolchanger", params=(("tool", 2),), timeout_s=0.05, retries=1))
    with pytest.raises(StepTimeout) as caught:
        await _run(_sequencer(devices, sink), plan)
    assert caught.value.step == "toolchanger:tool_change"
    assert "did not finish within 0.05 s" in str(caught.value)
    assert changer.writes == [("tool_request", 2)] * 2  # the retry asked again, once
    assert sink.steps[-1] == ("toolchanger:tool_change", StepStatus.FAILED)


async def test_a_failure_cancels_the_running_steps_and_starts_no_more() -> None:
    # Given a tool change that times out beside a fixture unclamp that never confirms, when the tool change
    # fails, then the unclamp is recorded cancelled and the move after it never starts.
    changer = SoftDriver.from_config("toolchanger", CELL.devices["toolchanger"], initial={"tool_current": 1})
    fixture = SoftDriver.from_config("fixture", CELL.devices["fixture"], initial={"clamped": True})
    devices = {**soft_cell(CELL), "toolchanger": changer, "fixture": fixture}
    sink = RecordingSink()
    plan = _plan(
        _step("fixture_unclamp", "fixture", timeout_s=BOUND),
        _step("tool_change", "toolchanger", params=(("tool", 2),), timeout_s=0.05),
        _step("fixture_move", "fixture", "fixture:fixture_unclamp", params=(("width", 520.0),)),
    )
    with pytest.raises(StepTimeout):
        await _run(_sequencer(devices, sink), plan)
    unclamp = sink.of("fixture:fixture_unclamp")
    assert [(e.status, e.detail) for e in unclamp] == [
        (StepStatus.STARTED, ""),
        (StepStatus.FAILED, FINALIZED),
    ]
    assert fixture.writes == [("clamp", False), ("clamp", True)]  # the cut unclamp was withdrawn
    assert sink.of("fixture:fixture_move") == []
    assert _step_tasks() == []


async def test_a_bug_in_a_handler_propagates_as_itself_and_is_recorded() -> None:
    async def broken(_step: PlanStep, _ctx: StepContext) -> None:
        raise KeyError("oops")

    sink = RecordingSink()
    sequencer = _sequencer(soft_cell(CELL), sink, registry={"broken": StepHandler("broken", broken)})
    with pytest.raises(KeyError):
        await _run(sequencer, _plan(_step("broken", None, sid="b")))
    assert sink.of("b")[-1].status is StepStatus.FAILED
    assert "KeyError" in sink.of("b")[-1].detail


async def test_a_plan_that_cannot_run_here_is_refused_before_any_step() -> None:
    devices = soft_cell(CELL)
    sink = RecordingSink()
    plan = _plan(_step("setpoints", "stapler", params=(("force_sp", 1.0),)), _step("weld", "robot1"))
    with pytest.raises(PlanError, match="no handler for step kind 'weld'"):
        await _run(_sequencer(devices, sink), plan)
    assert sink.events == []
    assert devices["stapler"].writes == []


# ------------------------------------------------------------------------------------------------------------
# Cancellation (Hold, Stop, Abort)


async def test_cancelling_the_run_records_the_interrupted_steps_and_leaves_no_task() -> None:
    # Given a run whose fixture unclamp never confirms and a setpoint step already done, when the run is
    # cancelled, then the unclamp is recorded FAILED "cancelled", CancelledError propagates, no task is left.
    fixture = SoftDriver.from_config("fixture", CELL.devices["fixture"], initial={"clamped": True})
    devices = {**soft_cell(CELL), "fixture": fixture}
    sink = RecordingSink()
    plan = _plan(
        _step("setpoints", "stapler", params=(("force_sp", 900.0),)),
        _step("fixture_unclamp", "fixture", timeout_s=BOUND),
        _step("fixture_move", "fixture", "fixture:fixture_unclamp", params=(("width", 520.0),)),
    )
    run = asyncio.create_task(_sequencer(devices, sink).run(plan, changeover_id="co-1", job_id="job-1"))
    await sink.wait_for(
        lambda e: isinstance(e, StepEvent) and e.step == "stapler:setpoints" and e.status == "done"
    )
    await sink.wait_for(lambda e: isinstance(e, StepEvent) and e.step == "fixture:fixture_unclamp")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(BOUND):
            await run
    assert sink.of("fixture:fixture_unclamp")[-1].status is StepStatus.FAILED
    assert sink.of("fixture:fixture_unclamp")[-1].detail.startswith(CANCELLED)
    assert sink.of("stapler:setpoints")[-1].status is StepStatus.DONE
    assert sink.of("fixture:fixture_move") == []
    assert _step_tasks() == []


async def test_a_cancellation_racing_a_step_failure_is_not_swallowed() -> None:
    # Given a step that fails while the run is being cancelled, then the cancellation still propagates.
    gate = asyncio.Event()

    async def fail_when_cancelled(_step: PlanStep, _ctx: StepContext) -> None:
        try:
            gate.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise DeviceFault("robot1", "fell over while stopping") from None

    sink = RecordingSink()
    registry = {"f": StepHandler("f", fail_when_cancelled)}
    run = asyncio.create_task(
        _sequencer(soft_cell(CELL), sink, registry=registry).run(
            _plan(_step("f", "robot1", timeout_s=BOUND)), changeover_id="co", job_id="j"
        )
    )
    async with asyncio.timeout(BOUND):
        await gate.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(BOUND):
            await run
    assert _step_tasks() == []


# ------------------------------------------------------------------------------------------------------------
# Logs


async def test_step_logs_carry_changeover_step_and_device() -> None:
    devices = soft_cell(CELL)
    with capture_logs() as logs:
        await _run(
            _sequencer(devices, RecordingSink()),
            _plan(_step("setpoints", "stapler", params=(("force_sp", 1.0),))),
        )
    started = [entry for entry in logs if entry["event"] == "step started"]
    assert len(started) == 1
    assert started[0]["changeover"] == "co-1"
    assert started[0]["step"] == "stapler:setpoints"
    assert started[0]["device"] == "stapler"


def test_the_default_registry_is_the_step_handlers() -> None:
    assert set(REGISTRY) == {kind.value for kind in StepKind} | {OPERATOR_KIND}
