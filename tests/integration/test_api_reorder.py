"""Reordering the queue over the control socket: the real Engine on a soft cell, journaled as operator
actions, and through `cellctl ctl`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.engine import OrderRequest
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from tests.integration.test_api import Cell, is_action, run_ctl, serving
from tests.softcell import soft_cell


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    config = load_config(config_dir)
    async with serving(config, soft_cell(config.cell), tmp_path) as cell:
        yield cell


async def queue_of(cell: Cell, variants: list[str]) -> list[str]:
    ids = []
    for n, variant in enumerate(variants, start=1):
        job = await cell.engine.submit(OrderRequest(f"PO-{n}", variant, 1), by="mes")
        ids.append(job.job_id)
    return ids


def actions(cell: Cell) -> list[tuple[str, bool]]:
    return [(e.action, e.accepted) for e in cell.sink.events if is_action(e)]


async def test_reorder_over_the_socket_sets_the_queue_and_is_journaled(cell: Cell) -> None:
    # Given three queued jobs
    first, second, third = await queue_of(cell, ["oslo", "bergen", "oslo"])

    # When a client reorders them
    async with ControlClient(cell.path) as client:
        status = await client.request("reorder", job_ids=[second, third, first])

    # Then the reply and the engine show the new order, and the action is journaled as accepted
    assert [j["job_id"] for j in status["queue"]] == [second, third, first]
    assert [j.job_id for j in cell.engine.status().queue] == [second, third, first]
    assert actions(cell) == [("reorder", True)]


async def test_a_bad_reorder_over_the_socket_is_a_job_error_journaled_as_refused(cell: Cell) -> None:
    first, second = await queue_of(cell, ["oslo", "bergen"])

    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request("reorder", job_ids=[second])

    assert info.value.code == "job_error"
    assert [j.job_id for j in cell.engine.status().queue] == [first, second]
    assert actions(cell) == [("reorder", False)]


async def test_apply_proposal_over_the_socket_takes_the_proposed_order(cell: Cell) -> None:
    await queue_of(cell, ["oslo", "bergen", "oslo", "bergen"])
    proposed = cell.engine.status().proposed_order
    assert proposed is not None

    async with ControlClient(cell.path) as client:
        status = await client.request("apply_proposal")

    assert [j["job_id"] for j in status["queue"]] == list(proposed.job_ids)
    assert actions(cell) == [("apply_proposal", True)]


async def test_ctl_status_shows_the_proposal_and_apply_proposal_takes_it(cell: Cell) -> None:
    # Given alternating jobs, so the proposal differs from the queue's order
    await queue_of(cell, ["oslo", "bergen", "oslo", "bergen"])
    proposed = cell.engine.status().proposed_order
    assert proposed is not None

    # When the operator reads the status, takes the proposal and reads the status again
    before = await run_ctl("--socket", str(cell.path), "status")
    applied = await run_ctl("--socket", str(cell.path), "apply-proposal")
    after = await run_ctl("--socket", str(cell.path), "status")

    # Then the proposal was shown, taken, and is no longer shown
    assert (before.code, applied.code, after.code) == (0, 0, 0)
    shown = [line for line in before.out.splitlines() if line.startswith("proposed")]
    assert shown and shown[0].split()[1 : 1 + len(proposed.job_ids)] == list(proposed.job_ids)
    assert [j.job_id for j in cell.engine.status().queue] == list(proposed.job_ids)
    assert not any(line.startswith("proposed") for line in after.out.splitlines())


async def test_ctl_reorder_sets_the_order_given_on_the_command_line(cell: Cell) -> None:
    first, second = await queue_of(cell, ["oslo", "bergen"])

    ran = await run_ctl("--socket", str(cell.path), "reorder", second, first)

    assert ran.code == 0, ran.err
    assert [j.job_id for j in cell.engine.status().queue] == [second, first]
