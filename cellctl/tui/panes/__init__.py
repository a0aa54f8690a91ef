"""The TUI's screens, one ``Pane`` subclass per module; ``PANES`` lists them in tab order."""

from __future__ import annotations

from cellctl.tui.pane import Pane
from cellctl.tui.panes.changeover import ChangeoverPane
from cellctl.tui.panes.orders import OrdersPane
from cellctl.tui.panes.quality import QualityPane

PANES: list[type[Pane]] = [
    OrdersPane,
    ChangeoverPane,
    QualityPane,
]
"""Every screen, in the order of the tabs."""

__all__ = ["PANES", "ChangeoverPane", "OrdersPane", "QualityPane"]
