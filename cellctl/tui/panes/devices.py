"""The Devices tab: each device's link health and, for the selected one, its live tag values."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from cellctl.tui.format import seconds
from cellctl.tui.pane import Link, Pane

POLL_S = 1.0
"""How often the ``devices`` view is asked for while the tab is visible."""

STATE_STYLE: dict[str, str] = {"up": "bold green", "connecting": "yellow", "down": "bold red"}
QUALITY_STYLE: dict[str, str] = {"good": "green", "uncertain": "yellow", "bad": "bold red"}


class DevicesPane(Pane):
    """Devices (from the ``devices`` request, every second while shown) and the selected device's tags."""

    title = "Devices"

    DEFAULT_CSS = """
    DevicesPane #dev-note {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    DevicesPane #dev-table {
        height: 1fr;
        min-height: 4;
    }
    DevicesPane #dev-tags {
        height: 1fr;
        min-height: 4;
    }
    """

    BINDINGS = [Binding("f", "poll", "Refresh")]

    def __init__(self, link: Link, *, id: str | None = None) -> None:
        super().__init__(link, id=id)
        self._devices: list[dict[str, Any]] = []
        self._polling = False
        self.polls = 0
        """``devices`` requests answered (ok or not): tests wait on it."""

    def compose(self) -> ComposeResult:
        yield Static("asking the controller for its devices...", id="dev-note")
        devices: DataTable[Text | str] = DataTable(id="dev-table", cursor_type="row", zebra_stripes=True)
        devices.add_columns("device", "protocol", "state", "for", "error")
        yield devices
        tags: DataTable[Text | str] = DataTable(id="dev-tags", cursor_type="row")
        tags.add_columns("tag", "value", "quality", "age")
        yield tags

    def on_mount(self) -> None:
        self.set_interval(POLL_S, self._tick, name="devices-poll")

    async def _tick(self) -> None:
        if self.is_on_screen:
            await self.action_poll()

    async def action_poll(self) -> None:
        """Ask for the devices view once (skipped while a request is already out)."""
        if self._polling:
            return
        self._polling = True
        try:
            outcome = await self.link.request("devices")
        finally:
            self._polling = False
            self.polls += 1
        note = self.query_one("#dev-note", Static)
        if not outcome.ok:
            if outcome.code == "unknown_command":
                note.update("This controller has no devices view (an older server).")
            else:
                note.update(Text(f"devices: {outcome.code}: {outcome.message}", "yellow"))
            return
        devices = outcome.result.get("devices")
        self._devices = [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []
        note.update(f"{len(self._devices)} device(s); the selected one's tags below.")
        self._render_devices()

    def _render_devices(self) -> None:
        table: DataTable[Text | str] = self.query_one("#dev-table", DataTable)
        row = table.cursor_row
        table.clear()
        for device in self._devices:
            state = str(device.get("state", "?"))
            table.add_row(
                str(device.get("device", "?")),
                str(device.get("protocol", "")),
                Text(state, STATE_STYLE.get(state.lower(), "")),
                seconds(device.get("state_for_s")),
                Text(str(device.get("error") or ""), "red"),
                key=str(device.get("device", "?")),
            )
        if self._devices:
            table.move_cursor(row=min(max(row, 0), len(self._devices) - 1), animate=False)
        self._render_tags()

    def _render_tags(self) -> None:
        table: DataTable[Text | str] = self.query_one("#dev-table", DataTable)
        tags: DataTable[Text | str] = self.query_one("#dev-tags", DataTable)
        tags.clear()
        row = table.cursor_row
        if not 0 <= row < len(self._devices):
            return
        for tag in self._devices[row].get("tags") or ():
            if not isinstance(tag, dict):
                continue
            quality = str(tag.get("quality", ""))
            age = tag.get("age_s")
            tags.add_row(
                str(tag.get("tag", "?")),
                _value(tag.get("value")),
                Text(quality, QUALITY_STYLE.get(quality.lower(), "")),
                f"{age:.1f} s" if isinstance(age, int | float) else "-",
            )

    @property
    def selected(self) -> str | None:
        """The device under the cursor."""
        row = self.query_one("#dev-table", DataTable).cursor_row
        return str(self._devices[row].get("device")) if 0 <= row < len(self._devices) else None

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if message.data_table.id == "dev-table":
            self._render_tags()


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
