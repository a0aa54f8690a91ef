"""The TUI against a real controller (real engine on soft devices, real socket): each key of the Overview,
Alarms and Devices panes reaches the service, and a refusal is shown, never raised."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Static, TabbedContent

from cellctl.api.client import ControlClient
from cellctl.api.protocol import PACKML_COMMANDS
from cellctl.core.events import OperatorAction
from cellctl.tui.app import CellApp
from cellctl.tui.link import ControllerLink
from cellctl.tui.panes.alarms import AlarmsPane
from cellctl.tui.panes.devices import DevicesPane
from cellctl.tui.panes.overview import ConfirmAbort
from tests.tui.conftest import SIZE, Live, notes, on_top, until


def tui(live: Live) -> CellApp:
    return CellApp(ControllerLink(live.path))


def state(app: CellApp) -> str | None:
    status = app.link.status
    return None if status is None else str(status.get("state"))


def commands(live: Live) -> list[tuple[str, bool]]:
    """The PackML commands the service journaled, with whether each was accepted."""
    return [
        (e.action, e.accepted)
        for e in live.cell.sink.events
        if isinstance(e, OperatorAction) and e.action in PACKML_COMMANDS
    ]


def alarm(app: CellApp, alarm_id: str) -> dict[str, Any] | None:
    status = app.link.status or {}
    return next((a for a in status.get("alarms") or () if a.get("id") == alarm_id), None)


async def press_estop(pilot: Pilot[None], app: CellApp, live: Live) -> None:
    """Press the e-stop and wait for its alarm in the status."""
    live.devices["safety"].set("estop_ok", False)
    await until(pilot, lambda: alarm(app, "estop") is not None, "the e-stop alarm")


async def estop_selected(pilot: Pilot[None], app: CellApp) -> AlarmsPane:
    """Show the Alarms tab and wait for the e-stop alarm to be the selected row."""
    await pilot.press("5")
    pane = app.query_one(AlarmsPane)
    await until(pilot, lambda: pane.selected == "estop", "the alarm in the table")
    return pane


async def queue_long_order(live: Live) -> None:
    """An order long enough that the cell keeps producing through the test (an empty queue suspends it)."""
    async with ControlClient(live.path) as client:
        await client.request("submit", order_id="SO-LONG", variant="oslo", quantity=100_000)


async def test_the_command_keys_run_the_cell_through_reset_start_hold_unhold_stop(live: Live) -> None:
    await queue_long_order(live)
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        steps = (("r", "Idle"), ("s", "Execute"), ("h", "Held"), ("u", "Execute"), ("t", "Stopped"))
        for key, reached in steps:
            await pilot.press(key)
            await until(pilot, lambda reached=reached: state(app) == reached, f"{reached} after {key}")
        assert str(app.query_one("#ov-state", Static).content) == "STOPPED"

    assert commands(live) == [(c, True) for c in ("reset", "start", "hold", "unhold", "stop")]
    assert all(e.by.startswith("api:") for e in live.cell.sink.events if isinstance(e, OperatorAction))


async def test_a_command_the_state_does_not_allow_is_neither_shown_nor_sent(live: Live) -> None:
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        shown = {b.binding.key for b in app.active_bindings.values() if b.enabled and b.binding.show}
        assert {"r", "x"} <= shown and not shown & {"s", "h", "u", "t", "c"}
        await pilot.press("s", "h")
        await pilot.press("r")
        await until(pilot, lambda: state(app) == "Idle", "Idle")

    assert commands(live) == [("reset", True)]


async def test_abort_asks_first_and_n_keeps_the_cell_as_it_was(live: Live) -> None:
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        await pilot.press("x")
        await until(pilot, lambda: on_top(app, ConfirmAbort), "the abort question")
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmAbort), "the question to close")
        assert commands(live) == []

        await pilot.press("x")
        await until(pilot, lambda: on_top(app, ConfirmAbort), "the abort question")
        await pilot.press("y")
        await until(pilot, lambda: state(app) == "Aborted", "Aborted")
        await pilot.press("c")
        await until(pilot, lambda: state(app) == "Stopped", "Stopped after Clear")

    assert commands(live) == [("abort", True), ("clear", True)]


async def test_a_refused_reset_is_shown_and_the_estop_alarm_is_acknowledged_from_the_alarms_tab(
    live: Live,
) -> None:
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        # Given the e-stop pressed on a stopped cell (it stays Stopped, with a critical alarm)
        await press_estop(pilot, app, live)

        # When Reset is pressed while the e-stop is still pressed, then the refusal is shown
        await pilot.press("r")
        await until(pilot, lambda: any("command refused" in n for n in notes(app)), "the refusal")
        assert any("command refused: interlock:" in n and "e-stop" in n for n in notes(app)), notes(app)
        assert state(app) == "Stopped"

        # When the operator acknowledges the e-stop alarm on the Alarms tab, then it is acknowledged by them
        pane = await estop_selected(pilot, app)
        assert app.focused is pane.query_one(DataTable)
        await pilot.press("a")
        await until(pilot, lambda: (alarm(app, "estop") or {}).get("acked_by") is not None, "the ack")

    [ack] = [e for e in live.cell.sink.events if isinstance(e, OperatorAction) and e.action == "ack"]
    assert ack.accepted and ack.args["alarm"] == "estop"
    assert ("reset", False) in commands(live)


async def test_enter_on_an_alarm_acknowledges_it_and_a_second_ack_is_refused_and_shown(live: Live) -> None:
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        await press_estop(pilot, app, live)
        await estop_selected(pilot, app)
        await pilot.press("enter")
        await until(pilot, lambda: (alarm(app, "estop") or {}).get("acked_by") is not None, "the ack")

        # When it is acknowledged again (still active, so still shown), then the refusal is shown
        await pilot.press("enter")
        await until(pilot, lambda: any("ack refused" in n for n in notes(app)), "the refused ack")
        assert any("acknowledged already" in n for n in notes(app)), notes(app)

    acks = [e for e in live.cell.sink.events if isinstance(e, OperatorAction) and e.action == "ack"]
    assert [a.accepted for a in acks] == [True, False]


async def test_keys_1_to_6_switch_tabs_and_q_quits(live: Live) -> None:
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        tabs = app.query_one(TabbedContent)
        shown = []
        for key in "561":
            await pilot.press(key)
            await pilot.pause()
            shown.append(tabs.active)
        assert shown == ["tab-alarms", "tab-devices", "tab-overview"]
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "the app to quit")


async def test_the_devices_tab_polls_the_controller_and_lists_tags_of_the_selected_device(live: Live) -> None:
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        await pilot.press("6")
        pane = app.query_one(DevicesPane)
        await until(pilot, lambda: pane.polls >= 2, "two polls of the devices view")
        note = str(pane.query_one("#dev-note", Static).content)
        known = app.link.hello.get("commands") or []
        if "devices" not in known:
            # An older controller: said, not raised, and not shown as a notification every second
            assert "no devices view" in note and not any("devices" in n for n in notes(app))
            return
        table = pane.query_one("#dev-table", DataTable)
        assert table.row_count == len(live.devices)
        first = pane.selected
        assert first in live.devices and pane.query_one("#dev-tags", DataTable).row_count > 0
        await pilot.press("down")
        await until(pilot, lambda: pane.selected not in (None, first), "the next device")
        assert pane.query_one("#dev-tags", DataTable).row_count > 0


async def test_the_lease_key_takes_control_or_shows_why_not(live: Live) -> None:
    app = tui(live)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state(app) == "Stopped", "the first status")
        await pilot.press("l")
        if "lease" not in (app.link.hello.get("commands") or []):
            await until(pilot, lambda: any("lease refused" in n for n in notes(app)), "the refusal")
            return
        await until(pilot, lambda: (app.link.status or {}).get("lease") is not None, "the lease taken")
        await pilot.press("l")
        await until(pilot, lambda: (app.link.status or {}).get("lease") is None, "the lease released")
