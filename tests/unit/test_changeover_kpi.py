"""Changeover KPIs and external steps run ahead, on a soft cell with a manual clock.

The clock moves only where a device takes time, so every figure is computed by hand: a tool change takes
4 s, the magazine's preselect 0.5 s, each measurement 1 s; everything else answers at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellctl.core.clock import ManualClock
from cellctl.core.events import (
    ChangeoverEvent,
    ChangeoverKpi,
    ChangeoverStatus,
    JobStatus,
    PartProduced,
    StepEvent,
    StepKpi,
    StepStatus,
)
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.kpi import actual_path_s
from cellctl.engine.sequencer import CANCELLED, Sequencer
from cellctl.engine.staging import Stager, lead_parts, runnable_ahead
from cellctl.engine.steps import StepContext, StepHandler
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import following, soft_cell
from tests.unit.test_engine import FakeSink, is_job, reset_and_start, running, stall_robot_cycle

T = 5.0
PRESELECT = "toolchanger:setpoints"


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def timed_cell(config: LoadedConfig, clock: ManualClock) -> dict[str, SoftDriver]:
    """The soft cell whose tool changes, preselects and measurements move ``clock``; parts pass."""
    devices: dict[str, SoftDriver] = {}
    follow = following(devices)

    def measure(channel: str) -> float:
        if channel == "width_mm":
            clock.advance(1.0)
        return follow(channel)

    devices.update(soft_cell(config.cell, measure=measure))

    def toolchanger(tag: str, _value: TagValue) -> None:
        if tag == "tool_request":
            clock.advance(4.0)
        elif tag == "preselect":
            clock.advance(0.5)

    devices["toolchanger"].on_write(toolchanger)
    return devices


def step_done(step: str, job: str) -> object:
    return lambda e: isinstance(e, StepEvent) and (e.step, e.job, e.status) == (step, job, StepStatus.DONE)


async def test_the_next_jobs_preselect_runs_during_the_last_part_and_is_not_redone(
    config: LoadedConfig,
) -> None:
    # Given oslo x2 then bergen x1 on an empty cell, the robot's second cycle (oslo's last part) held open
    clock = ManualClock()
    devices = timed_cell(config, clock)
    last_part_started = stall_robot_cycle(devices["robot1"], 2)
    sink = FakeSink()
    engine = Engine(config, devices, sink, clock=clock)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        bergen = (await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")).job_id
        await reset_and_start(engine)

        # When the last oslo part is in the robot, bergen's preselect completes meanwhile
        async with asyncio.timeout(T):
            await last_part_started.wait()
        await sink.wait_for(step_done(PRESELECT, bergen))
        assert not [p for p in sink.of(PartProduced) if p.index == 2]
        devices["robot1"].set("done", True)  # the last oslo part finishes
        await sink.wait_for(is_job(JobStatus.COMPLETED, bergen))

    # Then the changeover to bergen did not preselect again: the magazine got one request per variant
    preselects = [value for tag, value in devices["toolchanger"].writes if tag == "preselect"]
    assert preselects == [1, 2]
    to_bergen = [c for c in sink.of(ChangeoverEvent) if c.job == bergen]
    assert [c.status for c in to_bergen] == [ChangeoverStatus.STARTED, ChangeoverStatus.COMPLETED]
    assert PRESELECT not in to_bergen[0].steps and "toolchanger:tool_change" in to_bergen[0].steps
    ahead = [e for e in sink.of(StepEvent) if e.step == PRESELECT and e.job == bergen]
    assert {e.changeover for e in ahead} == {to_bergen[0].changeover}
    assert sink.index(step_done(PRESELECT, bergen)) < sink.index(
        lambda e: isinstance(e, PartProduced) and e.variant == "oslo" and e.index == 2
    )


async def test_kpis_split_the_changeover_into_external_internal_and_first_article_time(
    config: LoadedConfig,
) -> None:
    # Given the same run: oslo x2 (its last part held until bergen's preselect ran ahead), then bergen x1
    clock = ManualClock()
    start = clock.wall()
    devices = timed_cell(config, clock)
    last_part_started = stall_robot_cycle(devices["robot1"], 2)
    sink = FakeSink()
    engine = Engine(config, devices, sink, clock=clock)
    async with running(engine):
        oslo = (await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")).job_id
        bergen = (await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")).job_id
        await reset_and_start(engine)
        async with asyncio.timeout(T):
            await last_part_started.wait()
        await sink.wait_for(step_done(PRESELECT, bergen))
        devices["robot1"].set("done", True)
        await sink.wait_for(lambda e: isinstance(e, ChangeoverKpi) and e.job == bergen)
        await engine.wait_for(State.SUSPENDED, timeout=T)

    # Then, by hand (monotonic = wall - start):
    #   0.0-4.5  changeover to oslo: preselect 0.5 + tool change 4.0 (internal, nothing ran ahead)
    #   5.5      oslo part 1 measured: first good part of oslo
    #   5.5-6.0  bergen's preselect runs ahead while oslo part 2 is in the robot
    #   7.0      oslo part 2 measured: last good part of oslo
    #   7.0-11.0 changeover to bergen: the tool change 4.0 (the preselect is not redone)
    #   12.0     bergen part 1 measured: first good part of bergen
    first, second = sink.of(ChangeoverKpi)
    assert (first.job, first.from_variant, first.to_variant) == (oslo, None, "oslo")
    assert first.last_good_ts is None and first.total_s is None
    assert first.first_good_ts == pytest.approx(start + 5.5)
    assert (first.external_s, first.external_wait_s) == (0.0, 0.0)
    assert first.internal_s == pytest.approx(4.5)
    assert first.first_article_s == pytest.approx(1.0)
    assert first.ended_by == "part"

    assert (second.job, second.from_variant, second.to_variant) == (bergen, "oslo", "bergen")
    assert second.last_good_ts == pytest.approx(start + 7.0)
    assert second.first_good_ts == pytest.approx(start + 12.0)
    assert second.total_s == pytest.approx(5.0)
    assert second.external_s == pytest.approx(0.5)
    assert second.external_wait_s == 0.0
    assert second.internal_s == pytest.approx(4.0)
    assert second.first_article_s == pytest.approx(1.0)
    assert second.planned_external_s == pytest.approx(0.1)
    # stapler force 0.1 then tool change 4.0 then robot program 0.5
    assert second.planned_internal_s == pytest.approx(4.6)
    by_step = {s.step: s for s in second.steps}
    assert by_step[PRESELECT] == StepKpi(
        step=PRESELECT, device="toolchanger", phase="external", planned_s=0.1, actual_s=0.5
    )
    tool_change = by_step["toolchanger:tool_change"]
    assert (tool_change.phase, tool_change.planned_s, tool_change.actual_s) == ("internal", 4.0, 4.0)
    assert {s.phase for s in second.steps if s.step != PRESELECT} == {"internal"}
    assert second.changeover == next(c.changeover for c in sink.of(ChangeoverEvent) if c.job == bergen)


async def test_a_sign_off_closes_the_kpi_when_no_part_was_good(config: LoadedConfig) -> None:
    # Given oslo x2 whose parts all fail (gauge 0), held on its first article after 4.5 s of changeover
    clock = ManualClock()
    devices = soft_cell(config.cell, follow=False)
    devices["toolchanger"].on_write(lambda tag, _v: clock.advance(4.5) if tag == "tool_request" else None)
    sink = FakeSink()
    engine = Engine(config, devices, sink, clock=clock)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=T)
        assert not sink.of(ChangeoverKpi)

        # When a quality lead signs off 30 s later
        clock.advance(30.0)
        await engine.sign_off(by="qa:lena")

    # Then the KPI closes at the sign-off
    [kpi] = sink.of(ChangeoverKpi)
    assert kpi.ended_by == "sign_off"
    assert kpi.internal_s == pytest.approx(4.5)
    assert kpi.first_article_s == pytest.approx(30.0)


# ------------------------------------------------------------------------------------------------------------
# What may run ahead, and the stager's lifetime


def _step(sid: str, device: str | None, *, external: bool, after: tuple[str, ...] = ()) -> PlanStep:
    return PlanStep(id=sid, kind="slow", device=device, description=sid, after=after, external=external)


def test_only_external_steps_on_free_devices_after_such_steps_run_ahead() -> None:
    plan = ChangeoverPlan(
        from_variant="a",
        to_variant="b",
        steps=(
            _step("stage", "cart", external=True),
            _step("heat", "oven", external=True, after=("stage",)),
            _step("swap", "cart", external=False, after=("stage",)),
            _step("load", "cart", external=True, after=("swap",)),  # after an internal step
            _step("force", "press", external=True),  # on a device the part cycle uses
            _step("ask", None, external=True),  # no device: an operator's, not run ahead
        ),
    )
    ahead = runnable_ahead(plan, busy={"press"})
    assert [s.id for s in ahead.steps] == ["stage", "heat"]
    assert lead_parts(ahead, cycle_s=3.0) == 1
    assert lead_parts(ahead, cycle_s=0.5) == 4  # 2 s of steps at a 0.5 s cycle
    assert actual_path_s(ahead, {"stage": 0.3, "heat": 0.7}) == pytest.approx(1.0)


async def test_cancelling_the_stager_cancels_its_steps_and_records_them(config: LoadedConfig) -> None:
    # Given a run ahead whose step never finishes
    started = asyncio.Event()

    async def slow(_step: PlanStep, _ctx: StepContext) -> None:
        started.set()
        await asyncio.Event().wait()

    sink = FakeSink()
    sequencer = Sequencer({}, sink, ManualClock(), registry={"slow": StepHandler("slow", slow)})
    stager = Stager(sequencer)
    plan = ChangeoverPlan(from_variant="a", to_variant="b", steps=(_step("stage", None, external=True),))
    async with asyncio.TaskGroup() as group:
        stager.start(group, plan, changeover_id="C1", job_id="J2")
        async with asyncio.timeout(T):
            await started.wait()

        # When production ends (Hold, Stop, Abort) and cancels it
        await stager.cancel()

    # Then the step is recorded as cancelled and the stager is free
    assert [(e.step, e.status, e.detail) for e in sink.of(StepEvent)] == [
        ("stage", StepStatus.STARTED, ""),
        ("stage", StepStatus.FAILED, CANCELLED),
    ]
    assert not stager.active and await stager.take() is None


async def test_hold_during_the_last_part_cancels_the_steps_run_ahead_and_the_changeover_redoes_them(
    config: LoadedConfig,
) -> None:
    # Given oslo x2 then bergen x1, the last oslo part in the robot and bergen's preselect stuck on its write
    devices = soft_cell(config.cell)
    changer = devices["toolchanger"]
    gate = asyncio.Event()
    write = changer.write

    async def slow_write(tag: str, value: TagValue) -> None:
        if tag == "preselect" and value == 2:
            await gate.wait()
        await write(tag, value)

    changer.write = slow_write  # type: ignore[method-assign]
    last_part_started = stall_robot_cycle(devices["robot1"], 2)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        bergen = (await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")).job_id
        await reset_and_start(engine)
        async with asyncio.timeout(T):
            await last_part_started.wait()
        await sink.wait_for(
            lambda e: isinstance(e, StepEvent) and (e.step, e.status) == (PRESELECT, StepStatus.STARTED)
        )

        # When the operator holds: the part in the robot finishes, production stops
        await engine.command("hold", by="op")
        devices["robot1"].set("done", True)
        await engine.wait_for(State.HELD, timeout=T)
        cancelled = [e for e in sink.of(StepEvent) if e.job == bergen]

        # and after Unhold the changeover to bergen runs
        gate.set()
        await engine.command("unhold", by="op")
        await sink.wait_for(is_job(JobStatus.COMPLETED, bergen))

    # Then the step run ahead was cancelled with production, and the changeover preselected itself
    assert [(e.step, e.status, e.detail) for e in cancelled] == [
        (PRESELECT, StepStatus.STARTED, ""),
        (PRESELECT, StepStatus.FAILED, CANCELLED),
    ]
    to_bergen = next(c for c in sink.of(ChangeoverEvent) if c.job == bergen)
    assert PRESELECT in to_bergen.steps
    assert [v for tag, v in changer.writes if tag == "preselect"] == [1, 2]


async def test_a_step_that_fails_ahead_is_planned_again_in_the_changeover(config: LoadedConfig) -> None:
    # Given a magazine that refuses bergen's preselect once (the value does not read back)
    devices = soft_cell(config.cell)
    changer = devices["toolchanger"]
    refusals = [2]

    def refuse(tag: str, value: TagValue) -> None:
        if tag == "preselect" and refusals and value == refusals[0]:
            refusals.pop()
            changer.set("preselect", 0)

    changer.on_write(refuse)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        bergen = (await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")).job_id
        await reset_and_start(engine)
        # When the cell runs both jobs
        await sink.wait_for(is_job(JobStatus.COMPLETED, bergen))

    # Then the failure ahead did not stop oslo, and the changeover to bergen preselected again
    ahead = [e for e in sink.of(StepEvent) if e.step == PRESELECT and e.job == bergen]
    assert [e.status for e in ahead] == [
        StepStatus.STARTED,
        StepStatus.FAILED,
        StepStatus.STARTED,
        StepStatus.DONE,
    ]
    assert "Held" not in sink.states()
    to_bergen = next(c for c in sink.of(ChangeoverEvent) if c.job == bergen)
    assert PRESELECT in to_bergen.steps
    [kpi] = [k for k in sink.of(ChangeoverKpi) if k.job == bergen]
    assert kpi.external_s == 0.0
    assert [s.actual_s for s in kpi.steps if s.phase == "external"] == [None]


async def test_abort_returns_only_once_the_steps_run_ahead_stopped(config: LoadedConfig) -> None:
    # Given bergen's preselect stuck ahead while oslo's last part is in the robot
    devices = soft_cell(config.cell)
    changer = devices["toolchanger"]
    write = changer.write

    async def stuck_write(tag: str, value: TagValue) -> None:
        if tag == "preselect" and value == 2:
            await asyncio.Event().wait()
        await write(tag, value)

    changer.write = stuck_write  # type: ignore[method-assign]
    last_part_started = stall_robot_cycle(devices["robot1"], 2)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")
        await reset_and_start(engine)
        async with asyncio.timeout(T):
            await last_part_started.wait()
        await sink.wait_for(
            lambda e: isinstance(e, StepEvent) and (e.step, e.status) == (PRESELECT, StepStatus.STARTED)
        )

        # When the operator aborts
        await engine.command("abort", by="op")

        # Then nothing runs ahead any more the moment Abort returned
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "engine:external" and not t.done()]
        last = [e for e in sink.of(StepEvent) if e.step == PRESELECT][-1]
        assert (last.status, last.detail) == (StepStatus.FAILED, CANCELLED)
