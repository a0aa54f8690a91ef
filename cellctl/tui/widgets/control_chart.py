"""A control chart drawn in the terminal: the points of one characteristic against its spec limits (LSL/USL)
and control limits (LCL/centre/UCL), with points out of control and out of spec marked.

Braille cells give four rows of resolution per line, so a trace of one point per column reads as a line;
a point that completed a run rule is drawn as ``◆``, one outside the spec as ``✖``. The newest points that fit
the width are shown. Input is the ``spc`` reply (``cellctl.core.spc.ChartData.to_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.widget import Widget

LABEL_WIDTH = 11
"""Columns right of the plot for the lines' labels (``UCL 420.53``)."""

OUT_OF_CONTROL = "◆"
OUT_OF_SPEC = "✖"

POINT_STYLE = "bold bright_white"
OUT_OF_CONTROL_STYLE = "bold bright_red"
OUT_OF_SPEC_STYLE = "bold bright_white on red"

# Braille dot bits of a cell, [row 0..3] for the left and the right column of dots.
_LEFT = (0x01, 0x02, 0x04, 0x40)
_RIGHT = (0x08, 0x10, 0x20, 0x80)
_BRAILLE = 0x2800


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Line:
    """A horizontal line of the chart: a limit, its label and how it is drawn."""

    name: str
    value: float
    style: str
    pattern: str
    """``solid`` (spec), ``dashed`` (control limits) or ``dotted`` (centre)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One plotted value and how it is marked."""

    label: str
    value: float
    out_of_control: bool
    out_of_spec: bool


@dataclass(frozen=True, slots=True)
class Chart:
    """What the widget draws, read from an ``spc`` reply."""

    points: tuple[Point, ...]
    lines: tuple[Line, ...]
    kind: str
    baseline: int
    has_limits: bool

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Chart:
        """The chart of an ``spc`` reply; missing or non-finite fields are left out, never guessed."""
        given_spec, given_limits = reply.get("spec"), reply.get("limits")
        spec: dict[str, Any] = given_spec if isinstance(given_spec, dict) else {}
        limits: dict[str, Any] | None = given_limits if isinstance(given_limits, dict) else None
        lsl, usl = _finite(spec.get("lsl")), _finite(spec.get("usl"))
        lines: list[Line] = []
        if usl is not None:
            lines.append(Line("USL", usl, "bold magenta", "solid"))
        if limits is not None:
            for name, key, style, pattern in (
                ("UCL", "ucl", "yellow", "dashed"),
                ("CL", "centre", "green", "dotted"),
                ("LCL", "lcl", "yellow", "dashed"),
            ):
                value = _finite(limits.get(key))
                if value is not None:
                    lines.append(Line(name, value, style, pattern))
        if lsl is not None:
            lines.append(Line("LSL", lsl, "bold magenta", "solid"))
        points: list[Point] = []
        for p in reply.get("points") or []:
            value = _finite(p.get("value")) if isinstance(p, dict) else None
            if value is None:
                continue
            outside = (lsl is not None and value < lsl) or (usl is not None and value > usl)
            points.append(Point(str(p.get("label", "")), value, bool(p.get("violations")), outside))
        baseline = reply.get("baseline")
        return cls(
            points=tuple(points),
            lines=tuple(lines),
            kind=str(reply.get("kind", "")),
            baseline=baseline if isinstance(baseline, int) else 0,
            has_limits=limits is not None,
        )


def draw(chart: Chart, width: int, height: int) -> Text:
    """The chart as ``height`` lines of ``width`` cells (the plot, then the labels of its lines)."""
    plot_w = max(1, width - LABEL_WIDTH - 1)
    rows = max(1, height)
    points = chart.points[-plot_w:]
    values = [p.value for p in points] + [line.value for line in chart.lines]
    if not values:
        return Text("no points yet", style="dim")
    top, bottom = max(values), min(values)
    span = top - bottom
    pad = span * 0.06 if span > 0 else max(abs(top) * 0.01, 1.0)
    top, bottom = top + pad, bottom - pad
    dots = rows * 4

    def sub(value: float) -> int:
        """The dot row (0 at the top) of ``value``."""
        return min(dots - 1, max(0, round((top - value) / (top - bottom) * (dots - 1))))

    bits = [[0] * plot_w for _ in range(rows)]
    styles: list[list[str]] = [[""] * plot_w for _ in range(rows)]
    marks: dict[tuple[int, int], tuple[str, str]] = {}

    for line in chart.lines:
        s = sub(line.value)
        r, d = divmod(s, 4)
        for c in range(plot_w):
            if line.pattern == "solid":
                bit = _LEFT[d] | _RIGHT[d]
            elif line.pattern == "dashed":
                bit = (_LEFT[d] | _RIGHT[d]) if c % 3 != 2 else 0
            else:
                bit = _LEFT[d] if c % 2 == 0 else 0
            if bit:
                bits[r][c] |= bit
                styles[r][c] = styles[r][c] or line.style

    previous: int | None = None
    for c, point in enumerate(points):
        s = sub(point.value)
        low, high = (s, s) if previous is None else (min(previous, s), max(previous, s))
        for trace in range(low, high + 1):
            r, d = divmod(trace, 4)
            bits[r][c] |= _LEFT[d]
            styles[r][c] = POINT_STYLE
        r, d = divmod(s, 4)
        bits[r][c] |= _RIGHT[d]
        styles[r][c] = POINT_STYLE
        if point.out_of_spec:
            marks[(r, c)] = (OUT_OF_SPEC, OUT_OF_SPEC_STYLE)
        elif point.out_of_control:
            marks[(r, c)] = (OUT_OF_CONTROL, OUT_OF_CONTROL_STYLE)
        previous = s

    labels: dict[int, Line] = {}
    for line in chart.lines:
        want = sub(line.value) // 4
        for r in (want, want - 1, want + 1, want - 2, want + 2):
            if 0 <= r < rows and r not in labels:
                labels[r] = line
                break

    text = Text(no_wrap=True, overflow="crop")
    for r in range(rows):
        for c in range(plot_w):
            mark = marks.get((r, c))
            if mark is not None:
                text.append(mark[0], style=mark[1])
            elif bits[r][c]:
                text.append(chr(_BRAILLE + bits[r][c]), style=styles[r][c])
            else:
                text.append(" ")
        text.append("┤" if r in labels else "│", style="dim")
        label = labels.get(r)
        if label is not None:
            text.append(f"{label.name} {label.value:.5g}"[:LABEL_WIDTH], style=label.style)
        if r < rows - 1:
            text.append("\n")
    return text


class ControlChart(Widget):
    """Draws one characteristic's control chart to the widget's size; ``chart`` None shows ``message``."""

    DEFAULT_CSS = """
    ControlChart {
        height: 1fr;
        min-height: 5;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.chart: Chart | None = None
        self.message = "no chart selected"

    def set_chart(self, chart: Chart | None, message: str = "") -> None:
        """Draw ``chart`` (or, when None, show ``message``)."""
        self.chart = chart
        self.message = message
        self.refresh()

    def render(self) -> Text:
        if self.chart is None:
            return Text(self.message, style="dim")
        return draw(self.chart, self.size.width, self.size.height)
