"""The Orders screen against a real controller (the Engine on soft devices, over the control socket): a new
order through the form, reorder, cancel and the scheduler's proposal by key; refusals are shown."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from cellctl.core.events import JobStatus, OperatorAction
from cellctl.engine import OrderRequest, State
from cellctl.tui.link import ControllerLink
from cellctl.tui.pane import Outcome
from cellctl.tui.panes.orders import NewOrderForm, OrdersPane
from cellctl.tui.widgets.confirm import ConfirmModal
from tests.integration.test_api import WAIT_S, Cell
from tests.integration.test_api_reorder import queue_of
from tests.tui.canned import STATUS
from tests.tui.conftest import PaneApp, linked, notes, on_top, start_order, until
from tests.tui.fakes import FakeLink


def actions(cell: Cell) -> list[tuple[str, bool]]:
    """The journaled operator actions, without the control lease the TUI's first command takes."""
    return [
        (e.action, e.accepted)
        for e in cell.sink.events
        if isinstance(e, OperatorAction) and e.action != "lease"
    ]


def queue(cell: Cell) -> list[str]:
    return [j.job_id for j in cell.engine.status().queue]


def table_jobs(app: PaneApp) -> list[str]:
    table = app.pane.query_one("#queue", DataTable)
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


async def fill_form(pilot: Pilot[Any], app: PaneApp, *fields: str) -> None:
    """Open the new-order form, type ``fields`` into its inputs in turn (Tab between) and press Enter."""
    await pilot.press("n")
    await until(pilot, lambda: on_top(app, NewOrderForm), "the form")
    for n, text in enumerate(fields):
        if n:
            await pilot.press("tab")
        await pilot.press(*text)
    await pilot.press("enter")


async def started(pilot: Pilot[Any], app: PaneApp, jobs: int) -> None:
    await until(pilot, lambda: linked(app), "the link")
    await until(pilot, lambda: len(table_jobs(app)) == jobs, f"{jobs} rows in the queue table")


async def test_a_new_order_through_the_form_is_queued(cell: Cell) -> None:
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 0)
        # When the operator opens the form, fills it in and presses Enter
        await fill_form(pilot, app, "SO-7", "oslo", "3", "staple_pitch=12")

        # Then the form closes and the order is queued in the controller and in the table
        await until(pilot, lambda: not isinstance(app.screen, NewOrderForm), "the form to close")
        await until(pilot, lambda: len(table_jobs(app)) == 1, "the queued order in the table")
        (job,) = cell.engine.status().queue
        assert (job.order_id, job.variant, job.quantity, dict(job.parameters)) == (
            "SO-7",
            "oslo",
            3,
            {"staple_pitch": 12.0},
        )
        assert table_jobs(app) == [job.job_id]
        assert any("SO-7 queued" in n for n in notes(app))
    assert actions(cell) == [("submit", True)]


async def test_a_refused_order_is_shown_in_the_form_which_stays_open(cell: Cell) -> None:
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 0)
        await fill_form(pilot, app, "SO-8", "narvik", "1")

        # Then the controller's refusal is shown in the form and as a notification; nothing is queued
        form = app.screen
        await until(pilot, lambda: "refused" in str(form.query_one("#error", Static).render()), "refusal")
        assert isinstance(app.screen, NewOrderForm)
        assert "job_error" in str(form.query_one("#error", Static).render())
        assert any(n.startswith("submit refused: job_error") for n in notes(app))
        assert queue(cell) == []
        # And Esc closes it without sending anything more
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, NewOrderForm), "the form to close")
    assert actions(cell) == [("submit", False)]


async def test_a_form_with_no_quantity_is_not_sent(cell: Cell) -> None:
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 0)
        await fill_form(pilot, app, "SO-9", "oslo")
        form = app.screen
        await until(pilot, lambda: "quantity" in str(form.query_one("#error", Static).render()), "error")
    assert actions(cell) == []


async def test_shift_down_moves_the_selected_job_down_one_place(cell: Cell) -> None:
    first, second, third = await queue_of(cell, ["oslo", "oslo", "oslo"])
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 3)
        # When the operator moves the first job down
        await pilot.press("shift+down")

        # Then the controller's queue, and the table, have it second; the cursor stayed on it
        await until(pilot, lambda: table_jobs(app) == [second, first, third], "the new order in the table")
        assert queue(cell) == [second, first, third]
        assert isinstance(app.pane, OrdersPane) and app.pane.selected_job() == first
        # When it is moved down again, then it is last
        await pilot.press("shift+down")
        await until(pilot, lambda: table_jobs(app) == [second, third, first], "moved again")
        # When it is moved down once more, then nothing is sent and the operator is told
        await pilot.press("shift+down")
        await until(pilot, lambda: any("already last" in n for n in notes(app)), "warning")
    assert actions(cell) == [("reorder", True), ("reorder", True)]


async def test_d_asks_then_cancels_the_selected_job(cell: Cell) -> None:
    first, second = await queue_of(cell, ["oslo", "bergen"])
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 2)
        await pilot.press("down", "d")
        await until(pilot, lambda: on_top(app, ConfirmModal), "the question")
        assert second in str(app.screen.query_one("#question", Static).render())
        # "n" keeps it
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmModal), "the question to close")
        assert queue(cell) == [first, second]
        # "y" cancels it
        await pilot.press("d")
        await until(pilot, lambda: on_top(app, ConfirmModal), "the question")
        await pilot.press("y")
        await until(pilot, lambda: table_jobs(app) == [first], "the cancelled job gone from the table")
    assert queue(cell) == [first]
    assert cell.engine.job(second).status is JobStatus.CANCELLED
    assert actions(cell) == [("cancel", True)]


async def test_p_applies_the_schedulers_proposal(cell: Cell) -> None:
    # Given alternating variants, so the scheduler proposes to group them
    await queue_of(cell, ["oslo", "bergen", "oslo", "bergen"])
    proposed = cell.engine.status().proposed_order
    assert proposed is not None
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 4)
        proposal = app.pane.query_one("#proposal", Static)
        assert " ".join(proposed.job_ids) in str(proposal.render())
        assert "saves" in str(proposal.render())

        await pilot.press("p")

        await until(pilot, lambda: table_jobs(app) == list(proposed.job_ids), "the proposed order")
        assert queue(cell) == list(proposed.job_ids)
        assert "none" in str(proposal.render())
    assert actions(cell) == [("apply_proposal", True)]


async def test_p_with_the_queue_in_the_proposed_order_says_so(cell: Cell) -> None:
    # Given one queued job: the scheduler's order is the queue's
    await queue_of(cell, ["oslo"])
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 1)
        assert "none" in str(app.pane.query_one("#proposal", Static).render())
        await pilot.press("p")
        await until(pilot, lambda: bool(notes(app)), "a notification")
        assert notes(app) == [": the queue was in the proposed order already"]
    assert actions(cell) == [("apply_proposal", True)]


async def test_a_refused_proposal_shows_the_controllers_reason() -> None:
    # The engine always proposes unless its scheduler fails: the refusal comes from a canned controller.
    refusal = Outcome(False, code="job_error", message="the scheduler has no proposed order for this queue")
    link = FakeLink(STATUS, {"apply_proposal": refusal})
    app = PaneApp(OrdersPane, link)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("p")
        await until(pilot, lambda: bool(notes(app)), "a notification")
        assert notes(app) == [
            "apply_proposal refused: job_error: the scheduler has no proposed order for this queue"
        ]
    assert link.sent == [("apply_proposal", {})]


async def test_cancelling_the_job_in_production_shows_the_refusal(cell: Cell) -> None:
    # Given a long job in production (shown first, with the running mark)
    job_id = await start_order(cell, OrderRequest("PO-1", "oslo", 100_000))
    await cell.engine.wait_for(State.EXECUTE, timeout=WAIT_S)
    app = PaneApp(OrdersPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, app, 1)
        assert table_jobs(app) == [job_id]

        # When the operator cancels it, then the controller's refusal is shown and it goes on
        await pilot.press("d")
        await until(pilot, lambda: on_top(app, ConfirmModal), "the question")
        assert "running job" in str(app.screen.query_one("#question", Static).render())
        await pilot.press("y")
        await until(pilot, lambda: bool(notes(app)), "the refusal")
        (shown,) = notes(app)
        assert shown.startswith("cancel refused: job_error:") and "in production" in shown
        assert cell.engine.job(job_id).status is JobStatus.STARTED
        await cell.engine.command("stop", by="op")
    assert actions(cell) == [("cancel", False)]
