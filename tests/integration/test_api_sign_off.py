"""Signing off a first article over the control socket and through `cellctl ctl sign-off`: the real Engine
on a soft cell, journaled as operator actions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.core.events import FirstArticleEvent, FirstArticleStatus
from cellctl.engine import OrderRequest, State
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from tests.integration.test_api import WAIT_S, Cell, is_action, run_ctl, serving
from tests.softcell import soft_cell


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    """A cell whose gauge measures 0 (every part fails), on the example recipes (each gated)."""
    config = load_config(config_dir)
    async with serving(config, soft_cell(config.cell, follow=False), tmp_path) as cell:
        yield cell


async def held_on_a_first_article(cell: Cell) -> None:
    await cell.engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
    await cell.engine.command("reset", by="op")
    await cell.engine.wait_for(State.IDLE, timeout=WAIT_S)
    await cell.engine.command("start", by="op")
    await cell.engine.wait_for(State.HELD, timeout=WAIT_S)


def actions(cell: Cell) -> list[tuple[str, bool]]:
    return [(e.action, e.accepted) for e in cell.sink.events if is_action(e)]


async def test_sign_off_over_the_socket_ends_qualification_and_is_journaled(cell: Cell) -> None:
    # Given a cell held on a failed first article
    await held_on_a_first_article(cell)
    assert cell.engine.status().qualification is not None

    # When a client signs off with a note
    async with ControlClient(cell.path) as client:
        status = await client.request("sign_off", note="checked on the bench")

    # Then qualification ended, the sign-off names the caller, and the action is journaled as accepted
    assert status["qualification"] is None
    [signed] = [e for e in cell.sink.events if isinstance(e, FirstArticleEvent) and e.status == "signed_off"]
    assert signed.status is FirstArticleStatus.SIGNED_OFF
    assert signed.by.startswith("api:") and signed.note == "checked on the bench"
    assert actions(cell) == [("sign_off", True)]


async def test_sign_off_with_nothing_to_sign_is_a_job_error_journaled_as_refused(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request("sign_off")

    assert info.value.code == "job_error"
    assert "no first-article qualification is open" in str(info.value)
    assert actions(cell) == [("sign_off", False)]


async def test_ctl_status_shows_the_qualification_and_ctl_sign_off_ends_it(cell: Cell) -> None:
    await held_on_a_first_article(cell)

    before = await run_ctl("--socket", str(cell.path), "status")
    signed = await run_ctl("--socket", str(cell.path), "sign-off", "--note", "ok by QA")
    after = await run_ctl("--socket", str(cell.path), "status")

    assert (before.code, signed.code, after.code) == (0, 0, 0), signed.err
    shown = [line for line in before.out.splitlines() if line.startswith("first article")]
    assert shown and "oslo in qualification" in shown[0] and "0/1 consecutive passes, 1 failed" in shown[0]
    assert "first article signed off" in signed.out
    assert not any(line.startswith("first article") for line in after.out.splitlines())
    assert cell.engine.status().qualification is None
