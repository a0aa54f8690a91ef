"""The Engine on a soft cell: PackML sequence, changeovers, verdicts, hold/abort/stop, status, shutdown."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    JobEvent,
    JobStatus,
    PartProduced,
    StateChanged,
    StepEvent,
    StepStatus,
    Verdict,
)
from cellctl.core.ports import OrderRecord
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.engine import Engine, OrderRequest, State
from cellctl.errors import CommError, InvalidTransition, JobError
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import StalledFixture, soft_cell

T = 5.0
"""Bound of every wait here (s); the soft cell answers at once, so a green run never reaches it."""

E = TypeVar("E", bound=Event)

OSLO_GOOD = {"width_mm": 420.0, "depth_mm": 400.0, "staple_height_mm": 1.4}
OSLO_FAIL = {**OSLO_GOOD, "width_mm": 425.0}
OSLO_NAN = {**OSLO_GOOD, "depth_mm": math.nan}
BERGEN_GOOD = {"width_mm": 520.1, "depth_mm": 479.9, "staple_height_mm": 1.1}


class FakeSink:
    """An in-memory journal that tests can wait on."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def record(self, event: Event) -> int:
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()
        return len(self.events)

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = T) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                for event in self.events:
                    if predicate(event):
                        return event
                await changed.wait()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self) -> list[str]:
        return [e.state for e in self.of(StateChanged)]

    def index(self, predicate: Callable[[Event], bool]) -> int:
        return next(i for i, e in enumerate(self.events) if predicate(e))


class GaugeScript:
    """Gauge values per part, in order: the soft gauge asks channel by channel, width first."""

    def __init__(self, parts: Sequence[dict[str, float]]) -> None:
        self._parts = list(parts)
        self._current: dict[str, float] = {}

    def __call__(self, channel: str) -> float:
        if channel == "width_mm":
            self._current = self._parts.pop(0)
        return self._current[channel]


class ToolChangerStall:
    """A tool changer that takes requests but never finishes them while active."""

    def __init__(self, dev: SoftDriver) -> None:
        self.active = True
        self._dev = dev
        dev.on_write(self._hook)

    def _hook(self, tag: str, _value: TagValue) -> None:
        if tag == "tool_request" and self.active:
            self._dev.set("tool_current", 0)
            self._dev.set("moving", True)


def stall_robot_cycle(robot: SoftDriver, cycle: int) -> asyncio.Event:
    """Make the robot's ``cycle``-th cycle never report done; the event is set when that cycle starts."""
    started = asyncio.Event()
    count = 0

    def hook(tag: str, value: TagValue) -> None:
        nonlocal count
        if tag == "start" and value:
            count += 1
            if count == cycle:
                robot.set("done", False)
                started.set()

    robot.on_write(hook)
    return started


def total_writes(devices: dict[str, SoftDriver]) -> int:
    return sum(len(d.writes) for d in devices.values())


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


@asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[Engine]:
    """Run the engine in a task group for the test's body, then cancel it."""
    async with asyncio.TaskGroup() as group:
        task = group.create_task(engine.run(), name="engine:run")
        await engine.wait_for(State.STOPPED, timeout=T)
        try:
            yield engine
        finally:
            task.cancel()


async def reset_and_start(engine: Engine) -> None:
    await engine.command("reset", by="op")
    await engine.wait_for(State.IDLE, timeout=T)
    await engine.command("start", by="op")


def is_job(status: JobStatus, job_id: str | None = None) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, JobEvent) and e.status is status and job_id in (None, e.job)


# ------------------------------------------------------------------------------------------------------------
# Two orders of different variants: the whole run.


@pytest.fixture
async def two_jobs(config: LoadedConfig) -> tuple[FakeSink, Engine, str, str]:
    """Given Stopped with oslo x3 (pass, fail, NaN) and bergen x2 queued, when reset and start, then the
    engine runs both and suspends."""
    gauge = GaugeScript([OSLO_GOOD, OSLO_FAIL, OSLO_NAN, BERGEN_GOOD, BERGEN_GOOD])
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=gauge), sink)
    async with running(engine):
        oslo = await engine.submit(OrderRequest("PO-1", "oslo", 3), by="mes")
        bergen = await engine.submit(OrderRequest("PO-2", "bergen", 2), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
    return sink, engine, oslo.job_id, bergen.job_id


async def test_reset_and_start_walk_the_packml_states_and_suspend_when_starved(
    two_jobs: tuple[FakeSink, Engine, str, str],
) -> None:
    sink, _engine, _oslo, _bergen = two_jobs
    assert sink.states() == [
        "Stopped", "Resetting", "Idle", "Starting", "Execute", "Suspending", "Suspended",
    ]  # fmt: skip
    moves = sink.of(StateChanged)
    assert [(m.command, m.by) for m in moves[1:4]] == [("reset", "op"), (None, "engine"), ("start", "op")]
    assert (moves[-2].command, moves[-2].by) == ("suspend", "engine")


async def test_each_job_is_preceded_by_its_changeover_with_its_steps(
    two_jobs: tuple[FakeSink, Engine, str, str],
) -> None:
    sink, _engine, oslo, bergen = two_jobs
    for job in (oslo, bergen):
        started = sink.index(
            lambda e, j=job: (
                isinstance(e, ChangeoverEvent) and e.job == j and e.status is ChangeoverStatus.STARTED
            )
        )
        completed = sink.index(
            lambda e, j=job: (
                isinstance(e, ChangeoverEvent) and e.job == j and e.status is ChangeoverStatus.COMPLETED
            )
        )
        job_started = sink.index(is_job(JobStatus.STARTED, job))
        first_part = sink.index(lambda e, j=job: isinstance(e, PartProduced) and e.job == j)
        plan = sink.events[started]
        assert isinstance(plan, ChangeoverEvent)
        steps = [e for e in sink.events[started:completed] if isinstance(e, StepEvent)]
        assert {s.step for s in steps if s.status is StepStatus.DONE} == set(plan.steps)
        assert started < completed < job_started < first_part
    oslo_done = sink.index(is_job(JobStatus.COMPLETED, oslo))
    second = sink.of(ChangeoverEvent)[2]
    assert (second.from_variant, second.to_variant) == ("oslo", "bergen")
    assert set(second.steps) == {
        "toolchanger:tool_change",
        "robot1:robot_program",
        "fixture:fixture_unclamp",
        "fixture:fixture_move",
        "fixture:fixture_clamp",
        "stapler:setpoints",
    }
    assert second.planned_s > 0
    assert oslo_done < sink.events.index(second)


async def test_every_part_gets_the_verdict_its_gauge_values_imply(
    two_jobs: tuple[FakeSink, Engine, str, str],
) -> None:
    sink, _engine, oslo, bergen = two_jobs
    parts = sink.of(PartProduced)
    assert [(p.job, p.index, p.verdict) for p in parts] == [
        (oslo, 1, Verdict.PASS),
        (oslo, 2, Verdict.FAIL),
        (oslo, 3, Verdict.INVALID),
        (bergen, 1, Verdict.PASS),
        (bergen, 2, Verdict.PASS),
    ]
    nan_part = {m.characteristic: m for m in parts[2].measurements}
    assert nan_part["seat_depth"].verdict is Verdict.INVALID
    assert nan_part["seat_width"].verdict is Verdict.PASS
    failed = {m.characteristic: m for m in parts[1].measurements}
    assert failed["seat_width"].verdict is Verdict.FAIL
    assert parts[0].parameters == {"staple_pitch": 12.0}


async def test_job_counts_are_right_when_the_jobs_complete(
    two_jobs: tuple[FakeSink, Engine, str, str],
) -> None:
    sink, engine, oslo, bergen = two_jobs
    done = {e.job: e for e in sink.of(JobEvent) if e.status is JobStatus.COMPLETED}
    assert (done[oslo].produced, done[oslo].good, done[oslo].bad, done[oslo].invalid) == (3, 1, 1, 1)
    assert (done[bergen].produced, done[bergen].good, done[bergen].bad, done[bergen].invalid) == (2, 2, 0, 0)
    counters = engine.status().counters
    assert (counters.parts, counters.good, counters.bad, counters.invalid) == (5, 3, 1, 1)


async def test_status_after_the_run_shows_the_variant_and_no_work(
    two_jobs: tuple[FakeSink, Engine, str, str],
) -> None:
    _sink, engine, _oslo, _bergen = two_jobs
    status = engine.status()
    assert (status.state, status.state_no, status.variant) == ("Suspended", 5, "bergen")
    assert status.current_job is None and status.queue == () and status.changeover is None
    assert set(status.allowed_commands) == {"unsuspend", "hold", "stop", "abort"}
    assert json.loads(json.dumps(status.to_dict()))["counters"]["parts"] == 5


async def test_parameters_are_written_before_each_robot_cycle(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_GOOD]))
    engine = Engine(config, devices, FakeSink())
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2, parameters={"staple_pitch": 9.5}), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
    assert [w for w in devices["stapler"].writes if w[0] == "pitch_mm"] == [("pitch_mm", 9.5)] * 2
    assert devices["stapler"].last("pitch_mm").value == 9.5


# ------------------------------------------------------------------------------------------------------------
# Suspended <-> Execute with the queue.


async def test_a_job_arriving_while_starved_unsuspends_the_cell(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD])), sink)
    async with running(engine):
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
        view = await engine.submit(OrderRequest("PO-9", "oslo", 1), by="mes")
        await sink.wait_for(is_job(JobStatus.COMPLETED, view.job_id))
        await engine.wait_for(State.SUSPENDED, timeout=T)
    unsuspend = next(m for m in sink.of(StateChanged) if m.state == "Unsuspending")
    assert (unsuspend.command, unsuspend.by) == ("unsuspend", "engine")
    assert sink.states()[-5:] == ["Suspended", "Unsuspending", "Execute", "Suspending", "Suspended"]


# ------------------------------------------------------------------------------------------------------------
# Hold during a changeover.


async def test_hold_during_a_changeover_parks_it_and_unhold_runs_only_what_is_left(
    config: LoadedConfig,
) -> None:
    # Given a changeover with a tool change (not interruptible) and a fixture move (interruptible) under way,
    # when held, then the move is cut and stopped, the tool change finishes, the cell reaches Held only then,
    # and Unhold plans from the setup read back: no step done before the hold sends its command again.
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_GOOD]))
    fixture = StalledFixture(config.cell)
    devices["fixture"] = fixture.dev
    changer = devices["toolchanger"]
    stall = ToolChangerStall(changer)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await reset_and_start(engine)
        for step in ("toolchanger:tool_change", "fixture:fixture_move"):
            await sink.wait_for(
                lambda e, s=step: isinstance(e, StepEvent) and e.step == s and e.status is StepStatus.STARTED
            )
        await sink.wait_for(lambda _e: ("width_sp", 420.0) in fixture.dev.writes)
        await engine.command("hold", by="op")

        await sink.wait_for(
            lambda e: isinstance(e, StepEvent) and e.step == "fixture:fixture_move" and e.status == "failed"
        )
        assert engine.status().state == "Holding"  # the tool change still runs: the cell is not parked
        stall.active = False
        changer.set("tool_current", 1)
        changer.set("moving", False)
        await engine.wait_for(State.HELD, timeout=T)

        held_at = len(sink.events)
        ended = {
            s.step: (s.status, s.detail) for s in sink.of(StepEvent) if s.status is not StepStatus.STARTED
        }
        assert ended == {
            "fixture:fixture_unclamp": (StepStatus.DONE, ""),
            "stapler:setpoints": (StepStatus.DONE, ""),
            "toolchanger:setpoints": (StepStatus.DONE, ""),
            "toolchanger:tool_change": (StepStatus.DONE, ""),
            "fixture:fixture_move": (StepStatus.FAILED, "cancelled; finalized"),
        }
        first = sink.of(ChangeoverEvent)
        assert [c.status for c in first] == [ChangeoverStatus.STARTED, ChangeoverStatus.FAILED]
        assert "held by hold:" in first[1].reason
        assert not sink.of(PartProduced) and not [
            e for e in sink.of(JobEvent) if e.status is JobStatus.STARTED
        ]
        # The move was stopped where the axes were (setpoints re-targeted to the actual positions).
        assert [w for w in fixture.dev.writes if w[0] == "width_sp"] == [
            ("width_sp", 420.0),
            ("width_sp", 210.0),
        ]

        fixture.stalled = False
        await engine.command("unhold", by="op")
        await sink.wait_for(is_job(JobStatus.COMPLETED, job.job_id))

    resumed = [c for c in sink.events[held_at:] if isinstance(c, ChangeoverEvent)]
    assert [c.status for c in resumed] == [ChangeoverStatus.STARTED, ChangeoverStatus.COMPLETED]
    # The fixture must be unclamped to move, so the plan asks again; it is open, so that is no new command.
    assert set(resumed[0].steps) == {
        "fixture:fixture_unclamp",
        "fixture:fixture_move",
        "fixture:fixture_clamp",
        "robot1:robot_program",
    }
    assert [w for w in changer.writes if w[0] == "tool_request"] == [("tool_request", 1)]
    assert [w for w in devices["stapler"].writes if w[0] == "force_sp"] == [("force_sp", 800.0)]
    assert [w for w in fixture.dev.writes if w[0] == "clamp"] == [("clamp", False)] * 2 + [("clamp", True)]
    states = sink.states()
    hold = states.index("Holding")
    assert states[hold : hold + 4] == ["Holding", "Held", "Unholding", "Execute"]
    assert len(sink.of(PartProduced)) == 2


async def test_stop_during_a_changeover_parks_it_like_a_hold(config: LoadedConfig) -> None:
    # Given a tool change and a fixture move under way, when stopped, then the move is cut and finalized, the
    # tool change finishes, and only then does the cell reach Stopped.
    devices = soft_cell(config.cell)
    fixture = StalledFixture(config.cell)
    devices["fixture"] = fixture.dev
    changer = devices["toolchanger"]
    stall = ToolChangerStall(changer)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(lambda _e: ("width_sp", 420.0) in fixture.dev.writes)
        await engine.command("stop", by="op")
        await sink.wait_for(
            lambda e: isinstance(e, StepEvent) and e.step == "fixture:fixture_move" and e.status == "failed"
        )
        assert engine.status().state == "Stopping"
        stall.active = False
        changer.set("tool_current", 1)
        changer.set("moving", False)
        await engine.wait_for(State.STOPPED, timeout=T)
    ended = {s.step: s.detail for s in sink.of(StepEvent) if s.status is not StepStatus.STARTED}
    assert ended["fixture:fixture_move"] == "cancelled; finalized"
    assert ended["toolchanger:tool_change"] == ""  # done
    assert "robot1:robot_program" not in ended
    assert "held by stop:" in sink.of(ChangeoverEvent)[-1].reason


async def test_abort_during_a_changeover_cuts_every_step_and_records_their_finalizers(
    config: LoadedConfig,
) -> None:
    # Given a tool change and a fixture move under way, when aborted, then both are cut at once (the tool
    # change too), the move's finalizer has stopped the axis before abort returned, and nothing is written
    # after it returned.
    devices = soft_cell(config.cell)
    fixture = StalledFixture(config.cell)
    devices["fixture"] = fixture.dev
    ToolChangerStall(devices["toolchanger"])
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(
            lambda e: (
                isinstance(e, StepEvent) and e.step == "toolchanger:tool_change" and e.status == "started"
            )
        )
        await sink.wait_for(lambda _e: ("width_sp", 420.0) in fixture.dev.writes)
        await engine.command("abort", by="op")
        writes = total_writes(devices)
        await engine.wait_for(State.ABORTED, timeout=T)
        for _ in range(10):
            await asyncio.sleep(0)  # give any stray task its chance to write
        assert total_writes(devices) == writes

    failed = {s.step: s.detail for s in sink.of(StepEvent) if s.status is StepStatus.FAILED}
    assert failed == {"toolchanger:tool_change": "cancelled", "fixture:fixture_move": "cancelled; finalized"}
    assert ("width_sp", 210.0) in fixture.dev.writes
    assert [c.status for c in sink.of(ChangeoverEvent)] == [
        ChangeoverStatus.STARTED,
        ChangeoverStatus.ABORTED,
    ]
    assert sink.states()[-2:] == ["Aborting", "Aborted"]


async def test_abort_while_holding_cuts_the_step_the_hold_waits_for(config: LoadedConfig) -> None:
    # Given Holding waiting for a tool change that hangs, when aborted, then the tool change is cut at once
    # and the cell goes to Aborted without waiting for the step's timeout.
    devices = soft_cell(config.cell)
    ToolChangerStall(devices["toolchanger"])
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(
            lambda e: (
                isinstance(e, StepEvent) and e.step == "toolchanger:tool_change" and e.status == "started"
            )
        )
        await engine.command("hold", by="op")
        assert engine.status().state == "Holding"
        await engine.command("abort", by="op")
        await engine.wait_for(State.ABORTED, timeout=T)
    failed = {s.step: s.detail for s in sink.of(StepEvent) if s.status is StepStatus.FAILED}
    assert failed["toolchanger:tool_change"] == "cancelled"
    assert sink.of(ChangeoverEvent)[-1].status is ChangeoverStatus.ABORTED
    assert sink.states()[-4:] == ["Execute", "Holding", "Aborting", "Aborted"]


async def test_status_shows_the_active_changeover_and_its_progress(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell)
    ToolChangerStall(devices["toolchanger"])
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(
            lambda e: (
                isinstance(e, StepEvent)
                and e.step == "toolchanger:tool_change"
                and e.status is StepStatus.STARTED
            )
        )
        changeover = engine.status().changeover
        await engine.command("abort", by="op")
    assert changeover is not None
    steps = {s.id: s.status for s in changeover.steps}
    assert steps["toolchanger:tool_change"] == "started"
    assert steps["robot1:robot_program"] == "pending"
    assert (changeover.from_variant, changeover.to_variant) == (None, "oslo")
    data = changeover.to_dict()
    assert data["total"] == len(steps) and json.dumps(data)


# ------------------------------------------------------------------------------------------------------------
# Abort, device failures, stop.


async def test_abort_mid_job_aborts_the_job_and_nothing_is_written_after_it_returned(
    config: LoadedConfig,
) -> None:
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_GOOD, OSLO_GOOD]))
    second_cycle = stall_robot_cycle(devices["robot1"], cycle=2)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 3), by="mes")
        await reset_and_start(engine)
        async with asyncio.timeout(T):
            await second_cycle.wait()
        await engine.command("abort", by="op")
        writes = total_writes(devices)
        await engine.wait_for(State.ABORTED, timeout=T)
        for _ in range(10):
            await asyncio.sleep(0)  # give any stray task its chance to write
        assert total_writes(devices) == writes
        status = engine.status()

    aborted = [e for e in sink.of(JobEvent) if e.status is JobStatus.ABORTED]
    assert [(e.job, e.produced) for e in aborted] == [(job.job_id, 1)]
    assert sink.states()[-2:] == ["Aborting", "Aborted"]
    assert devices["robot1"].writes[-1] == ("start", False)  # the start was dropped before abort returned
    assert status.current_job is None and status.state == "Aborted"


async def test_a_device_failure_during_a_part_holds_the_cell_with_the_reason(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell)
    devices["robot1"].fail_writes["start"] = CommError("robot1", "connection reset", tag="start")
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=T)
        status = engine.status()
    assert "robot1.start: connection reset" in status.reason
    assert status.current_job is not None and status.current_job.job_id == job.job_id
    assert status.current_job.status is JobStatus.STARTED
    alarm = sink.of(AlarmEvent)[-1]
    assert alarm.active and "connection reset" in alarm.message and alarm.source == "robot1"
    hold = next(m for m in sink.of(StateChanged) if m.state == "Holding")
    assert (hold.command, hold.by) == ("hold", "engine")
    assert not sink.of(PartProduced)


async def test_unhold_after_a_device_failure_resumes_the_job_and_clears_the_alarm(
    config: LoadedConfig,
) -> None:
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_GOOD]))
    devices["robot1"].fail_writes["start"] = CommError("robot1", "connection reset", tag="start")
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=T)
        del devices["robot1"].fail_writes["start"]
        await engine.command("unhold", by="op")
        await sink.wait_for(is_job(JobStatus.COMPLETED, job.job_id))
        reason = engine.status().reason
    assert reason == ""
    assert [a.active for a in sink.of(AlarmEvent)] == [True, False]
    assert len(sink.of(PartProduced)) == 2
    assert len([e for e in sink.of(JobEvent) if e.status is JobStatus.STARTED]) == 1


async def test_hold_mid_part_lets_the_part_finish_and_starts_no_other(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_GOOD]))
    first_cycle = stall_robot_cycle(devices["robot1"], cycle=1)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await reset_and_start(engine)
        async with asyncio.timeout(T):
            await first_cycle.wait()
        await engine.command("hold", by="op")
        assert engine.status().state == "Holding"
        devices["robot1"].set("done", True)  # the robot finishes the part in progress
        await engine.wait_for(State.HELD, timeout=T)
    assert [p.index for p in sink.of(PartProduced)] == [1]
    assert sink.index(lambda e: isinstance(e, PartProduced)) > sink.index(
        lambda e: isinstance(e, StateChanged) and e.state == "Holding"
    )


async def test_a_failed_changeover_step_holds_the_cell_naming_the_step(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell)
    devices["toolchanger"].fail_writes["tool_request"] = CommError(
        "toolchanger", "timeout", tag="tool_request"
    )
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=T)
        status = engine.status()
    failed = sink.of(ChangeoverEvent)[-1]
    assert failed.status is ChangeoverStatus.FAILED
    assert "toolchanger:tool_change" in failed.reason and "toolchanger:tool_change" in status.reason
    assert status.changeover is None
    assert not sink.of(PartProduced)


async def test_a_device_unreadable_at_reset_stops_the_cell_with_the_reason(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell)
    devices["toolchanger"].set_bad("tool_current", "no reply")
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.command("reset", by="op")
        await engine.wait_for(State.STOPPED, timeout=T)
        status = engine.status()
    assert sink.states() == ["Stopped", "Resetting", "Stopping", "Stopped"]
    assert "toolchanger.tool_current" in status.reason
    assert sink.of(AlarmEvent)[0].active


async def test_stop_lets_the_part_finish_and_keeps_queued_jobs_queued(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_GOOD]))
    first_cycle = stall_robot_cycle(devices["robot1"], cycle=1)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        first = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        second = await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")
        await reset_and_start(engine)
        async with asyncio.timeout(T):
            await first_cycle.wait()
        await engine.command("stop", by="op")
        devices["robot1"].set("done", True)  # the robot finishes the part in progress
        await engine.wait_for(State.STOPPED, timeout=T)
        status = engine.status()
    assert [p.index for p in sink.of(PartProduced)] == [1]
    assert status.current_job is not None and status.current_job.job_id == first.job_id
    assert status.current_job.produced == 1
    assert [j.job_id for j in status.queue] == [second.job_id]
    assert sink.states()[-2:] == ["Stopping", "Stopped"]


# ------------------------------------------------------------------------------------------------------------
# Commands, orders and listeners.


async def test_a_command_the_state_does_not_allow_is_refused_and_not_recorded(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        before = list(sink.events)
        with pytest.raises(InvalidTransition, match="'start' is not allowed in state 'Stopped'"):
            await engine.command("start", by="op")
        with pytest.raises(InvalidTransition, match="'launch'"):
            await engine.command("launch", by="op")
        assert sink.events == before
        assert engine.status().state == "Stopped"


async def test_a_bad_order_is_refused_and_not_recorded(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        before = list(sink.events)
        with pytest.raises(JobError, match=r"staple_pitch: 30 is outside \[8, 16\] mm"):
            await engine.submit(OrderRequest("PO-1", "oslo", 1, parameters={"staple_pitch": 30.0}), by="mes")
        assert sink.events == before
        assert engine.status().queue == ()


async def test_a_resubmitted_order_is_the_same_job_and_recorded_once(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        first = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        again = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        with pytest.raises(JobError, match="different content"):
            await engine.submit(OrderRequest("PO-1", "oslo", 5), by="mes")
    assert again == first
    assert len([e for e in sink.of(JobEvent) if e.status is JobStatus.QUEUED]) == 1


async def test_a_queued_job_can_be_cancelled(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        view = await engine.cancel(job.job_id, by="op")
        status = engine.status()
    assert view.status is JobStatus.CANCELLED and view.reason == "cancelled by op"
    assert status.queue == ()
    assert sink.of(JobEvent)[-1].status is JobStatus.CANCELLED


async def test_a_queued_job_can_be_cancelled_by_its_order_id(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        view = await engine.cancel_order("PO-1", by="mqtt:mes")
        status = engine.status()
    assert view.job_id == job.job_id and view.status is JobStatus.CANCELLED
    assert status.queue == ()
    assert sink.of(JobEvent)[-1].status is JobStatus.CANCELLED


async def test_cancelling_an_order_id_never_accepted_is_refused(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        before = list(sink.events)
        with pytest.raises(JobError, match="no order 'PO-9': it was never accepted"):
            await engine.cancel_order("PO-9", by="mqtt:mes")
    assert sink.events == before


async def test_cancelling_an_order_whose_job_ended_before_this_run_is_refused(config: LoadedConfig) -> None:
    class Book:
        async def find_order(self, order_id: str) -> OrderRecord | None:
            data = {"status": "done", "by": "mes"}
            return OrderRecord(order_id, "J-OLD", "digest", 1.0, "mes", 2.0, data)

    engine = Engine(config, soft_cell(config.cell), FakeSink(), orders=Book())
    async with running(engine):
        with pytest.raises(JobError, match="order 'PO-1': its job J-OLD is done"):
            await engine.cancel_order("PO-1", by="mqtt:mes")


async def test_listeners_hear_every_recorded_event_in_order_until_unsubscribed(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD])), sink)
    heard: list[Event] = []
    unsubscribe = engine.add_listener(heard.append)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
        assert heard == sink.events
        unsubscribe()
        await engine.command("stop", by="op")
        await engine.wait_for(State.STOPPED, timeout=T)
    assert len(sink.events) > len(heard)


async def test_a_failing_listener_does_not_stop_the_cell(config: LoadedConfig) -> None:
    engine = Engine(config, soft_cell(config.cell), FakeSink())

    def broken(_event: Event) -> None:
        raise RuntimeError("listener bug")

    engine.add_listener(broken)
    async with running(engine):
        await engine.command("reset", by="op")
        assert await engine.wait_for(State.IDLE, timeout=T) is State.IDLE


# ------------------------------------------------------------------------------------------------------------
# Shutdown.


async def test_shutdown_stops_the_cell(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD])), sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
        await engine.shutdown(T)
        assert engine.status().state == "Stopped"
    stop = sink.of(StateChanged)[-2]
    assert (stop.state, stop.command, stop.by) == ("Stopping", "stop", "system")


async def test_shutdown_aborts_when_the_deadline_passes(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD]))
    cycle = stall_robot_cycle(devices["robot1"], cycle=1)  # the part in progress never finishes
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        async with asyncio.timeout(T):
            await cycle.wait()
        await engine.shutdown(0.05)
        await engine.wait_for(State.ABORTED, timeout=T)
    assert sink.states()[-4:] == ["Execute", "Stopping", "Aborting", "Aborted"]
