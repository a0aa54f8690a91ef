"""A step that needs a person waits in the sequencer: WAITING recorded, wrong evidence refused, the right
answer resumes it and DONE says who confirmed."""

from __future__ import annotations

import asyncio

import pytest

from cellctl.core.clock import ManualClock
from cellctl.core.events import StepEvent, StepStatus
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.engine.confirm import Confirmations, PromptKind
from cellctl.engine.sequencer import Sequencer
from cellctl.engine.steps import StepContext, StepHandler
from cellctl.errors import ConfirmError, PlanError
from tests.softcell import soft_cell
from tests.unit.test_sequencer import BOUND, CELL, RecordingSink, _profiles


async def _ask_operator(step: PlanStep, ctx: StepContext) -> None:
    await ctx.ask(step, PromptKind.OPERATOR_STEP)


REGISTRY = {"manual": StepHandler("manual", _ask_operator)}

PLAN = ChangeoverPlan(
    from_variant="a",
    to_variant="b",
    steps=(
        PlanStep(
            id="load",
            kind="manual",
            device=None,
            description="load fabric",
            instruction="Load the navy roll",
            evidence="scan the roll label",
            expected_evidence="NAVY-12",
            timeout_s=BOUND,
        ),
    ),
)


async def test_a_waiting_step_resumes_only_on_matching_evidence() -> None:
    sink = RecordingSink()
    clock = ManualClock()
    hub = Confirmations(clock)
    sequencer = Sequencer(_profiles(soft_cell(CELL)), sink, clock, registry=REGISTRY, confirmations=hub)
    run = asyncio.create_task(sequencer.run(PLAN, changeover_id="co-1", job_id="job-1"))
    await sink.wait_for(lambda e: isinstance(e, StepEvent) and e.status is StepStatus.WAITING)

    (prompt,) = hub.pending()
    assert (prompt.step, prompt.instruction, prompt.evidence) == (
        "load",
        "Load the navy roll",
        "scan the roll label",
    )
    with pytest.raises(ConfirmError, match="does not match"):
        hub.answer("load", by="ann", evidence="RED-3")
    assert not run.done()
    hub.answer("load", by="bob", evidence="navy-12")
    async with asyncio.timeout(BOUND):
        await run

    assert sink.steps == [
        ("load", StepStatus.STARTED),
        ("load", StepStatus.WAITING),
        ("load", StepStatus.DONE),
    ]
    (done,) = [e for e in sink.of("load") if e.status is StepStatus.DONE]
    assert done.detail == "confirmed by bob (evidence 'navy-12')"
    assert sink.of("load")[1].detail == "Load the navy roll"


async def test_without_an_operator_a_step_that_asks_fails_with_a_clear_reason() -> None:
    sink = RecordingSink()
    sequencer = Sequencer(_profiles(soft_cell(CELL)), sink, ManualClock(), registry=REGISTRY)
    with pytest.raises(PlanError, match="needs an operator"):
        async with asyncio.timeout(BOUND):
            await sequencer.run(PLAN, changeover_id="co-1", job_id="job-1")
