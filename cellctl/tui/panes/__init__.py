"""The TUI's screens, one module each; ``PANES`` lists the tabs the app shows, in ``TAB_ORDER``."""

from __future__ import annotations

from cellctl.tui.pane import Pane
from cellctl.tui.panes.alarms import AlarmsPane
from cellctl.tui.panes.devices import DevicesPane
from cellctl.tui.panes.overview import OverviewPane

TAB_ORDER: tuple[str, ...] = ("Overview", "Orders", "Changeover", "Quality", "Alarms", "Devices")
"""The tabs by title, in the order they appear (keys 1-6); a pane with another title comes last."""

PANES: tuple[type[Pane], ...] = (OverviewPane, AlarmsPane, DevicesPane)
"""Every pane the app shows by default (the Orders, Changeover and Quality panes join it here)."""
