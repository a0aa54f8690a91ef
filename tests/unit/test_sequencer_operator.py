"""The registered ``operator`` step kind in the sequencer on the soft cell, with the planner's own steps: it
waits for the person beside the machine's steps, a cancelled run withdraws its prompt, and a step nobody
confirms times out like any other."""

from __future__ import annotations

import asyncio

import pytest

from cellctl.core.clock import ManualClock
from cellctl.core.events import Event, StepEvent, StepStatus
from cellctl.core.plans import ChangeoverPlan
from cellctl.engine.confirm import Confirmations
from cellctl.engine.planner import plan_changeover, target_setup
from cellctl.engine.sequencer import CANCELLED, Sequencer
from cellctl.errors import StepTimeout
from tests.softcell import soft_cell
from tests.unit.test_sequencer import BOUND, CELL, EXAMPLE, RecordingSink, _profiles

STEP = "operator:load_fabric"


def _plan(timeout_s: float | None = None) -> tuple[Sequencer, RecordingSink, Confirmations, ChangeoverPlan]:
    """A sequencer with an operator hub, and the plan bergen -> tromso (its fabric roll step included)."""
    sink = RecordingSink()
    hub = Confirmations(ManualClock())
    sequencer = Sequencer(_profiles(soft_cell(CELL)), sink, ManualClock(), confirmations=hub)
    tromso = EXAMPLE.recipes["tromso"]
    if timeout_s is not None:
        steps = {
            name: step.model_copy(update={"timeout_s": timeout_s})
            for name, step in tromso.operator_steps.items()
        }
        tromso = tromso.model_copy(update={"operator_steps": steps})
    current = target_setup(EXAMPLE.recipes["bergen"], CELL)
    return sequencer, sink, hub, plan_changeover(current, tromso, CELL, from_variant="bergen")


def _waiting(event: Event) -> bool:
    return isinstance(event, StepEvent) and event.step == STEP and event.status is StepStatus.WAITING


async def test_the_machine_steps_run_while_the_person_is_asked_and_the_answer_completes_the_run() -> None:
    sequencer, sink, hub, plan = _plan()
    run = asyncio.get_running_loop().create_task(sequencer.run(plan, changeover_id="co-1", job_id="job-1"))
    await sink.wait_for(_waiting)

    # The tool change and the program do not wait for the person (they are on other devices)
    await sink.wait_for(
        lambda e: (
            isinstance(e, StepEvent) and e.step == "robot1:robot_program" and e.status is StepStatus.DONE
        )
    )
    done = {step for step, status in sink.steps if status is StepStatus.DONE}
    assert {"toolchanger:tool_change", "robot1:robot_program", "stapler:setpoints"} <= done
    assert [p.step for p in hub.pending()] == [STEP]
    hub.answer(STEP, by="ann", evidence="FAB-TROMSO")
    async with asyncio.timeout(BOUND):
        result = await run
    assert set(result.durations) == {s.id for s in plan.steps}
    assert sink.of(STEP)[-1].detail == "confirmed by ann (evidence 'FAB-TROMSO')"


async def test_cancelling_the_run_while_the_person_is_asked_withdraws_the_prompt() -> None:
    sequencer, sink, hub, plan = _plan()
    run = asyncio.get_running_loop().create_task(sequencer.run(plan, changeover_id="co-1", job_id="job-1"))
    await sink.wait_for(_waiting)
    assert [p.step for p in hub.pending()] == [STEP]

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert hub.pending() == ()
    assert (sink.of(STEP)[-1].status, sink.of(STEP)[-1].detail) == (StepStatus.FAILED, CANCELLED)


async def test_a_step_nobody_confirms_times_out_and_withdraws_its_prompt() -> None:
    sequencer, sink, hub, plan = _plan(timeout_s=0.02)
    with pytest.raises(StepTimeout, match=r"did not finish within 0\.02 s"):
        async with asyncio.timeout(BOUND):
            await sequencer.run(plan, changeover_id="co-1", job_id="job-1")
    assert hub.pending() == ()
    assert sink.of(STEP)[-1].status is StepStatus.FAILED
