"""End to end over the control socket with the real planner: a changeover to tromso waits for a person to load
and scan the fabric roll; `cellctl ctl` shows and answers it; the wrong roll is refused; who confirmed, with
which evidence and when, is journaled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.core.events import JobStatus, OperatorAction, StepEvent, StepStatus
from cellctl.schema.load import load_config
from tests.integration.test_api import Cell, is_state, run_ctl, serving, until
from tests.softcell import soft_cell


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    """The example cell on soft devices whose gauge measures what the setup makes: tromso parts pass its
    first-article gate."""
    config = load_config(config_dir)
    async with serving(config, soft_cell(config.cell), tmp_path) as cell:
        yield cell


STEP = "operator:load_fabric"


def _waiting(event: object) -> bool:
    data = getattr(event, "data", {})
    return (
        getattr(event, "kind", "") == "step" and data.get("step") == STEP and data.get("status") == "waiting"
    )


async def test_e2e_a_changeover_to_tromso_waits_for_the_scanned_roll_and_journals_who_confirmed(
    cell: Cell,
) -> None:
    sock = str(cell.path)
    # Given a tromso order started on a cell set up for nothing
    async with ControlClient(cell.path) as client:
        user = (await client.request("hello"))["caller"]["user"]
        await client.watch()
        await client.request("submit", order_id="SO-4711", variant="tromso", quantity=1)
        await client.request("command", name="reset")
        await until(client, is_state("Idle"))
        await client.request("command", name="start")

        # When the changeover reaches the person's step, then status shows what to do and what to scan
        await until(client, _waiting)
        status = await client.request("status")
        (prompt,) = status["prompts"]
        assert (prompt["step"], prompt["device"], prompt["kind"]) == (STEP, "stapler", "operator_step")
        assert prompt["instruction"] == "Load the wide fabric roll on the stapler's cover feeder"
        assert prompt["evidence"] == "scan the roll label"
        assert "FAB-TROMSO" not in str(status)

        ran = await run_ctl("--socket", sock, "status")
        assert ran.code == 0
        assert f"cellctl ctl confirm {STEP} --evidence ID" in ran.out

        # This client took the control lease with its first command: it hands it over to the shell.
        ran = await run_ctl("--socket", sock, "confirm", STEP, "--evidence", "FAB-TROMSO")
        assert ran.code == 1 and "lease_held" in ran.err
        await client.request("lease", action="release")

        # When the wrong roll is scanned, then it is refused and the step still waits
        ran = await run_ctl("--socket", sock, "confirm", STEP, "--evidence", "FAB-OSLO")
        assert ran.code != 0 and "does not match" in ran.err
        assert [p["step"] for p in (await client.request("status"))["prompts"]] == [STEP]

        # When the right one is scanned, then the changeover completes and the job is made
        ran = await run_ctl("--socket", sock, "confirm", STEP, "--evidence", "FAB-TROMSO")
        assert ran.code == 0 and f"step {STEP} confirmed" in ran.out
        await until(client, lambda e: e.kind == "job" and e.data["status"] == JobStatus.COMPLETED.value)

    confirms = [e for e in cell.sink.events if isinstance(e, OperatorAction) and e.action == "confirm"]
    refused, accepted = confirms
    assert (refused.accepted, refused.args["evidence"]) == (False, "FAB-OSLO")
    assert (accepted.accepted, accepted.args["step"], accepted.args["evidence"]) == (True, STEP, "FAB-TROMSO")
    assert accepted.by == f"api:{user}" and accepted.ts > 0
    (done,) = [
        e
        for e in cell.sink.events
        if isinstance(e, StepEvent) and e.step == STEP and e.status is StepStatus.DONE
    ]
    assert done.detail == f"confirmed by api:{user} (evidence 'FAB-TROMSO')"
    assert done.ts >= accepted.ts
