"""The TUI's screens, one ``Pane`` subclass per module; ``PANES``: the tabs the app shows (``TAB_ORDER``)."""

from __future__ import annotations

from cellctl.tui.pane import Pane
from cellctl.tui.panes.alarms import AlarmsPane
from cellctl.tui.panes.changeover import ChangeoverPane
from cellctl.tui.panes.devices import DevicesPane
from cellctl.tui.panes.orders import OrdersPane
from cellctl.tui.panes.overview import OverviewPane
from cellctl.tui.panes.quality import QualityPane

TAB_ORDER: tuple[str, ...] = ("Overview", "Orders", "Changeover", "Quality", "Alarms", "Devices")
"""The tabs by title, in the order they appear (keys 1-6); a pane with another title comes last."""

PANES: tuple[type[Pane], ...] = (
    OverviewPane,
    OrdersPane,
    ChangeoverPane,
    QualityPane,
    AlarmsPane,
    DevicesPane,
)
"""Every pane the app shows by default."""

__all__ = [
    "PANES",
    "TAB_ORDER",
    "AlarmsPane",
    "ChangeoverPane",
    "DevicesPane",
    "OrdersPane",
    "OverviewPane",
    "QualityPane",
]
