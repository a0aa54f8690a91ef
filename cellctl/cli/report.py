"""``cellctl history`` and ``cellctl report``: what the cell did over a time window, from its store.

The store is opened read-only and never created: a report never changes what it reports on. ``history``
lists parts and verdicts, changeovers, alarms and job events one line each; ``report`` gives OEE with its
availability, performance and quality (core/oee.py: definitions), parts by variant and verdict,
changeovers with their KPIs, alarms and the Pareto of downtime causes; ``report chart`` draws the control
chart of one characteristic, as text and, with ``--png``, as an image. ``--csv`` writes CSV instead of
tables. Times (``--since``, ``--until``) are ISO dates or times in local time (``2026-11-27T06:00``),
``now``, ``today``, or an offset back from now (``8h``, ``30m``, ``2d``). Exit codes: 0 printed; 2 invalid
request (bad arguments or configuration, unknown shift, variant or characteristic, no data to chart);
3 the store cannot be read; 4 the PNG cannot be written (matplotlib missing).
"""

from __future__ import annotations

import argparse
import bisect
import csv
import io
import itertools
import re
import sys
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cellctl.cli.chart import MATPLOTLIB_HINT, chart_data, render_png, render_text
from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverKpi,
    Event,
    JobEvent,
    PartProduced,
    StateChanged,
)
from cellctl.core.oee import OeeFigures, Window, compute_oee, shift_windows
from cellctl.errors import ConfigError, StoreError
from cellctl.schema.load import LoadedConfig, format_issues, load_config
from cellctl.store.history import REPORT_KINDS, read_window, to_event

__all__ = ["add_parsers", "history_rows", "parse_time", "report_rows"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_PNG = 4
DEFAULT_SPAN_S = 86400.0
"""A window without ``--since`` covers the day before ``--until``."""


class _Refused(Exception):
    """An invalid request: the message is printed and the exit code is EXIT_USAGE."""


# ------------------------------------------------------------------------------------------------------------
# Arguments


def _window_options(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    # On the chart subcommand the options repeat the parent's with SUPPRESS defaults, so they may be given
    # before or after "chart" without the subparser's defaults overwriting the parent's values.
    default: Any = argparse.SUPPRESS if inherited else None
    parser.add_argument("--config", default=default, help="folder holding cell.yaml, or a cell file")
    parser.add_argument("--since", default=default, help="window start (default: a day before --until)")
    parser.add_argument("--until", default=default, help="window end, exclusive (default: now)")
    parser.add_argument(
        "--csv", action="store_true", default=argparse.SUPPRESS if inherited else False, help="CSV output"
    )


def add_parsers(sub: Any) -> None:
    """Register ``history`` and ``report`` (with ``report chart``)."""
    history = sub.add_parser(
        "history",
        help="parts, changeovers, alarms and job events over a time window, one line each",
        description="List what the cell journaled over [--since, --until): parts with their verdicts, "
        "changeovers, alarms and job events. The store is read, never written.",
    )
    _window_options(history)
    history.set_defaults(handler=run_history)

    report = sub.add_parser(
        "report",
        help="OEE, parts, changeovers, alarms and downtime Pareto over a window; 'report chart' for SPC",
        description="Report OEE (availability, performance, quality) over [--since, --until) or the newest "
        "shift --shift, parts by variant and verdict, changeovers with their KPIs, alarms and a Pareto of "
        "downtime causes. 'report chart VARIANT CHARACTERISTIC' draws a control chart.",
    )
    _window_options(report)
    report.add_argument("--shift", help="the newest occurrence of this configured shift before --until")
    report.set_defaults(handler=run_report)
    charts = report.add_subparsers(dest="report_command", metavar="chart")
    chart = charts.add_parser(
        "chart",
        help="control chart (I-MR) of one characteristic: text, and a PNG with --png",
        description="Individuals and moving-range chart of CHARACTERISTIC over the parts of VARIANT in the "
        "window: points, centre line, control limits from the first --baseline points, spec limits.",
    )
    chart.add_argument("variant", metavar="VARIANT")
    chart.add_argument("characteristic", metavar="CHARACTERISTIC")
    _window_options(chart, inherited=True)
    chart.add_argument("--png", type=Path, help="also write the chart as a PNG here (needs matplotlib)")
    chart.add_argument("--baseline", type=int, default=20, help="points the limits come from (default 20)")
    chart.add_argument("--width", type=int, default=72, help="points shown in the terminal (default 72)")
    chart.set_defaults(handler=run_chart)


# ------------------------------------------------------------------------------------------------------------
# Time


_OFFSET = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, now: float) -> float:
    """Wall-clock seconds of ``text``: ISO in local time, ``now``, ``today`` or an offset back (``8h``)."""
    value = text.strip()
    if value == "now":
        return now
    if value == "today":
        return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    match = _OFFSET.match(value)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Refused(
            f"cannot read the time {text!r}: give an ISO date or time (2026-11-27T06:00), now, today, "
            "or an offset back from now (8h, 30m, 2d)"
        ) from None
    return parsed.timestamp()  # naive: local time


@dataclass(frozen=True, slots=True)
class _Request:
    loaded: LoadedConfig
    store: Path
    window: Window


def _request(args: argparse.Namespace, *, shift: str | None = None) -> _Request:
    if not getattr(args, "config", None):
        raise _Refused("say which cell: --config DIR")
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise _Refused(f"invalid configuration:\n{format_issues(exc)}") from exc
    now = time.time()
    until = parse_time(args.until, now) if args.until else now
    if shift is not None:
        if args.since:
            raise _Refused("--shift picks its own window: leave --since out (use --until to go back)")
        specs = [s for s in loaded.cell.oee.shift_specs() if s.name == shift]
        if not specs:
            known = ", ".join(s.name for s in loaded.cell.oee.shifts) or "none configured (oee.shifts)"
            raise _Refused(f"--shift: unknown shift {shift!r} (shifts: {known})")
        occurrences = shift_windows(specs, until - 3 * 86400, until, loaded.cell.oee.zone())
        if not occurrences:
            raise _Refused(f"--shift: no occurrence of shift {shift!r} before {_when(until)}")
        window = occurrences[-1]
    else:
        since = parse_time(args.since, now) if args.since else until - DEFAULT_SPAN_S
        if until <= since:
            raise _Refused(f"--until ({_when(until)}) must be after --since ({_when(since)})")
        window = Window(since, until)
    return _Request(loaded, loaded.resolve(loaded.cell.store.path), window)


def _events(request: _Request, kinds: Collection[str] = REPORT_KINDS) -> list[Event]:
    entries = read_window(request.store, request.window.start, request.window.end, kinds)
    return [e for e in (to_event(entry) for entry in entries) if e is not None]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _run(command: str, args: argparse.Namespace, body: Any) -> int:
    try:
        code: int = body()
    except _Refused as exc:
        sys.stderr.write(f"cellctl {command}: {exc}\n")
        return EXIT_USAGE
    except StoreError as exc:
        sys.stderr.write(f"cellctl {command}: cannot read the store: {exc}\n")
        return EXIT_STORE
    return code


# ------------------------------------------------------------------------------------------------------------
# history


HISTORY_COLUMNS = ("time", "kind", "job", "item", "status", "detail")


def history_rows(events: Sequence[Event], window: Window) -> list[tuple[str, str, str, str, str, str]]:
    """One row per part, changeover, changeover KPI, alarm and job event inside ``window``."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    for e in events:
        if not window.contains(e.ts):
            continue
        if isinstance(e, PartProduced):
            values = ", ".join(
                f"{m.characteristic}={'n/a' if m.value is None else format(m.value, '.6g')}"
                for m in e.measurements
            )
            detail = f"variant {e.variant} #{e.index} cycle {e.cycle_s:.2f} s" + (
                f"; {values}" if values else ""
            )
            if e.first_article:
                detail += "; first article"
            rows.append((_when(e.ts), "part", e.job, e.part, e.verdict.value, detail))
        elif isinstance(e, ChangeoverEvent):
            detail = f"{e.from_variant or '?'} -> {e.to_variant}, planned {e.planned_s:.1f} s"
            if e.duration_s is not None:
                detail += f", took {e.duration_s:.1f} s"
            if e.reason:
                detail += f"; {e.reason}"
            rows.append((_when(e.ts), "changeover", e.job, e.changeover, e.status.value, detail))
        elif isinstance(e, ChangeoverKpi):
            total = f"{e.total_s:.1f} s" if e.total_s is not None else "n/a"
            detail = (
                f"{e.from_variant or '?'} -> {e.to_variant}: good to good {total}, "
                f"internal {e.internal_s:.1f} s, external {e.external_s:.1f} s, "
                f"first article {e.first_article_s:.1f} s"
            )
            rows.append((_when(e.ts), "changeover_kpi", e.job, e.changeover, e.ended_by, detail))
        elif isinstance(e, AlarmEvent):
            status = "raised" if e.active else "cleared"
            detail = f"{e.severity.value} from {e.source}" + (f": {e.message}" if e.message else "")
            rows.append((_when(e.ts), "alarm", "", e.alarm, status, detail))
        elif isinstance(e, JobEvent):
            detail = f"order {e.order_id} {e.variant} x{e.quantity}, made {e.produced} (good {e.good})"
            if e.reason:
                detail += f"; {e.reason}"
            rows.append((_when(e.ts), "job", e.job, e.order_id, e.status.value, detail))
    return rows


def run_history(args: argparse.Namespace) -> int:
    """Print the history of the window."""

    def body() -> int:
        request = _request(args)
        rows = history_rows(_events(request), request.window)
        if args.csv:
            _write_csv(HISTORY_COLUMNS, rows)
        else:
            sys.stdout.write(f"{_title(request)}: {len(rows)} entries\n")
            sys.stdout.write(_table(HISTORY_COLUMNS, rows))
        return EXIT_OK

    return _run("history", args, body)


# ------------------------------------------------------------------------------------------------------------
# report


REPORT_COLUMNS = ("section", "item", "metric", "value")


def _figures(events: Sequence[Event], request: _Request, window: Window) -> OeeFigures:
    ideal = {v: r.ideal_cycle_s for v, r in request.loaded.recipes.items()}
    return compute_oee(_around(events, window), window, ideal, request.loaded.cell.oee.changeover)


def _around(events: Sequence[Event], window: Window) -> Sequence[Event]:
    """The facts a window's figures need: from the newest state change before it to its end.

    A shift is a slice of the report's facts, so a week by shift does not fold the week once per shift.
    Only when the timestamps run in order (no wall-clock step back) can the slice be found by bisection.
    """
    stamps = [e.ts for e in events]
    if any(b < a for a, b in itertools.pairwise(stamps)):
        return events
    first = bisect.bisect_left(stamps, window.start)
    while first > 0 and not isinstance(events[first], StateChanged):
        first -= 1
    return events[first : bisect.bisect_left(stamps, window.end)]


def report_rows(events: Sequence[Event], request: _Request) -> list[tuple[str, str, str, str]]:
    """The report as (section, item, metric, value) rows: the CSV, and the source of the tables."""
    window = request.window
    f = _figures(events, request, window)
    rows: list[tuple[str, str, str, str]] = [
        ("window", "", "start", _when(window.start)),
        ("window", "", "end", _when(window.end)),
        ("window", "", "policy", f.policy.value),
    ]
    rows += _oee_rows("oee", "", f)
    for variant, counts in f.by_variant.items():
        for metric, value in (("pass", counts.good), ("fail", counts.bad), ("invalid", counts.invalid)):
            rows.append(("parts", variant, metric, str(value)))
    for i, cause in enumerate(f.pareto):
        rows.append(("pareto", cause.cause, "seconds", f"{cause.seconds:.1f}"))
        rows.append(("pareto", cause.cause, "count", str(cause.count)))
        rows.append(("pareto", cause.cause, "rank", str(i + 1)))
    for e in events:
        if isinstance(e, ChangeoverKpi) and window.contains(e.ts):
            item = f"{e.changeover} {e.from_variant or '?'}->{e.to_variant}"
            rows.append(("changeover", item, "total_s", _num(e.total_s)))
            rows.append(("changeover", item, "internal_s", _num(e.internal_s)))
            rows.append(("changeover", item, "external_s", _num(e.external_s)))
            rows.append(("changeover", item, "first_article_s", _num(e.first_article_s)))
            rows.append(("changeover", item, "planned_internal_s", _num(e.planned_internal_s)))
    raised = Counter(
        e.alarm for e in events if isinstance(e, AlarmEvent) and e.active and window.contains(e.ts)
    )
    for alarm, count in sorted(raised.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append(("alarms", alarm, "raised", str(count)))
    for shift in shift_windows(
        request.loaded.cell.oee.shift_specs(), window.start, window.end, request.loaded.cell.oee.zone()
    ):
        rows += _oee_rows("shift", shift.name, _figures(events, request, shift))
    return rows


def _oee_rows(section: str, item: str, f: OeeFigures) -> list[tuple[str, str, str, str]]:
    return [
        (section, item, "oee", _num(f.oee, 4)),
        (section, item, "availability", _num(f.availability, 4)),
        (section, item, "performance", _num(f.performance, 4)),
        (section, item, "quality", _num(f.quality, 4)),
        (section, item, "planned_s", _num(f.planned_s)),
        (section, item, "run_s", _num(f.run_s)),
        (section, item, "downtime_s", _num(f.downtime_s)),
        (section, item, "changeover_s", _num(f.changeover_s)),
        (section, item, "unknown_s", _num(f.unknown_s)),
        (section, item, "parts", str(f.parts.total)),
        (section, item, "good", str(f.parts.good)),
        (section, item, "changeovers", str(f.changeovers)),
    ]


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _dur(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_report(events: Sequence[Event], request: _Request) -> str:
    """The report as tables."""
    f = _figures(events, request, request.window)
    out = io.StringIO()
    out.write(f"{_title(request)}\n\n")
    out.write(
        f"OEE {_pct(f.oee)}   availability {_pct(f.availability)}   performance {_pct(f.performance)}   "
        f"quality {_pct(f.quality)}\n"
    )
    co = "left out of planned time" if f.policy.value == "planned_downtime" else "counted as downtime"
    out.write(
        f"planned {_dur(f.planned_s)}  run {_dur(f.run_s)}  downtime {_dur(f.downtime_s)}  "
        f"changeover {_dur(f.changeover_s)} ({co})  no data {_dur(f.unknown_s)}\n"
    )
    if f.performance is not None and f.performance > 1.0:
        out.write(
            "performance above 100 %: the parts came faster than the recipes' ideal_cycle_s says they can "
            "(check ideal_cycle_s; a time-scaled demo runs faster than its recipes)\n"
        )
    if f.unknown_variants:
        out.write(f"no ideal cycle time (left out of performance): {', '.join(f.unknown_variants)}\n")
    out.write("\nParts\n")
    parts = [(v, str(c.total), str(c.good), str(c.bad), str(c.invalid)) for v, c in f.by_variant.items()]
    parts.append(("all", str(f.parts.total), str(f.parts.good), str(f.parts.bad), str(f.parts.invalid)))
    out.write(_table(("variant", "parts", "pass", "fail", "invalid"), parts))
    out.write("\nDowntime (Pareto)\n")
    total = f.downtime_s or 1.0
    cumulative = 0.0
    pareto = []
    for cause in f.pareto:
        cumulative += cause.seconds
        pareto.append(
            (
                cause.cause,
                _dur(cause.seconds),
                str(cause.count),
                _pct(cause.seconds / total),
                _pct(cumulative / total),
            )
        )
    out.write(_table(("cause", "time", "count", "share", "cumulative"), pareto) if pareto else "  none\n")
    kpis = [
        (
            e.changeover,
            f"{e.from_variant or '?'} -> {e.to_variant}",
            _num(e.total_s),
            _num(e.internal_s),
            _num(e.planned_internal_s),
            _num(e.external_s),
            _num(e.first_article_s),
        )
        for e in events
        if isinstance(e, ChangeoverKpi) and request.window.contains(e.ts)
    ]
    out.write(f"\nChangeovers: {f.changeovers} completed\n")
    if kpis:
        out.write(
            _table(
                ("changeover", "variants", "total_s", "internal_s", "planned_s", "external_s", "fa_s"), kpis
            )
        )
    raised = Counter(
        e.alarm for e in events if isinstance(e, AlarmEvent) and e.active and request.window.contains(e.ts)
    )
    out.write("\nAlarms raised\n")
    alarms = [(a, str(n)) for a, n in sorted(raised.items(), key=lambda kv: (-kv[1], kv[0]))]
    out.write(_table(("alarm", "count"), alarms) if alarms else "  none\n")
    shifts = shift_windows(
        request.loaded.cell.oee.shift_specs(),
        request.window.start,
        request.window.end,
        request.loaded.cell.oee.zone(),
    )
    if len(shifts) > 1:
        out.write("\nBy shift\n")
        rows = []
        for shift in shifts:
            s = _figures(events, request, shift)
            rows.append(
                (
                    shift.name,
                    _pct(s.oee),
                    _pct(s.availability),
                    _pct(s.performance),
                    _pct(s.quality),
                    str(s.parts.total),
                )
            )
        out.write(_table(("shift", "OEE", "A", "P", "Q", "parts"), rows))
    return out.getvalue()


def run_report(args: argparse.Namespace) -> int:
    """Print the OEE report of the window."""

    def body() -> int:
        request = _request(args, shift=args.shift)
        events = _events(request)
        if args.csv:
            _write_csv(REPORT_COLUMNS, report_rows(events, request))
        else:
            sys.stdout.write(render_report(events, request))
        return EXIT_OK

    return _run("report", args, body)


def run_chart(args: argparse.Namespace) -> int:
    """Print the control chart and write its PNG."""

    def body() -> int:
        if args.baseline < 2:
            raise _Refused("--baseline must be at least 2")
        if args.width < 2:
            raise _Refused("--width must be at least 2")
        request = _request(args)
        recipe = request.loaded.recipes.get(args.variant)
        if recipe is None:
            raise _Refused(
                f"unknown variant {args.variant!r} (known: {', '.join(sorted(request.loaded.recipes))})"
            )
        if args.characteristic not in recipe.quality:
            known = ", ".join(sorted(recipe.quality)) or "none"
            raise _Refused(
                f"variant {args.variant!r} has no characteristic {args.characteristic!r} (known: {known})"
            )
        parts = [e for e in _events(request, (PartProduced.kind,)) if isinstance(e, PartProduced)]
        try:
            data = chart_data(parts, args.variant, args.characteristic, args.baseline)
        except ValueError as exc:
            raise _Refused(f"{exc} ({_title(request)})") from exc
        if args.csv:
            rows = [(_when(p.ts), p.part, repr(p.value), p.verdict.value) for p in data.points]
            _write_csv(("time", "part", "value", "verdict"), rows)
        else:
            sys.stdout.write(render_text(data, width=args.width))
        if args.png is not None:
            try:
                render_png(data, args.png)
            except ImportError:
                sys.stderr.write(f"cellctl report chart: {MATPLOTLIB_HINT}\n")
                return EXIT_PNG
            except OSError as exc:
                sys.stderr.write(f"cellctl report chart: cannot write {args.png}: {exc}\n")
                return EXIT_PNG
            sys.stderr.write(f"chart written to {args.png}\n")
        return EXIT_OK

    return _run("report chart", args, body)


# ------------------------------------------------------------------------------------------------------------
# Output


def _title(request: _Request) -> str:
    name = f" ({request.window.name})" if request.window.name else ""
    cell = request.loaded.cell.identity.cell
    return f"cell {cell}, {_when(request.window.start)} to {_when(request.window.end)}{name}"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _write_csv(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
