"""The Engine restarted after an unclean stop: safe power-up with an alarm, jobs restored, the interrupted
changeover resumed under its id with in-doubt steps verified by read-back or confirmed by an operator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverStatus,
    JobEvent,
    JobStatus,
    PartProduced,
    StepEvent,
    StepStatus,
)
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.confirm import PromptKind
from cellctl.engine.engine import RECOVERY_ALARM
from cellctl.engine.recovery import (
    InterruptedChangeover,
    RecoveredJob,
    RecoveredStep,
    Recovery,
    StepState,
)
from cellctl.engine.sequencer import VERIFIED
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell
from tests.unit.test_engine import (
    BERGEN_GOOD,
    OSLO_GOOD,
    FakeSink,
    GaugeScript,
    is_job,
    running,
    total_writes,
)
from tests.unit.test_sequencer import OSLO_ON_DEVICES

T = 5.0
CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def config() -> LoadedConfig:
    return load_config(CONFIG)


TOOL, PROGRAM = "toolchanger:tool_change", "robot1:robot_program"
UNCLAMP, MOVE, CLAMP, FORCE = (
    "fixture:fixture_unclamp",
    "fixture:fixture_move",
    "fixture:fixture_clamp",
    "stapler:setpoints",
)

# Killed on the way from oslo to bergen: the tool change had finished on the device (its DONE never reached
# the journal), the program load had not, the fixture was unclamped and had not moved yet.
DEVICES = {
    "toolchanger": {"tool_current": 2, "tool_request": 2, "preselect": 2},
    "robot1": {"active_program": 11, "program": 11},
    "fixture": {"width_act": 420.0, "depth_act": 400.0, "clamped": False, "clamp": False},
    "stapler": {"force_sp": 800.0},
}


def _step(step_id: str, state: StepState) -> RecoveredStep:
    device, _, kind = step_id.partition(":")
    return RecoveredStep(id=step_id, state=state, kind=kind, device=device)


def _job(config: LoadedConfig, job_id: str, variant: str, seq: int, *, stale: bool = False) -> RecoveredJob:
    recipe = config.recipes[variant]
    return RecoveredJob(
        job_id=job_id,
        order_id=f"SO-{job_id}",
        variant=variant,
        recipe_version=recipe.version - stale,
        recipe_hash="an-older-recipe" if stale else recipe.snapshot_hash(),
        quantity=1,
        status=JobStatus.QUEUED,
        submitted_at=1.0,
        submitted_by="mes",
        seq=seq,
        parameters={"staple_pitch": 10.0},
    )


def _recovery(config: LoadedConfig) -> Recovery:
    changeover = InterruptedChangeover(
        changeover_id="C-old",
        job_id="J1",
        from_variant="oslo",
        to_variant="bergen",
        started_at=1.0,
        steps=(
            _step(TOOL, StepState.IN_DOUBT),
            _step(PROGRAM, StepState.IN_DOUBT),
            _step(UNCLAMP, StepState.DONE),
            _step(MOVE, StepState.NOT_STARTED),
            _step(CLAMP, StepState.NOT_STARTED),
            _step(FORCE, StepState.NOT_STARTED),
        ),
    )
    jobs = (
        _job(config, "J1", "bergen", 10),
        _job(config, "J2", "oslo", 20),
        _job(config, "J3", "bergen", 30, stale=True),
    )
    return Recovery(unclean=True, last_state="Execute", changeover=changeover, jobs=jobs)


def _engine(config: LoadedConfig) -> tuple[FakeSink, Engine, dict[str, object]]:
    sink = FakeSink()
    devices = soft_cell(config.cell, measure=GaugeScript([BERGEN_GOOD, OSLO_GOOD]), initial=DEVICES)
    engine = Engine(config, devices, sink, recovery=_recovery(config))
    return sink, engine, dict(devices)


async def test_after_an_unclean_stop_the_cell_powers_up_stopped_with_the_alarm_and_the_story(
    config: LoadedConfig,
) -> None:
    sink, engine, _devices = _engine(config)
    async with running(engine):
        status = engine.status()
        alarm = await sink.wait_for(lambda e: isinstance(e, AlarmEvent) and e.alarm == RECOVERY_ALARM)
    assert status.state == "Stopped"
    assert isinstance(alarm, AlarmEvent) and alarm.active
    assert "unclean stop" in status.reason and "2 in doubt" in status.reason
    assert status.current_job is not None and status.current_job.job_id == "J1"
    assert [j.job_id for j in status.queue] == ["J2"]
    recovery = status.to_dict()["recovery"]
    assert recovery["changeover"]["in_doubt"] == [TOOL, PROGRAM]
    assert recovery["changeover"]["done"] == [UNCLAMP]
    assert recovery["restored_jobs"] == ["J1", "J2"]
    assert [r["job_id"] for r in recovery["refused_jobs"]] == ["J3"]


async def test_a_job_whose_recipe_changed_is_not_restored_and_says_why(
    config: LoadedConfig,
) -> None:
    sink, engine, _devices = _engine(config)
    async with running(engine):
        refused = await sink.wait_for(is_job(JobStatus.ABORTED, "J3"))
        # The order id is free again: the order can be submitted anew against today's recipe.
        again = await engine.submit(OrderRequest("SO-J3", "bergen", 1), by="mes")
    assert isinstance(refused, JobEvent)
    assert "changed since the job was queued" in refused.reason
    assert again.job_id != "J3" and again.recipe_hash == config.recipes["bergen"].snapshot_hash()


async def test_the_interrupted_changeover_resumes_under_its_id_and_asks_before_a_step_in_doubt(
    config: LoadedConfig,
) -> None:
    """When reset and started: nothing is written until Start; the tool change reads back (verified, no
    command), the unclamp journaled done reads back (no command), the program load does not and waits for
    the operator with the robot untouched; confirmed, it runs, and the changeover completes under C-old."""
    sink, engine, devices = _engine(config)
    async with running(engine):
        await engine.cancel("J2", by="op")  # only the interrupted job runs here
        await engine.command("reset", by="op")
        await engine.wait_for(State.IDLE, timeout=T)
        assert total_writes(devices) == 0  # type: ignore[arg-type]
        await engine.command("start", by="op")
        await sink.wait_for(lambda e: isinstance(e, StepEvent) and e.status is StepStatus.WAITING)
        (prompt,) = engine.status().prompts
        assert (prompt.step, prompt.kind, prompt.changeover) == (PROGRAM, PromptKind.IN_DOUBT, "C-old")
        assert devices["robot1"].writes == []  # type: ignore[attr-defined]
        in_doubt = engine.status().to_dict()["recovery"]["changeover"]["in_doubt"]
        assert in_doubt == [PROGRAM], "the verified tool change is no longer in doubt"
        await engine.confirm(PROGRAM, by="ann")
        await sink.wait_for(is_job(JobStatus.COMPLETED, "J1"))
        after = engine.status()

    steps = {(e.step, e.status, e.detail) for e in sink.of(StepEvent) if e.changeover == "C-old"}
    assert (TOOL, StepStatus.DONE, VERIFIED) in steps
    assert (UNCLAMP, StepStatus.DONE, VERIFIED) in steps
    assert (PROGRAM, StepStatus.DONE, "confirmed by ann") in steps
    assert {s for s, status, _ in steps if status is StepStatus.STARTED} == {PROGRAM, MOVE, CLAMP, FORCE}
    assert devices["toolchanger"].writes == []  # type: ignore[attr-defined]
    changeovers = [(e.changeover, e.status, e.reason) for e in sink.of(ChangeoverEvent)]
    assert changeovers[:2] == [
        ("C-old", ChangeoverStatus.STARTED, "resumed after an unclean stop"),
        ("C-old", ChangeoverStatus.COMPLETED, ""),
    ]
    assert after.recovery is None
    resets = [e for e in sink.of(AlarmEvent) if e.alarm == RECOVERY_ALARM]
    assert [a.active for a in resets] == [True, False]


async def test_cancelling_the_interrupted_job_closes_its_changeover(
    config: LoadedConfig,
) -> None:
    sink, engine, _devices = _engine(config)
    async with running(engine):
        await engine.cancel("J1", by="op")
        closed = await sink.wait_for(
            lambda e: isinstance(e, ChangeoverEvent) and e.status is ChangeoverStatus.ABORTED
        )
        status = engine.status()
    assert isinstance(closed, ChangeoverEvent) and closed.changeover == "C-old"
    assert status.current_job is None
    assert status.recovery is not None and status.recovery.changeover is not None, "shown until Reset"


async def test_a_job_killed_in_production_goes_on_from_its_count_after_reset_and_start(
    config: LoadedConfig,
) -> None:
    """Given a started oslo job with 1 of 3 parts made and the cell set up for oslo, when reset and started,
    then no changeover runs and parts 2 and 3 are made under the same job id."""
    started = dataclasses.replace(
        _job(config, "J1", "oslo", 10),
        status=JobStatus.STARTED,
        quantity=3,
        produced=1,
        good=1,
        started_at=2.0,
    )
    recovery = Recovery(unclean=True, last_state="Execute", changeover=None, jobs=(started,))
    sink = FakeSink()
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD] * 2), initial=OSLO_ON_DEVICES)
    engine = Engine(config, devices, sink, recovery=recovery)
    async with running(engine):
        assert engine.status().current_job is not None
        await engine.command("reset", by="op")
        await engine.wait_for(State.IDLE, timeout=T)
        await engine.command("start", by="op")
        done = await sink.wait_for(is_job(JobStatus.COMPLETED, "J1"))
    assert isinstance(done, JobEvent) and (done.produced, done.good) == (3, 3)
    assert [p.index for p in sink.of(PartProduced)] == [2, 3]
    assert sink.of(ChangeoverEvent) == []
