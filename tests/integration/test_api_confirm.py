"""Answering a waiting step over the control socket and with `cellctl ctl confirm`: wrong evidence is
refused and journaled as refused, the right answer resumes the step and is journaled with who sent it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.core.events import OperatorAction, StepEvent, StepStatus
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.engine.confirm import PromptKind
from cellctl.engine.sequencer import RunResult
from cellctl.engine.steps import REGISTRY, StepContext, StepHandler
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from tests.integration.test_api import WAIT_S, Cell, run_ctl, serving
from tests.softcell import soft_cell


async def _ask_operator(step: PlanStep, ctx: StepContext) -> None:
    await ctx.ask(step, PromptKind.OPERATOR_STEP)


PLAN = ChangeoverPlan(
    from_variant="oslo",
    to_variant="bergen",
    steps=(
        PlanStep(
            id="swap",
            kind="test_manual",
            device="fixture",
            description="manual fixture swap",
            instruction="Swap in the bergen fixture plate",
            evidence="scan the plate id",
            expected_evidence="FX-BERGEN",
            timeout_s=WAIT_S,
        ),
    ),
)


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cell]:
    monkeypatch.setitem(REGISTRY, "test_manual", StepHandler("test_manual", _ask_operator))
    config = load_config(config_dir)
    async with serving(config, soft_cell(config.cell), tmp_path) as cell:
        yield cell


async def _waiting_run(cell: Cell) -> asyncio.Task[RunResult]:
    """Run PLAN through the engine's own sequencer until its step waits for the operator."""
    waiting = asyncio.Event()
    unsubscribe = cell.engine.add_listener(
        lambda e: waiting.set() if isinstance(e, StepEvent) and e.status is StepStatus.WAITING else None
    )
    run = asyncio.create_task(cell.engine._sequencer.run(PLAN, changeover_id="co-1", job_id="job-1"))
    async with asyncio.timeout(WAIT_S):
        await waiting.wait()
    unsubscribe()
    return run


def confirms(cell: Cell) -> list[OperatorAction]:
    return [e for e in cell.sink.events if isinstance(e, OperatorAction) and e.action == "confirm"]


async def test_confirm_over_the_socket_refuses_wrong_evidence_then_resumes_the_step(cell: Cell) -> None:
    run = await _waiting_run(cell)
    async with ControlClient(cell.path) as client:
        status = await client.request("status")
        (prompt,) = status["prompts"]
        assert prompt["step"] == "swap" and prompt["evidence"] == "scan the plate id"
        assert "FX-BERGEN" not in str(status)

        with pytest.raises(ApiError) as info:
            await client.request("confirm", step="swap", evidence="FX-OSLO")
        assert info.value.code == "confirm_refused"
        assert not run.done()

        status = await client.request("confirm", step="swap", evidence="fx-bergen")
    assert status["prompts"] == []
    async with asyncio.timeout(WAIT_S):
        await run

    refused, accepted = confirms(cell)
    assert (refused.accepted, refused.args["evidence"]) == (False, "FX-OSLO")
    assert "does not match" in refused.reason
    assert accepted.accepted and accepted.args["evidence"] == "fx-bergen"
    assert accepted.by == f"api:{accepted.args['caller']['user']}" and accepted.ts > 0
    done = [e for e in cell.sink.events if isinstance(e, StepEvent) and e.status is StepStatus.DONE]
    assert [e.detail for e in done] == [f"confirmed by {accepted.by} (evidence 'fx-bergen')"]


async def test_ctl_confirm_answers_and_status_shows_the_prompt(cell: Cell) -> None:
    run = await _waiting_run(cell)
    sock = str(cell.path)
    ran = await run_ctl("--socket", sock, "status")
    assert ran.code == 0
    assert "swap: Swap in the bergen fixture plate; scan: scan the plate id" in ran.out
    assert "cellctl ctl confirm swap --evidence ID" in ran.out

    ran = await run_ctl("--socket", sock, "confirm", "swap", "--evidence", "nope")
    assert ran.code != 0 and "does not match" in ran.err
    ran = await run_ctl("--socket", sock, "confirm", "swap", "--evidence", "FX-BERGEN")
    assert ran.code == 0 and "step swap confirmed" in ran.out
    async with asyncio.timeout(WAIT_S):
        await run


async def test_confirming_a_step_that_does_not_wait_is_refused(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request("confirm", step="nothing")
    assert info.value.code == "confirm_refused"
    assert "no confirmation is pending" in str(info.value)
