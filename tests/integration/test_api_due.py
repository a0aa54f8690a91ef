"""Due dates over the control socket: the real Engine on a soft cell, and through `cellctl ctl`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.core.clock import ManualClock
from cellctl.core.events import JobEvent, OperatorAction
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from tests.integration.test_api import Cell, run_ctl, serving
from tests.softcell import soft_cell

NOW = datetime(2026, 11, 28, 6, tzinfo=UTC).timestamp()
DUE_TEXT = "2026-11-28T14:00:00+01:00"
DUE_S = datetime(2026, 11, 28, 13, tzinfo=UTC).timestamp()


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    config = load_config(config_dir)
    async with serving(config, soft_cell(config.cell), tmp_path, ManualClock(NOW)) as cell:
        yield cell


async def test_a_due_date_in_iso_8601_round_trips_as_epoch_seconds(cell: Cell) -> None:
    # When an order is submitted with a due time in ISO 8601 with an offset
    async with ControlClient(cell.path) as client:
        job = await client.request("submit", order_id="PO-1", variant="oslo", quantity=2, due=DUE_TEXT)
        status = await client.request("status")
        again = await client.request("submit", order_id="PO-1", variant="oslo", quantity=2, due=DUE_S)

    # Then the job, the status and the journal carry it as epoch seconds, and the same instant given as
    # epoch seconds is the same order
    assert job["due"] == DUE_S
    assert status["queue"][0]["due"] == DUE_S
    assert again["job_id"] == job["job_id"]
    (event,) = [e for e in cell.sink.events if isinstance(e, JobEvent)]
    assert event.due == DUE_S


async def test_a_naive_due_time_is_refused_naming_the_field_and_nothing_is_queued(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request(
                "submit", order_id="PO-1", variant="oslo", quantity=2, due="2026-11-28T14:00"
            )

    assert info.value.code == "bad_request"
    assert "args.due" in str(info.value) and "no timezone" in str(info.value)
    assert cell.engine.status().queue == ()
    assert not any(isinstance(e, JobEvent) for e in cell.sink.events)


async def test_ctl_submit_due_queues_it_and_status_shows_it(cell: Cell) -> None:
    submitted = await run_ctl("--socket", str(cell.path), "submit", "PO-1", "oslo", "2", "--due", DUE_TEXT)
    status = await run_ctl("--socket", str(cell.path), "status")

    assert submitted.code == 0, submitted.err
    assert "due 2026-11-28 13:00:00.000Z" in submitted.out
    assert cell.engine.status().queue[0].due == DUE_S
    queued = [line for line in status.out.splitlines() if "PO-1" in line]
    assert queued and "due 2026-11-28 13:00:00.000Z" in queued[0]
    accepted = [e for e in cell.sink.events if isinstance(e, OperatorAction) and e.action == "submit"]
    assert accepted and accepted[0].args["due"] == DUE_S


@pytest.mark.parametrize(
    ("due", "says"),
    [
        pytest.param("2026-11-28T14:00", "no timezone", id="naive"),
        pytest.param("soon", "not an ISO 8601 time", id="unparseable"),
        pytest.param("nan", "finite", id="nan"),
    ],
)
async def test_ctl_submit_refuses_a_bad_due_before_sending(cell: Cell, due: str, says: str) -> None:
    ran = await run_ctl("--socket", str(cell.path), "submit", "PO-1", "oslo", "2", "--due", due)

    assert ran.code == 2
    assert "--due" in ran.err and says in ran.err
    assert cell.engine.status().queue == ()
