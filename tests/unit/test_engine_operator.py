"""Operator steps in the engine on the soft cell: a changeover to tromso waits for the fabric roll to be
loaded and scanned; wrong evidence is refused, the right answer is journaled with who and when; Hold withdraws
the prompt; a step confirmed before a Hold is not asked again; a step nobody confirms times out and holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.events import ChangeoverEvent, ChangeoverStatus, Event, JobStatus, StepEvent, StepStatus
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.confirm import PromptKind
from cellctl.errors import ConfirmError
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.schema.recipe import Recipe
from tests.softcell import soft_cell
from tests.unit.test_engine import FakeSink, T, is_job, reset_and_start, running

LOAD = "operator:load_fabric"
CHECK = "operator:check_cover"


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def with_operator_steps(config: LoadedConfig, steps: dict[str, Any]) -> LoadedConfig:
    """The example config with tromso's operator steps replaced by ``steps``."""
    tromso = config.recipes["tromso"]
    recipe = Recipe.model_validate({**tromso.model_dump(mode="json"), "operator_steps": steps})
    return dataclasses.replace(config, recipes={**config.recipes, "tromso": recipe})


def _is_waiting(event: Event, step: str) -> bool:
    return isinstance(event, StepEvent) and event.step == step and event.status is StepStatus.WAITING


async def wait_waiting(sink: FakeSink, step: str, nth: int = 1) -> None:
    """Until the ``nth`` WAITING event of ``step`` is recorded."""
    await sink.wait_for(lambda _e: sum(1 for e in sink.events if _is_waiting(e, step)) >= nth)


def step_events(sink: FakeSink, step: str) -> list[StepEvent]:
    return [e for e in sink.of(StepEvent) if e.step == step]


async def start_tromso(engine: Engine) -> str:
    job = await engine.submit(OrderRequest("SO-77", "tromso", 1), by="mes")
    await reset_and_start(engine)
    return job.job_id


async def test_wrong_evidence_is_refused_and_the_right_one_completes_the_step(config: LoadedConfig) -> None:
    # Given a changeover to tromso waiting for the fabric roll
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        job = await start_tromso(engine)
        await wait_waiting(sink, LOAD)
        (prompt,) = engine.status().prompts
        assert (prompt.step, prompt.kind, prompt.device) == (LOAD, PromptKind.OPERATOR_STEP, "stapler")
        assert prompt.evidence == "scan the roll label"

        # When someone scans the wrong roll, then it is refused and the step still waits
        with pytest.raises(ConfirmError, match="does not match"):
            await engine.confirm(LOAD, evidence="FAB-OSLO", by="ann")
        status = engine.status()
        assert [p.step for p in status.prompts] == [LOAD]
        assert status.changeover is not None
        assert {s.id: s.status for s in status.changeover.steps}[LOAD] == "waiting"

        # When the right roll is scanned, then the step is done and the job runs
        await engine.confirm(LOAD, evidence=" fab-tromso ", by="bob")
        await sink.wait_for(is_job(JobStatus.COMPLETED, job))

    (done,) = [e for e in step_events(sink, LOAD) if e.status is StepStatus.DONE]
    assert done.detail == "confirmed by bob (evidence ' fab-tromso ')"
    assert done.ts > 0
    assert engine.status().variant == "tromso"


async def test_hold_while_waiting_withdraws_the_prompt_and_unhold_asks_again(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        job = await start_tromso(engine)
        await wait_waiting(sink, LOAD)

        # When the cell is held while the person has not confirmed yet
        await engine.command("hold", by="op")
        await engine.wait_for(State.HELD, timeout=T)

        # Then the prompt is gone, the step is recorded as cancelled and the changeover as failed
        assert engine.status().prompts == ()
        assert step_events(sink, LOAD)[-1].status is StepStatus.FAILED
        assert step_events(sink, LOAD)[-1].detail == "cancelled"
        failed = [e for e in sink.of(ChangeoverEvent) if e.status is ChangeoverStatus.FAILED]
        assert len(failed) == 1 and "hold" in failed[0].reason

        # When the cell is unheld, then the re-planned changeover asks again (nobody confirmed it)
        await engine.command("unhold", by="op")
        await wait_waiting(sink, LOAD, nth=2)
        assert [p.step for p in engine.status().prompts] == [LOAD]
        await engine.confirm(LOAD, evidence="FAB-TROMSO", by="bob")
        await sink.wait_for(is_job(JobStatus.COMPLETED, job))

    first, second = [e for e in sink.of(ChangeoverEvent) if e.status is ChangeoverStatus.STARTED]
    assert LOAD in second.steps and set(second.steps) <= set(first.steps)


async def test_an_operator_step_confirmed_before_a_hold_is_not_asked_again(config: LoadedConfig) -> None:
    # Given tromso with two operator steps, the second after the first
    config = with_operator_steps(
        config,
        {
            "load_fabric": {
                "instruction": "Load the wide fabric roll",
                "evidence": {"ask": "scan the roll label", "expect": "FAB-TROMSO"},
                "device": "stapler",
            },
            "check_cover": {"instruction": "Check the cover lies flat", "after": ["load_fabric"]},
        },
    )
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        job = await start_tromso(engine)
        await wait_waiting(sink, LOAD)
        await engine.confirm(LOAD, evidence="FAB-TROMSO", by="bob")
        await wait_waiting(sink, CHECK)

        # When the cell is held while the second step waits, and unheld
        await engine.command("hold", by="op")
        await engine.wait_for(State.HELD, timeout=T)
        await engine.command("unhold", by="op")
        await wait_waiting(sink, CHECK, nth=2)

        # Then only the second step is asked again
        assert [p.step for p in engine.status().prompts] == [CHECK]
        await engine.confirm(CHECK, by="bob")
        await sink.wait_for(is_job(JobStatus.COMPLETED, job))

    started = [e for e in sink.of(ChangeoverEvent) if e.status is ChangeoverStatus.STARTED]
    assert len(started) == 2
    assert LOAD in started[0].steps and LOAD not in started[1].steps
    assert sum(1 for e in step_events(sink, LOAD) if e.status is StepStatus.WAITING) == 1
    assert [e.detail for e in step_events(sink, CHECK) if e.status is StepStatus.DONE] == ["confirmed by bob"]


async def test_an_operator_step_nobody_confirms_times_out_and_holds_the_cell(config: LoadedConfig) -> None:
    config = with_operator_steps(
        config, {"load_fabric": {"instruction": "Load the wide fabric roll", "timeout_s": 0.05}}
    )
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        await start_tromso(engine)
        await engine.wait_for(State.HELD, timeout=T)
        status = engine.status()

    assert LOAD in status.reason and "did not finish within 0.05 s" in status.reason
    assert status.prompts == ()
    assert step_events(sink, LOAD)[-1].status is StepStatus.FAILED
