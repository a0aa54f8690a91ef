"""OEE on a scripted timeline against figures computed by hand (core/oee.py)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import pytest

from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    PartProduced,
    Severity,
    StateChanged,
    Verdict,
)
from cellctl.core.oee import (
    ChangeoverPolicy,
    DowntimeCause,
    OeeAccumulator,
    ShiftSpec,
    Window,
    compute_oee,
    current_shift,
    shift_windows,
)

IDEAL = {"A": 10.0, "B": 20.0}


def state(ts: float, name: str, previous: str, by: str = "engine") -> StateChanged:
    return StateChanged(ts=ts, state=name, state_no=0, previous=previous, command=None, by=by)


def part(ts: float, variant: str, verdict: Verdict = Verdict.PASS) -> PartProduced:
    return PartProduced(
        ts=ts, part=f"p{ts:g}", job="j", variant=variant, index=1, verdict=verdict, measurements=()
    )


def changeover(ts: float, status: ChangeoverStatus) -> ChangeoverEvent:
    return ChangeoverEvent(ts=ts, changeover="c1", job="j", from_variant=None, to_variant="A", status=status)


A_PARTS = {1225: Verdict.PASS, 1235: Verdict.FAIL, 1245: Verdict.PASS, 1255: Verdict.PASS,
           1265: Verdict.INVALID, 1275: Verdict.PASS, 1285: Verdict.PASS, 1295: Verdict.PASS}  # fmt: skip

TIMELINE: list[Event] = [
    state(1000, "Stopped", "Undefined"),  # power-up: stopped 1000-1100 (100 s, "stopped: engine")
    state(1100, "Resetting", "Stopped", by="ana"),  # idle 1100-1112 (12 s)
    state(1105, "Idle", "Resetting"),
    state(1110, "Starting", "Idle", by="ana"),
    state(1112, "Execute", "Starting"),
    changeover(1112, ChangeoverStatus.STARTED),  # changeover 1112-1212 (100 s)
    changeover(1212, ChangeoverStatus.COMPLETED),  # run 1212-1312 (100 s), 8 parts of A
    *(part(ts, "A", v) for ts, v in A_PARTS.items()),
    AlarmEvent(
        ts=1312, alarm="cell_held", severity=Severity.CRITICAL, active=True, message="x", source="robot1"
    ),
    state(1312, "Holding", "Execute"),  # held 1312-1401 (89 s)
    state(1313, "Held", "Holding"),
    state(1400, "Unholding", "Held", by="ana"),
    state(1401, "Execute", "Unholding"),  # run 1401-1501 (100 s), 4 parts of B
    *(part(ts, "B") for ts in (1420, 1440, 1460, 1480)),
    state(1501, "Suspending", "Execute"),  # suspended (starved) 1501-1600 (99 s)
    state(1502, "Suspended", "Suspending"),
]


def test_whole_timeline_changeover_as_planned_downtime() -> None:
    f = compute_oee(TIMELINE, Window(1000, 1600), IDEAL, ChangeoverPolicy.PLANNED_DOWNTIME)
    # planned = 600 - 100 (changeover) = 500; run = 200; downtime = 100 + 12 + 89 + 99 = 300
    assert (f.planned_s, f.run_s, f.downtime_s, f.changeover_s) == (500, 200, 300, 100)
    assert f.availability == pytest.approx(200 / 500)
    assert f.ideal_s == 8 * 10 + 4 * 20
    assert f.performance == pytest.approx(160 / 200)
    assert (f.parts.good, f.parts.bad, f.parts.invalid) == (10, 1, 1)
    assert f.quality == pytest.approx(10 / 12)
    assert f.oee == pytest.approx(0.4 * 0.8 * 10 / 12)  # 0.2667
    assert f.changeovers == 1
    assert f.pareto == (
        DowntimeCause("stopped: engine", 100, 1),
        DowntimeCause("suspended: starved", 99, 1),
        DowntimeCause("held: cell_held (robot1)", 89, 1),
        DowntimeCause("idle", 12, 1),
    )
    assert f.by_variant["A"].total == 8 and f.by_variant["B"].good == 4


def test_whole_timeline_changeover_as_availability_loss() -> None:
    f = compute_oee(TIMELINE, Window(1000, 1600), IDEAL, ChangeoverPolicy.AVAILABILITY_LOSS)
    assert (f.planned_s, f.run_s, f.downtime_s) == (600, 200, 400)
    assert f.availability == pytest.approx(200 / 600)
    assert f.oee == pytest.approx((1 / 3) * 0.8 * 10 / 12)  # 0.2222
    assert f.pareto[0] == DowntimeCause("changeover", 100, 1)


def test_window_cutting_state_intervals_counts_only_inside() -> None:
    f = compute_oee(TIMELINE, Window(1250, 1450), IDEAL)
    # run 1250-1312 and 1401-1450 = 62 + 49; held 89; parts of A from 1255, of B at 1420 and 1440
    assert (f.run_s, f.downtime_s, f.planned_s) == (111, 89, 200)
    assert (f.parts.good, f.parts.bad, f.parts.invalid) == (6, 0, 1)
    assert f.ideal_s == 5 * 10 + 2 * 20
    assert f.oee == pytest.approx((111 / 200) * (90 / 111) * (6 / 7))
    assert f.pareto == (DowntimeCause("held: cell_held (robot1)", 89, 1),)


def test_window_starting_inside_a_changeover() -> None:
    planned = compute_oee(TIMELINE, Window(1150, 1250), IDEAL)
    assert (planned.changeover_s, planned.run_s, planned.planned_s) == (62, 38, 38)
    assert planned.availability == 1.0
    assert planned.performance == pytest.approx(30 / 38)
    assert planned.quality == pytest.approx(2 / 3)
    assert planned.changeovers == 1
    loss = compute_oee(TIMELINE, Window(1150, 1250), IDEAL, ChangeoverPolicy.AVAILABILITY_LOSS)
    assert loss.availability == pytest.approx(38 / 100)


def test_no_run_time_gives_zero_oee_and_no_performance() -> None:
    f = compute_oee(TIMELINE, Window(1000, 1100), IDEAL)
    assert (f.planned_s, f.run_s) == (100, 0)
    assert f.availability == 0.0 and f.performance is None and f.quality is None
    assert f.oee == 0.0


def test_run_time_without_parts_gives_zero_performance() -> None:
    f = compute_oee(TIMELINE, Window(1401, 1415), IDEAL)
    assert f.run_s == 14 and f.parts.total == 0
    assert f.performance == 0.0 and f.quality is None and f.oee == 0.0


def test_time_before_any_known_state_is_not_planned() -> None:
    f = compute_oee(TIMELINE, Window(500, 1100), IDEAL)
    assert (f.unknown_s, f.planned_s) == (500, 100)
    empty = compute_oee(TIMELINE, Window(0, 500), IDEAL)
    assert empty.planned_s == 0 and empty.oee is None and empty.availability is None


def test_power_up_after_a_gap_counts_offline_from_the_last_fact() -> None:
    events = [*TIMELINE, state(1700, "Stopped", "Undefined")]
    f = compute_oee(events, Window(1500, 1800), IDEAL)
    # run 1500-1501, suspended 1501-1502 (the last fact), offline 1502-1700, stopped 1700-1800
    assert f.run_s == 1
    assert dict((d.cause, d.seconds) for d in f.pareto) == {
        "offline": 198,
        "stopped: engine": 100,
        "suspended: starved": 1,
    }


def test_operator_hold_without_alarm_and_cleared_alarm_is_not_blamed() -> None:
    events = [
        state(0, "Execute", "Starting"),
        AlarmEvent(ts=5, alarm="spc", severity=Severity.WARNING, active=True, message="", source="gauge"),
        AlarmEvent(ts=6, alarm="spc", severity=Severity.INFO, active=False, message="", source="gauge"),
        state(10, "Holding", "Execute", by="ana"),
        state(11, "Held", "Holding"),
    ]
    f = compute_oee(events, Window(0, 20), IDEAL)
    assert f.pareto == (DowntimeCause("held: operator", 10, 1),)


def test_unknown_variant_is_counted_but_left_out_of_performance() -> None:
    events = [state(0, "Execute", "Starting"), part(1, "A"), part(2, "Z")]
    f = compute_oee(events, Window(0, 10), IDEAL)
    assert f.parts.total == 2 and f.ideal_s == 10 and f.unknown_variants == ("Z",)


def test_accumulator_live_figures_and_carry_over_to_next_shift() -> None:
    acc = OeeAccumulator(window=Window(0, 100), ideal_cycle_s=IDEAL)
    acc.observe(state(0, "Execute", "Starting"))
    acc.observe(part(5, "A"))
    assert acc.figures(until=20).run_s == 20
    acc.observe(state(50, "Holding", "Execute", by="ana"))
    nxt = acc.carry_over(Window(100, 200))
    f = nxt.figures(until=150)
    assert (f.run_s, f.downtime_s, f.parts.total) == (0, 50, 0)
    assert f.pareto == (DowntimeCause("held: operator", 50, 1),)


def test_shift_windows_in_local_time_cross_midnight() -> None:
    tz = timezone(timedelta(hours=1))
    shifts = [ShiftSpec("early", time(6), time(14)), ShiftSpec("night", time(22), time(6))]
    since = datetime(2026, 3, 2, 0, 0, tzinfo=tz).timestamp()
    windows = shift_windows(shifts, since, since + 86400, tz)
    names = [w.name for w in windows]
    assert names == ["night 2026-03-01", "early 2026-03-02", "night 2026-03-02"]
    assert windows[0].seconds == 6 * 3600  # clipped at midnight: it began the day before
    assert windows[1].seconds == 8 * 3600
    noon = datetime(2026, 3, 2, 12, 0, tzinfo=tz).timestamp()
    shift = current_shift(shifts, noon, tz)
    assert shift is not None and shift.name == "early 2026-03-02"
    assert current_shift(shifts, noon + 4 * 3600, tz) is None  # 16:00: between shifts
    assert shift_windows(shifts, since, since, UTC) == []
