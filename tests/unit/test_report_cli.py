"""`cellctl history` and `cellctl report` on a store written by the Store API (read-only, never created)."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from cellctl.cli import main
from cellctl.cli.report import _around
from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverKpi,
    ChangeoverStatus,
    Event,
    JobEvent,
    JobStatus,
    Measurement,
    PartProduced,
    Severity,
    StateChanged,
    Verdict,
)
from cellctl.core.oee import Window, compute_oee
from cellctl.core.spc import imr_limits
from cellctl.store import Store
from tests.fixtures.cellfolder import cell_folder, quiet_logging

T = datetime(2026, 3, 2, 8, 0).timestamp()  # local time, as the CLI reads naive ISO times
DEPTHS = [400.0, 400.2, 399.9, 400.1, 400.0, 399.8, 400.1, 400.3, 399.9, 402.0]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Every test here runs ``main``, which reconfigures logging."""
    with quiet_logging():
        yield


def state(dt: float, name: str, previous: str, by: str = "engine") -> StateChanged:
    return StateChanged(ts=T + dt, state=name, state_no=0, previous=previous, command=None, by=by)


def part(k: int) -> PartProduced:
    depth = DEPTHS[k]
    verdict = Verdict.PASS if 398.8 <= depth <= 401.2 else Verdict.FAIL
    m = Measurement(
        characteristic="seat_depth", value=depth, quality="good", units="mm", nominal=400.0,
        lsl=398.8, usl=401.2, verdict=verdict,
    )  # fmt: skip
    return PartProduced(
        ts=T + 220 + 10 * k, part=f"J1-{k + 1:04d}", job="J1", variant="oslo", index=k + 1, verdict=verdict,
        measurements=(m,), cycle_s=3.9,
    )  # fmt: skip


def timeline() -> list[Event]:
    """Hand-computed over [T, T+600): run 200 s, changeover 100 s (planned downtime), downtime 300 s
    (stopped 100, idle 12, held 89, starved 99); 10 parts of oslo (ideal 3.5 s), one failed."""
    job = JobEvent(
        ts=T + 111, job="J1", order_id="SO-1", variant="oslo", recipe_version=1, recipe_hash="h",
        quantity=10, status=JobStatus.QUEUED,
    )  # fmt: skip
    co = {"changeover": "C1", "job": "J1", "from_variant": "bergen", "to_variant": "oslo"}
    return [
        state(0, "Stopped", "Undefined"),
        state(100, "Resetting", "Stopped", by="ana"),
        state(105, "Idle", "Resetting"),
        state(110, "Starting", "Idle", by="ana"),
        job,
        state(112, "Execute", "Starting"),
        ChangeoverEvent(ts=T + 112, status=ChangeoverStatus.STARTED, **co),
        ChangeoverEvent(ts=T + 212, status=ChangeoverStatus.COMPLETED, duration_s=100.0, **co),
        *(part(k) for k in range(10)),
        ChangeoverKpi(
            ts=T + 220,
            last_good_ts=T + 50,
            first_good_ts=T + 220,
            total_s=170.0,
            external_s=5.0,
            external_wait_s=0.0,
            internal_s=100.0,
            first_article_s=8.0,
            planned_external_s=5.0,
            planned_internal_s=90.0,
            **co,
        ),
        AlarmEvent(
            ts=T + 312,
            alarm="cell_held",
            severity=Severity.CRITICAL,
            active=True,
            message="m",
            source="robot1",
        ),
        state(312, "Holding", "Execute"),
        state(313, "Held", "Holding"),
        state(400, "Unholding", "Held", by="ana"),
        state(401, "Execute", "Unholding"),
        state(501, "Suspending", "Execute"),
        state(502, "Suspended", "Suspending"),
    ]


async def journal(path: Path, events: list[Event]) -> None:
    store = await Store.open(path)
    try:
        for event in events:
            await store.append(event, [])
    finally:
        await store.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    asyncio.run(journal(cell_folder(tmp_path), timeline()))
    return tmp_path


def window(folder: Path) -> list[str]:
    return ["--config", str(folder), "--since", "2026-03-02T08:00", "--until", "2026-03-02T08:10"]


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_report_csv_parses_back_to_the_hand_computed_oee(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", *window(folder), "--csv"]) == 0
    rows = read_csv(capsys.readouterr().out)
    oee = {r["metric"]: r["value"] for r in rows if r["section"] == "oee"}
    assert float(oee["planned_s"]) == 500 and float(oee["run_s"]) == 200 and float(oee["changeover_s"]) == 100
    assert float(oee["availability"]) == pytest.approx(0.4, abs=1e-4)
    assert float(oee["performance"]) == pytest.approx(35 / 200, abs=1e-4)
    assert float(oee["quality"]) == pytest.approx(0.9, abs=1e-4)
    assert float(oee["oee"]) == pytest.approx(0.4 * 0.175 * 0.9, abs=1e-4)
    parts = {r["metric"]: int(r["value"]) for r in rows if r["section"] == "parts" and r["item"] == "oslo"}
    assert parts == {"pass": 9, "fail": 1, "invalid": 0}
    ranks = {r["item"]: int(r["value"]) for r in rows if r["section"] == "pareto" and r["metric"] == "rank"}
    assert ranks == {"stopped: engine": 1, "suspended: starved": 2, "held: cell_held (robot1)": 3, "idle": 4}
    kpi = {r["metric"]: r["value"] for r in rows if r["section"] == "changeover"}
    assert kpi["total_s"] == "170.0" and kpi["internal_s"] == "100.0"
    assert [(r["item"], r["value"]) for r in rows if r["section"] == "alarms"] == [("cell_held", "1")]
    # The window lies in the configured early shift (06:00-14:00): its figures are the window's.
    shift = {r["metric"]: r["value"] for r in rows if r["section"] == "shift"}
    assert shift["oee"] == oee["oee"]


def test_report_table_shows_figures_and_pareto(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", *window(folder)]) == 0
    out = capsys.readouterr().out
    assert "OEE 6.3 %   availability 40.0 %   performance 17.5 %   quality 90.0 %" in out
    assert "held: cell_held (robot1)  1m29s" in out
    assert "bergen -> oslo" in out


def test_report_of_the_newest_shift(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["report", "--config", str(folder), "--shift", "early", "--until", "2026-03-02T15:00", "--csv"]
    assert main(args) == 0
    rows = read_csv(capsys.readouterr().out)
    oee = {r["metric"]: r["value"] for r in rows if r["section"] == "oee"}
    # 06:00-14:00: two hours with no fact yet, then the cell stays suspended (starved) after 08:10.
    assert float(oee["unknown_s"]) == 7200
    assert float(oee["planned_s"]) == 6 * 3600 - 100


def test_history_lists_one_row_per_fact(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", *window(folder), "--csv"]) == 0
    rows = read_csv(capsys.readouterr().out)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("part") == 10 and kinds.count("changeover") == 2 and kinds.count("alarm") == 1
    assert kinds.count("job") == 1 and kinds.count("changeover_kpi") == 1
    failed = [r for r in rows if r["kind"] == "part" and r["status"] == "fail"]
    assert [r["item"] for r in failed] == ["J1-0010"] and "seat_depth=402" in failed[0]["detail"]


def test_chart_in_the_terminal_uses_baseline_limits(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "chart", "oslo", "seat_depth", *window(folder), "--baseline", "9"]) == 0
    out = capsys.readouterr().out
    limits = imr_limits(DEPTHS[:9])
    assert f"CL {limits.centre:.4g}" in out and f"UCL {limits.ucl:.4g}" in out
    assert "beyond control limits: 1; outside spec: 1" in out
    assert out.count("X") == 1  # the out-of-spec part


def test_chart_png_is_written(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "chart.png"
    assert main(["report", "chart", "oslo", "seat_depth", *window(folder), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_png_without_matplotlib_says_how_to_install(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    png = tmp_path / "chart.png"
    assert main(["report", "chart", "oslo", "seat_depth", *window(folder), "--png", str(png)]) == 4
    assert "pip install 'cellctl[report]'" in capsys.readouterr().err
    assert not png.exists()


def test_missing_store_is_never_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = cell_folder(tmp_path)
    assert main(["report", *window(tmp_path)]) == 3
    assert "no store file here" in capsys.readouterr().err
    assert not store.exists() and not store.parent.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "--since", "yesterday-ish"], "cannot read the time 'yesterday-ish'"),
        (["report", "--since", "2026-03-02T09:00", "--until", "2026-03-02T08:00"], "must be after --since"),
        (["report", "--shift", "lunch"], "unknown shift 'lunch' (shifts: early, late, night)"),
        (["report", "chart", "oslo", "colour"], "has no characteristic 'colour'"),
        (["report", "chart", "narvik", "seat_depth"], "unknown variant 'narvik'"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(
    folder: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main([*args, "--config", str(folder)]) == 2
    assert message in capsys.readouterr().err


def test_imr_limits_by_hand() -> None:
    limits = imr_limits([10.0, 12.0, 11.0, 13.0])
    # mean 11.5; moving ranges 2, 1, 2 -> MR-bar 5/3
    assert limits.centre == 11.5 and limits.r_centre == pytest.approx(5 / 3)
    # sigma = MR-bar / 1.128, limits at 3 sigma (3 / 1.128 = 2.66)
    assert limits.ucl == pytest.approx(11.5 + 3 / 1.128 * 5 / 3)
    assert limits.r_ucl == pytest.approx(3.267 * 5 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        imr_limits([1.0])


def test_a_window_folds_only_its_slice_of_the_facts_with_the_same_figures() -> None:
    events = timeline()
    ideal = {"oslo": 3.5}
    for start in range(0, 600, 37):
        w = Window(T + start, T + start + 90)
        assert compute_oee(_around(events, w), w, ideal) == compute_oee(events, w, ideal)
    stepped_back = [*events, state(10, "Stopped", "Suspended")]  # a wall-clock step back: no bisection
    assert _around(stepped_back, Window(T + 100, T + 200)) is stepped_back
