"""The Changeover screen against a real controller: a changeover to tromso waits for a person to load and scan
the fabric roll; the modal shows the instruction, a wrong scan is refused in it, the right one completes the
changeover and the job (the same story as tests/integration/test_api_operator_step.py, from the TUI)."""

from __future__ import annotations

from textual.widgets import DataTable, Input, Static

from cellctl.api.client import ControlClient
from cellctl.core.events import OperatorAction
from cellctl.engine import OrderRequest
from cellctl.tui.link import ControllerLink
from cellctl.tui.panes.changeover import ChangeoverPane, OperatorStepModal
from tests.integration.test_api import Cell
from tests.tui.conftest import PaneApp, completed, linked, notes, on_top, start_order, until

STEP = "operator:load_fabric"


async def start_tromso(cell: Cell) -> str:
    """A tromso order started on a cell set up for nothing: its changeover will wait for the roll."""
    return await start_order(cell, OrderRequest("SO-4711", "tromso", 1))


def refusal(app: PaneApp) -> str:
    return str(app.screen.query_one("#refusal", Static).render())


async def test_the_operator_step_modal_refuses_a_wrong_scan_and_the_right_one_completes_the_job(
    cell: Cell,
) -> None:
    app = PaneApp(ChangeoverPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: linked(app), "the link")
        job_id = await start_tromso(cell)

        # When the changeover reaches the person's step, then the modal says what to do and what to scan
        await until(pilot, lambda: on_top(app, OperatorStepModal), "the operator step modal")
        modal = app.screen
        assert isinstance(modal, OperatorStepModal) and modal.prompt["step"] == STEP
        shown = " ".join(str(s.render()) for s in modal.query(Static))
        assert "Load the wide fabric roll on the stapler's cover feeder" in shown
        assert "scan the roll label" in shown
        assert "FAB-TROMSO" not in shown
        table = app.pane.query_one("#steps", DataTable)
        assert table.row_count == len(cell.engine.status().changeover.steps)  # type: ignore[union-attr]

        # When the wrong roll is scanned, then the refusal is shown in the modal, which stays open
        await pilot.press(*"FAB-OSLO", "enter")
        await until(pilot, lambda: "does not match" in refusal(app), "the refusal in the modal")
        assert app.screen is modal
        assert modal.query_one("#evidence", Input).value == ""
        assert any(n.startswith("confirm refused: confirm_refused") for n in notes(app))
        assert [p.step for p in cell.engine.status().prompts] == [STEP]

        # When the right roll is scanned, then the modal closes and the job is made
        await pilot.press(*"FAB-TROMSO", "enter")
        await until(pilot, lambda: not isinstance(app.screen, OperatorStepModal), "the modal to close")
        await until(pilot, lambda: completed(cell, job_id), "the job to complete")
        assert any(f"step {STEP} confirmed" in n for n in notes(app))

    confirms = [e for e in cell.sink.events if isinstance(e, OperatorAction) and e.action == "confirm"]
    assert [(c.accepted, c.args["step"], c.args["evidence"]) for c in confirms] == [
        (False, STEP, "FAB-OSLO"),
        (True, STEP, "FAB-TROMSO"),
    ]


async def test_escape_hides_the_modal_once_and_e_brings_it_back(cell: Cell) -> None:
    app = PaneApp(ChangeoverPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: linked(app), "the link")
        await start_tromso(cell)
        await until(pilot, lambda: on_top(app, OperatorStepModal), "the operator step modal")

        # When the operator hides it, then it stays hidden while the step waits (status keeps coming)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, OperatorStepModal), "the modal hidden")
        waiting = str(app.pane.query_one("#waiting", Static).render())
        assert STEP in waiting
        shown = app.statuses
        assert (await app.link.request("hello")).ok  # a request the link follows with a fresh status
        await until(pilot, lambda: app.statuses > shown, "another status")
        await pilot.pause()
        assert not isinstance(app.screen, OperatorStepModal)

        # When they press e, then it is back and answers the step
        await pilot.press("e")
        await until(pilot, lambda: on_top(app, OperatorStepModal), "the modal again")
        await pilot.press(*"FAB-TROMSO", "enter")
        await until(pilot, lambda: not cell.engine.status().prompts, "the step confirmed")
        await until(pilot, lambda: not isinstance(app.screen, OperatorStepModal), "the modal to close")


async def test_a_step_confirmed_elsewhere_closes_the_modal(cell: Cell) -> None:
    app = PaneApp(ChangeoverPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: linked(app), "the link")
        await start_tromso(cell)
        await until(pilot, lambda: on_top(app, OperatorStepModal), "the operator step modal")

        # When another terminal confirms the step
        async with ControlClient(cell.path) as other:
            await other.request("confirm", step=STEP, evidence="FAB-TROMSO")

        # Then the modal closes by itself
        await until(pilot, lambda: not isinstance(app.screen, OperatorStepModal), "the modal to close")


async def test_e_without_a_waiting_step_says_so(cell: Cell) -> None:
    app = PaneApp(ChangeoverPane, ControllerLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: linked(app), "the link")
        await pilot.press("e")
        await until(pilot, lambda: bool(notes(app)), "a notification")
        assert notes(app) == [": No step is waiting for a person"]
        assert "No changeover running" in str(app.pane.query_one("#head", Static).render())
