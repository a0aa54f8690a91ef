"""The Quality screen: one control chart per charted characteristic (``[`` / ``]`` choose it), its capability,
and the recent parts with their values and verdicts.

The charted characteristics come from ``status.spc``; the chart itself from the ``spc`` request, asked again
when the selection changes, when a part was made, or on ``r``. Verdicts come from the pushed ``part`` events
(the chart's points carry values, not verdicts), so a part made before the screen opened shows ``-``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from cellctl.tui.format import num
from cellctl.tui.pane import Link, Pane
from cellctl.tui.widgets.control_chart import OUT_OF_CONTROL, OUT_OF_SPEC, Chart, ControlChart

RECENT_PARTS = 20
"""Parts listed under the chart (newest first)."""

VERDICTS_KEPT = 1000
"""Verdicts remembered from part events (bounded: the chart keeps fewer points than this)."""

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "invalid": "bold yellow"}

Selection = tuple[str, str]
"""(variant, characteristic)."""


def charted(status: dict[str, Any]) -> list[tuple[Selection, dict[str, Any]]]:
    """The charted characteristics of ``status.spc`` with their summaries; a summary without a variant is
    the running job's (or the set-up variant's)."""
    current = status.get("current_job")
    default = (current.get("variant") if isinstance(current, dict) else None) or status.get("variant")
    out: list[tuple[Selection, dict[str, Any]]] = []
    for summary in status.get("spc") or []:
        if not isinstance(summary, dict) or not summary.get("characteristic"):
            continue
        variant = summary.get("variant") or default
        if variant:
            out.append(((str(variant), str(summary["characteristic"])), summary))
    return out


def summary_text(
    selection: Selection | None, summary: dict[str, Any], index: int, count: int, counters: dict[str, Any]
) -> Text:
    """The selector line: which chart of how many, its capability and the last violation; the part counts."""
    if selection is None:
        return Text("No charted characteristic yet (a recipe's quality check with spc: ...)", style="dim")
    variant, characteristic = selection
    text = Text.assemble(
        ("[ ", "dim"),
        (f"{variant} / {characteristic}", "bold cyan"),
        (" ]", "dim"),
        (f" {index + 1}/{count}  ", "dim"),
        f"{summary.get('kind', '')} {summary.get('points', 0)} pts  ",
        "Cp ",
        (num(summary.get("cp"), ".2f"), "bold"),
        " Cpk ",
        (num(summary.get("cpk"), ".2f"), _cpk_style(summary.get("cpk"))),
    )
    last = summary.get("last_violation")
    if isinstance(last, dict):
        rules = ",".join(str(r) for r in last.get("rules") or [])
        text.append(f"\nlast out of control: rule {rules} at {last.get('label', '?')}", style="bold red")
    else:
        text.append("\nin control", style="green")
    if counters:
        text.append(
            f"   parts {counters.get('parts', 0)}: {counters.get('good', 0)} good, "
            f"{counters.get('bad', 0)} bad, {counters.get('invalid', 0)} invalid",
            style="dim",
        )
    return text


def _cpk_style(cpk: object) -> str:
    if isinstance(cpk, bool) or not isinstance(cpk, int | float):
        return "bold"
    return "bold green" if cpk >= 1.33 else "bold yellow" if cpk >= 1.0 else "bold red"


LEGEND = Text.assemble(
    ("━ spec  ", "bold magenta"),
    ("┄ control  ", "yellow"),
    ("· centre  ", "green"),
    (f"{OUT_OF_CONTROL} out of control  ", "bold bright_red"),
    (f"{OUT_OF_SPEC} out of spec", "bold bright_white on red"),
)


class QualityPane(Pane):
    """A control chart per characteristic, its capability and the recent parts' verdicts."""

    title = "Quality"

    DEFAULT_CSS = """
    QualityPane #summary {
        height: 2;
        padding: 0 1;
    }
    QualityPane #chart {
        height: 1fr;
        min-height: 5;
        padding: 0 1;
    }
    QualityPane #legend {
        height: 1;
        padding: 0 1;
    }
    QualityPane #parts {
        height: 6;
    }
    """

    BINDINGS = [
        Binding("left_square_bracket", "select(-1)", "Prev chart", key_display="["),
        Binding("right_square_bracket", "select(1)", "Next chart", key_display="]"),
        Binding("r", "refresh_chart", "Refresh"),
    ]

    def __init__(self, link: Link, *, id: str | None = None) -> None:
        super().__init__(link, id=id)
        self._charts: list[tuple[Selection, dict[str, Any]]] = []
        self._selected: Selection | None = None
        self._counters: dict[str, Any] = {}
        self._chart_reply: dict[str, Any] | None = None
        self._asked_for: tuple[Selection, object] | None = None
        """The selection and part count the shown chart was asked for (asked again when either changes)."""
        self._fetching = False
        self._again = False
        self._verdicts: OrderedDict[str, str] = OrderedDict()

    def compose(self) -> ComposeResult:
        yield Static(Text("Waiting for the controller", style="dim"), id="summary")
        yield ControlChart(id="chart")
        yield Static(LEGEND, id="legend")
        table: DataTable[Text] = DataTable(id="parts", cursor_type="row", zebra_stripes=True)
        table.add_columns("part", "value", "spec", "rules", "verdict")
        yield table

    def on_mount(self) -> None:
        if self.link.status is not None:
            self.show(self.link.status)

    @property
    def selected(self) -> Selection | None:
        """The chart shown: (variant, characteristic)."""
        return self._selected

    def show(self, status: dict[str, Any]) -> None:
        """Update the list of charts and the summary; ask for the chart again when a part was made."""
        charts = charted(status)
        if charts:
            self._charts = charts
        counters = status.get("counters")
        self._counters = counters if isinstance(counters, dict) else {}
        names = [sel for sel, _ in self._charts]
        if self._selected not in names:
            self._selected = names[0] if names else None
        self._render_summary()
        summary = self._summary()
        want = (self._selected, (self._counters.get("parts"), summary.get("points")))
        if self._selected is not None and want != self._asked_for:
            self._fetch()

    def event(self, push: dict[str, Any]) -> None:
        """Remember the verdict of each part made (shown beside the chart's points)."""
        event = push.get("event")
        if not isinstance(event, dict) or event.get("kind") != "part":
            return
        data = event.get("data")
        if isinstance(data, dict) and isinstance(data.get("part"), str):
            self._verdicts[data["part"]] = str(data.get("verdict", ""))
            self._verdicts.move_to_end(data["part"])
            while len(self._verdicts) > VERDICTS_KEPT:
                self._verdicts.popitem(last=False)
            if self._chart_reply is not None:
                self._fill_parts()  # the event may come after the chart that already holds the part

    def _summary(self) -> dict[str, Any]:
        return next((s for sel, s in self._charts if sel == self._selected), {})

    def _render_summary(self) -> None:
        names = [sel for sel, _ in self._charts]
        index = names.index(self._selected) if self._selected in names else 0
        self.query_one("#summary", Static).update(
            summary_text(self._selected, self._summary(), index, len(names), self._counters)
        )
        if self._selected is None:
            self.query_one("#chart", ControlChart).set_chart(None, "no chart: nothing charted yet")

    def action_select(self, step: int) -> None:
        """Show the previous (-1) or next (+1) charted characteristic."""
        names = [sel for sel, _ in self._charts]
        if not names:
            self.notify("No charted characteristic yet", severity="warning")
            return
        index = names.index(self._selected) if self._selected in names else 0
        self._selected = names[(index + step) % len(names)]
        self._chart_reply = None
        self._render_summary()
        self._fetch()

    def action_refresh_chart(self) -> None:
        """Ask for the chart again now."""
        if self._selected is None:
            self.notify("No charted characteristic yet", severity="warning")
            return
        self._fetch()

    def _fetch(self) -> None:
        """Ask for the selected chart; one request at a time, asked again once if wanted meanwhile."""
        if self._fetching:
            self._again = True
            return
        self._fetching = True
        self.run_worker(self._fetch_loop(), group="spc", exit_on_error=True)

    async def _fetch_loop(self) -> None:
        try:
            while True:
                self._again = False
                selection = self._selected
                if selection is None:
                    return
                self._asked_for = (
                    selection,
                    (self._counters.get("parts"), self._summary().get("points")),
                )
                variant, characteristic = selection
                outcome = await self.link.request("spc", variant=variant, characteristic=characteristic)
                if selection == self._selected:
                    chart = self.query_one("#chart", ControlChart)
                    if outcome.ok:
                        self._chart_reply = outcome.result
                        chart.set_chart(Chart.from_reply(outcome.result))
                    else:
                        self._chart_reply = None
                        chart.set_chart(None, f"no chart ({outcome.code}): {outcome.message}")
                    self._fill_parts()
                if not self._again:
                    return
        finally:
            self._fetching = False

    def _fill_parts(self) -> None:
        """The newest parts of the chart, newest first, with value, spec, rules and verdict."""
        table = self.query_one("#parts", DataTable)
        table.clear()
        reply = self._chart_reply or {}
        given = reply.get("spec")
        spec: dict[str, Any] = given if isinstance(given, dict) else {}
        lsl, usl = spec.get("lsl"), spec.get("usl")
        points = [p for p in reply.get("points") or [] if isinstance(p, dict)]
        for point in reversed(points[-RECENT_PARTS:]):
            value = point.get("value")
            label = str(point.get("label", ""))
            inside = (
                isinstance(value, int | float)
                and isinstance(lsl, int | float)
                and isinstance(usl, int | float)
                and lsl <= value <= usl
            )
            rules = ",".join(str(r) for r in point.get("violations") or [])
            verdict = self._verdicts.get(label, "-")
            table.add_row(
                Text(label),
                Text(num(value, ".6g"), justify="right"),
                Text("in" if inside else "OUT", style="" if inside else "bold red"),
                Text(rules or "-", style="bold red" if rules else "dim"),
                Text(verdict, style=VERDICT_STYLE.get(verdict, "dim")),
            )
