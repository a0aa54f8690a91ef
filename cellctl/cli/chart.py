"""Control charts of one characteristic for ``cellctl report chart``: the data, its limits, text and PNG.

The limits are the individuals and moving-range (I-MR) chart's from a baseline of the first points, as the
SPC module computes them (``cellctl.core.spc.imr_limits``, the one home of control limits). Spec limits come
from the parts' measurements and are drawn apart from them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cellctl.core.events import PartProduced, Verdict
from cellctl.core.spc import MIN_BASELINE, Limits, imr_limits

MATPLOTLIB_HINT = "the PNG needs matplotlib: pip install 'cellctl[report]' (or pip install matplotlib)"


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """One part's value of the characteristic."""

    ts: float
    part: str
    value: float
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class ChartData:
    """Points of one variant's characteristic in time order, its spec limits and its control limits."""

    variant: str
    characteristic: str
    units: str
    points: tuple[ChartPoint, ...]
    lsl: float
    usl: float
    nominal: float
    limits: Limits
    skipped: int
    """Parts whose value could not be used (invalid: no reading, NaN)."""

    def out_of_control(self, point: ChartPoint) -> bool:
        """True beyond the control limits."""
        return not self.limits.lcl <= point.value <= self.limits.ucl


def chart_data(parts: Sequence[PartProduced], variant: str, characteristic: str, baseline: int) -> ChartData:
    """The chart of ``characteristic`` over ``parts`` of ``variant``; ValueError when there is too little."""
    points: list[ChartPoint] = []
    skipped = 0
    spec: tuple[float, float, float, str] | None = None
    for part in parts:
        if part.variant != variant:
            continue
        for m in part.measurements:
            if m.characteristic != characteristic:
                continue
            spec = (m.lsl, m.usl, m.nominal, m.units)
            if m.value is None or not math.isfinite(m.value) or m.verdict is Verdict.INVALID:
                skipped += 1
            else:
                points.append(ChartPoint(part.ts, part.part, m.value, part.verdict))
    if spec is None:
        raise ValueError(
            f"no part of variant {variant!r} in the window has characteristic {characteristic!r}"
        )
    values = [p.value for p in points]
    limits = imr_limits(values[: max(MIN_BASELINE, baseline)])
    lsl, usl, nominal, units = spec
    return ChartData(variant, characteristic, units, tuple(points), lsl, usl, nominal, limits, skipped)


def render_text(data: ChartData, *, width: int = 72, height: int = 15) -> str:
    """The individuals chart as text: ``o`` a point, ``*`` beyond the control limits, ``X`` outside spec."""
    points = data.points[-width:]
    lim = data.limits
    lines = [
        ("USL", data.usl, "="),
        ("UCL", lim.ucl, "-"),
        ("CL", lim.centre, "."),
        ("LCL", lim.lcl, "-"),
        ("LSL", data.lsl, "="),
    ]
    values = [p.value for p in points] + [v for _, v, _ in lines]
    top, bottom = max(values), min(values)
    span = top - bottom or 1.0

    def row(value: float) -> int:
        return round((top - value) / span * (height - 1))

    grid = [[" "] * len(points) for _ in range(height)]
    labels: list[list[str]] = [[] for _ in range(height)]
    for name, value, char in lines:
        r = row(value)
        if all(c == " " for c in grid[r]):
            grid[r] = [char] * len(points)
        labels[r].append(f"{name} {value:.4g}")
    for col, point in enumerate(points):
        outside_spec = not data.lsl <= point.value <= data.usl
        grid[row(point.value)][col] = "X" if outside_spec else "*" if data.out_of_control(point) else "o"
    shown = f"the last {len(points)} of {len(data.points)}" if len(points) < len(data.points) else "all"
    units = f" [{data.units}]" if data.units else ""
    head = [
        f"{data.variant} / {data.characteristic}{units}: I chart, {shown} {len(data.points)} points"
        + (f" ({data.skipped} invalid left out)" if data.skipped else ""),
        f"limits from the first {lim.baseline} points: CL {lim.centre:.4g}, UCL {lim.ucl:.4g}, "
        f"LCL {lim.lcl:.4g}, MR-bar {lim.r_centre:.4g}; spec {data.lsl:.4g}..{data.usl:.4g}",
    ]
    body = [f"|{''.join(cells)}| {' / '.join(lab)}".rstrip() for cells, lab in zip(grid, labels, strict=True)]
    if points:
        first = datetime.fromtimestamp(points[0].ts).astimezone().strftime("%Y-%m-%d %H:%M")
        last = datetime.fromtimestamp(points[-1].ts).astimezone().strftime("%Y-%m-%d %H:%M")
        body.append(f" {first} .. {last}")
    beyond = sum(1 for p in data.points if data.out_of_control(p))
    outside = sum(1 for p in data.points if not data.lsl <= p.value <= data.usl)
    body.append(f" beyond control limits: {beyond}; outside spec: {outside}")
    return "\n".join([*head, *body]) + "\n"


def render_png(data: ChartData, path: Path) -> None:
    """Write the I-MR chart (individuals above, moving ranges below) as a PNG; ImportError: no matplotlib."""
    import matplotlib  # optional (extra 'report'): only this command needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = data.limits
    xs = list(range(1, len(data.points) + 1))
    ys = [p.value for p in data.points]
    fig, (ax_i, ax_mr) = plt.subplots(
        2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    try:
        ax_i.plot(xs, ys, color="#1f4e79", linewidth=1, marker="o", markersize=3.5, zorder=3)
        bad = [(x, p.value) for x, p in zip(xs, data.points, strict=True) if data.out_of_control(p)]
        if bad:
            ax_i.scatter(
                *zip(*bad, strict=True), color="#c00000", s=36, zorder=4, label="beyond control limits"
            )
        ax_i.axhline(lim.centre, color="#2e7d32", linewidth=1.2, label=f"CL {lim.centre:.4g}")
        ax_i.axhline(lim.ucl, color="#c00000", linestyle="--", linewidth=1, label=f"UCL {lim.ucl:.4g}")
        ax_i.axhline(lim.lcl, color="#c00000", linestyle="--", linewidth=1, label=f"LCL {lim.lcl:.4g}")
        ax_i.axhline(data.usl, color="black", linestyle=":", linewidth=1.3, label=f"USL {data.usl:.4g}")
        ax_i.axhline(data.lsl, color="black", linestyle=":", linewidth=1.3, label=f"LSL {data.lsl:.4g}")
        ax_i.axvspan(
            0.5, lim.baseline + 0.5, color="#999999", alpha=0.12, label=f"baseline ({lim.baseline} parts)"
        )
        units = f" [{data.units}]" if data.units else ""
        ax_i.set_ylabel(f"{data.characteristic}{units}")
        ax_i.set_title(f"{data.variant} / {data.characteristic}: individuals and moving range (I-MR)")
        ax_i.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        ax_i.grid(alpha=0.25)
        mrs = [abs(b - a) for a, b in itertools.pairwise(ys)]
        ax_mr.plot(xs[1:], mrs, color="#1f4e79", linewidth=1, marker="o", markersize=3)
        ax_mr.axhline(lim.r_centre, color="#2e7d32", linewidth=1.2, label=f"MR-bar {lim.r_centre:.3g}")
        ax_mr.axhline(lim.r_ucl, color="#c00000", linestyle="--", linewidth=1, label=f"UCL {lim.r_ucl:.3g}")
        ax_mr.set_ylabel("moving range")
        ax_mr.set_xlabel("part (in time order)")
        ax_mr.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        ax_mr.grid(alpha=0.25)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
