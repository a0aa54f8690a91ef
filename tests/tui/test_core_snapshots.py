"""The TUI's key states as SVG screenshots at 80x24 on the default dark theme (canned, time-free status)."""

from __future__ import annotations

from typing import Any

import pytest

from cellctl.tui.app import CellApp
from tests.tui.canned import HELD_WITH_ALARM, IDLE
from tests.tui.conftest import SIZE, SnapCompare
from tests.tui.fakes import FakeLink

pytestmark = pytest.mark.usefixtures("utc")


def app(status: dict[str, Any]) -> CellApp:
    return CellApp(FakeLink(status))


def test_idle(snap_compare: SnapCompare) -> None:
    assert snap_compare(app(IDLE), terminal_size=SIZE)


def test_held_with_an_alarm(snap_compare: SnapCompare) -> None:
    assert snap_compare(app(HELD_WITH_ALARM), terminal_size=SIZE)


def test_held_with_an_alarm_on_the_alarms_tab(snap_compare: SnapCompare) -> None:
    assert snap_compare(app(HELD_WITH_ALARM), press=["5"], terminal_size=SIZE)


def test_abort_asks_first(snap_compare: SnapCompare) -> None:
    assert snap_compare(app(HELD_WITH_ALARM), press=["x"], terminal_size=SIZE)
