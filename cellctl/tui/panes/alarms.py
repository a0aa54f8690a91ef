"""The Alarms tab: the alarms active or not yet acknowledged, most severe first; a key acknowledges one."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from cellctl.tui.format import clock, severity_style
from cellctl.tui.pane import Link, Pane


class AlarmsPane(Pane):
    """A table of ``status.alarms``; Enter or a acknowledges the selected alarm."""

    title = "Alarms"

    DEFAULT_CSS = """
    AlarmsPane #al-table {
        height: 1fr;
    }
    AlarmsPane #al-empty {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    """

    BINDINGS = [Binding("a", "ack", "Acknowledge")]
    ACTION_COMMANDS = {"ack": "ack"}

    def __init__(self, link: Link, *, id: str | None = None) -> None:
        super().__init__(link, id=id)
        self._ids: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="al-empty")
        table: DataTable[Text | str] = DataTable(id="al-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("severity", "alarm", "state", "since", "message", "source")
        yield table

    def on_mount(self) -> None:
        if self.link.status is not None:
            self.show(self.link.status)

    def show(self, status: dict[str, Any]) -> None:
        if not self.is_mounted:
            return
        alarms = [a for a in status.get("alarms") or () if isinstance(a, dict)]
        table: DataTable[Text | str] = self.query_one("#al-table", DataTable)
        selected = self.selected
        table.clear()
        self._ids = []
        for alarm in alarms:
            alarm_id = str(alarm.get("id", "?"))
            severity = str(alarm.get("severity", ""))
            table.add_row(
                Text(severity, severity_style(severity)),
                alarm_id,
                _state(alarm),
                clock(alarm.get("raised_ts")),
                str(alarm.get("message", "")),
                str(alarm.get("source", "")),
                key=alarm_id,
            )
            self._ids.append(alarm_id)
        if selected in self._ids:
            table.move_cursor(row=self._ids.index(selected), animate=False)
        self.query_one("#al-empty", Static).update(
            "No alarms." if not alarms else f"{len(alarms)} alarm(s): Enter or a acknowledges the selected."
        )

    @property
    def selected(self) -> str | None:
        """The id of the alarm under the cursor, None when there is none."""
        table: DataTable[Text | str] = self.query_one("#al-table", DataTable)
        row = table.cursor_row
        return self._ids[row] if 0 <= row < len(self._ids) else None

    async def action_ack(self) -> None:
        alarm = self.selected
        if alarm is None:
            self.notify("no alarm selected", severity="warning")
            return
        await self.act("ack", alarm=alarm, done=f"alarm {alarm} acknowledged")

    async def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        message.stop()
        await self.action_ack()


def _state(alarm: dict[str, Any]) -> Text:
    active = bool(alarm.get("active"))
    acked = alarm.get("acked_by")
    text = Text("active" if active else "cleared", "bold red" if active else "dim")
    text.append(" acked" if acked else " unacked", "dim" if acked else "bold yellow")
    return text
