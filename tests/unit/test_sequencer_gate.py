"""A step in doubt after a restart (``confirm_first``): verified by read-back without a command, or run only
after an operator's confirmation, and the wait never counts against the step's own timeout."""

from __future__ import annotations

import asyncio

import pytest

from cellctl.core.clock import ManualClock
from cellctl.core.events import StepStatus
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.engine.confirm import Confirmations, PromptKind
from cellctl.engine.sequencer import VERIFIED, Sequencer
from cellctl.errors import PlanError
from tests.softcell import soft_cell
from tests.unit.test_sequencer import BOUND, CELL, RecordingSink, _profiles

STEP = "toolchanger:tool_change"
TIMEOUT_S = 0.05
"""The step's own timeout: far shorter than the operator's wait in these tests."""

PLAN = ChangeoverPlan(
    from_variant="a",
    to_variant="b",
    steps=(
        PlanStep(
            id=STEP,
            kind="tool_change",
            device="toolchanger",
            description="toolchanger: change tool none -> FOAM-L",
            params=(("tool", 2),),
            timeout_s=TIMEOUT_S,
        ),
    ),
)
GATE = {STEP: "its outcome before the unclean stop is unknown"}


def _run(sequencer: Sequencer) -> asyncio.Task[object]:
    return asyncio.create_task(
        sequencer.run(PLAN, changeover_id="co-1", job_id="job-1", confirm_first=GATE), name="test:run"
    )


async def test_a_step_in_doubt_whose_result_reads_back_is_done_without_a_command() -> None:
    devices = soft_cell(CELL, initial={"toolchanger": {"tool_current": 2}})
    sink = RecordingSink()
    sequencer = Sequencer(_profiles(devices), sink, ManualClock(), confirmations=Confirmations(ManualClock()))
    async with asyncio.timeout(BOUND):
        await _run(sequencer)
    assert sink.steps == [(STEP, StepStatus.DONE)]
    assert sink.of(STEP)[0].detail == VERIFIED
    assert devices["toolchanger"].writes == []


async def test_a_step_in_doubt_runs_only_after_a_confirmation_and_the_wait_is_not_its_timeout() -> None:
    """Given a tool that does not read back, the step waits (IN_DOUBT, naming what is unknown) with nothing
    written; confirmed after longer than its timeout, it runs and is DONE, confirmed by the operator."""
    devices = soft_cell(CELL)
    sink = RecordingSink()
    hub = Confirmations(ManualClock())
    sequencer = Sequencer(_profiles(devices), sink, ManualClock(), confirmations=hub)
    run = _run(sequencer)
    await sink.wait_for(lambda _e: bool(hub.pending()))
    (prompt,) = hub.pending()
    assert prompt.kind is PromptKind.IN_DOUBT and prompt.evidence is None
    assert "unknown" in prompt.instruction and "do not read back" in prompt.instruction
    # Longer than the step's timeout: a wait inside the step's deadline would fail it.
    await asyncio.sleep(TIMEOUT_S * 3)
    assert devices["toolchanger"].writes == [] and not run.done()
    hub.answer(STEP, by="ann")
    async with asyncio.timeout(BOUND):
        await run
    assert sink.steps == [(STEP, StepStatus.WAITING), (STEP, StepStatus.STARTED), (STEP, StepStatus.DONE)]
    assert sink.of(STEP)[-1].detail == "confirmed by ann"
    assert devices["toolchanger"].writes == [("tool_request", 2)]


async def test_a_step_that_reads_back_once_confirmed_is_not_run_again() -> None:
    devices = soft_cell(CELL)
    sink = RecordingSink()
    hub = Confirmations(ManualClock())
    sequencer = Sequencer(_profiles(devices), sink, ManualClock(), confirmations=hub)
    run = _run(sequencer)
    await sink.wait_for(lambda _e: bool(hub.pending()))
    devices["toolchanger"].set("tool_current", 2)  # the change the killed run commanded has now finished
    hub.answer(STEP, by="ann")
    async with asyncio.timeout(BOUND):
        await run
    assert sink.steps == [(STEP, StepStatus.WAITING), (STEP, StepStatus.DONE)]
    assert sink.of(STEP)[-1].detail.startswith(VERIFIED)
    assert devices["toolchanger"].writes == []


async def test_a_gated_step_cancelled_while_it_waits_stays_in_doubt() -> None:
    """Cancelled while waiting, the step records no FAILED: its outcome is still unknown."""
    devices = soft_cell(CELL)
    sink = RecordingSink()
    hub = Confirmations(ManualClock())
    run = _run(Sequencer(_profiles(devices), sink, ManualClock(), confirmations=hub))
    await sink.wait_for(lambda _e: bool(hub.pending()))
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sink.steps == [(STEP, StepStatus.WAITING)]
    assert hub.pending() == ()


async def test_without_an_operator_a_step_in_doubt_fails_rather_than_runs() -> None:
    devices = soft_cell(CELL)
    sink = RecordingSink()
    sequencer = Sequencer(_profiles(devices), sink, ManualClock())
    with pytest.raises(PlanError, match="in doubt"):
        async with asyncio.timeout(BOUND):
            await _run(sequencer)
    assert devices["toolchanger"].writes == []
    assert sink.steps == [], "no FAILED: the step's outcome is still unknown"
