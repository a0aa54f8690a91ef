"""Snapshots of key states at 80x24 from canned, time-free status (a FakeLink): a cell producing (Orders,
Quality) and a changeover waiting for the operator (the modal open). Update with ``--snapshot-update``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cellctl.tui.pane import Link, Outcome, Pane
from cellctl.tui.panes.changeover import ChangeoverPane, OperatorStepModal
from cellctl.tui.panes.orders import OrdersPane
from cellctl.tui.panes.quality import QualityPane
from tests.tui.canned import CHANGEOVER_STARTED, CHART, STATUS, WAITING
from tests.tui.conftest import SIZE, PaneApp, SnapCompare
from tests.tui.fakes import FakeLink

pytestmark = pytest.mark.usefixtures("utc")


def app_of(make: Callable[[Link], Pane], status: dict[str, Any]) -> PaneApp:
    return PaneApp(make, FakeLink(status, {"spc": Outcome(True, CHART)}))


def test_producing_orders(snap_compare: SnapCompare) -> None:
    assert snap_compare(app_of(OrdersPane, STATUS), terminal_size=SIZE)


def test_producing_quality(snap_compare: SnapCompare) -> None:
    app = app_of(QualityPane, STATUS)

    async def charted(pilot: Any) -> None:
        # Verdicts come from pushed part events: the newest parts were seen made.
        for n, verdict in ((36, "pass"), (37, "pass"), (38, "pass"), (39, "fail"), (40, "pass")):
            data = {"part": f"P-{n:04d}", "verdict": verdict}
            event = {"kind": "part", "stream": "part", "ts": 0, "data": data}
            pilot.app.pane.event({"seq": n, "event": event})
        await pilot.press("r")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=charted)


def test_changeover_waiting_for_the_operator(snap_compare: SnapCompare) -> None:
    def at_52_s(link: Link) -> Pane:
        return ChangeoverPane(link, clock=lambda: CHANGEOVER_STARTED + 52.0)

    app = app_of(at_52_s, WAITING)

    async def modal_open(pilot: Any) -> None:
        await pilot.pause()
        assert isinstance(pilot.app.screen, OperatorStepModal)

    assert snap_compare(app, terminal_size=SIZE, run_before=modal_open)


def test_changeover_steps_behind_the_hidden_modal(snap_compare: SnapCompare) -> None:
    def at_52_s(link: Link) -> Pane:
        return ChangeoverPane(link, clock=lambda: CHANGEOVER_STARTED + 52.0)

    assert snap_compare(app_of(at_52_s, WAITING), press=["escape"], terminal_size=SIZE)
