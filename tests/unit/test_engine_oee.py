"""Live OEE in the engine's status (engine/oee.py), fed by every fact the engine records."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from cellctl.cli.ctl import format_status
from cellctl.core.events import PartProduced, StateChanged, Verdict
from cellctl.engine import Engine
from cellctl.engine.oee import BETWEEN_SHIFTS, LiveOee
from cellctl.schema.cell import OeeConfig, ShiftConfig
from cellctl.schema.load import LoadedConfig, load_config
from tests.unit import test_engine
from tests.unit.test_engine import FakeSink

# The soft cell's run of two jobs, from the engine tests.
config = test_engine.config
two_jobs = test_engine.two_jobs

CONFIG = Path(__file__).resolve().parents[2] / "config"


def loaded(oee: OeeConfig) -> LoadedConfig:
    base = load_config(CONFIG)
    return base.with_cell(base.cell.model_copy(update={"oee": oee}))


def utc(hour: int, minute: int = 0) -> float:
    return datetime(2026, 3, 2, hour, minute, tzinfo=UTC).timestamp()


def test_live_figures_roll_over_at_the_shift_end_and_keep_the_state() -> None:
    shifts = (ShiftConfig(name="early", start="06:00", end="14:00"),)
    live = LiveOee(loaded(OeeConfig(shifts=shifts, timezone="UTC")))
    live.observe(
        StateChanged(ts=utc(13), state="Execute", state_no=6, previous="Starting", command=None, by="e")
    )
    oslo = PartProduced(
        ts=utc(13, 30), part="p", job="j", variant="oslo", index=1, verdict=Verdict.PASS, measurements=()
    )
    live.observe(oslo)
    early = live.figures(utc(14) - 1)
    assert early.window.name == "early 2026-03-02" and early.run_s == 3599 and early.parts.total == 1
    after = live.figures(utc(15))
    assert after.window.name == BETWEEN_SHIFTS and after.run_s == 3600 and after.parts.total == 0
    assert after.window.start == utc(14)


def test_without_shifts_the_window_is_the_local_day() -> None:
    live = LiveOee(loaded(OeeConfig(timezone="UTC")))
    assert live.window_at(utc(10)).name == "2026-03-02"
    assert live.window_at(utc(10)).seconds == 86400


async def test_engine_status_carries_the_live_oee_of_its_run(
    two_jobs: tuple[FakeSink, Engine, str, str],
) -> None:
    # Given the soft cell's run of oslo x3 (pass, fail, invalid) and bergen x2 (pass), suspended at the end.
    _sink, engine, _oslo, _bergen = two_jobs
    oee = engine.status().oee
    assert oee is not None
    assert (oee.parts.total, oee.parts.good, oee.parts.bad, oee.parts.invalid) == (5, 3, 1, 1)
    assert oee.changeovers == 2 and oee.changeover_s > 0 and oee.run_s > 0
    assert oee.quality == pytest.approx(3 / 5)
    assert oee.ideal_s == 3 * 3.5 + 2 * 4.0  # the recipes' ideal_cycle_s
    data = json.loads(json.dumps(engine.status().to_dict()))["oee"]
    assert data["parts"] == {"good": 3, "bad": 1, "invalid": 1}
    assert "oee " in format_status(engine.status().to_dict())


def test_ended_windows_become_oee_reports_one_per_shift() -> None:
    shifts = (
        ShiftConfig(name="early", start="06:00", end="14:00"),
        ShiftConfig(name="late", start="14:00", end="22:00"),
    )
    live = LiveOee(loaded(OeeConfig(shifts=shifts, timezone="UTC")))
    live.observe(
        StateChanged(ts=utc(13), state="Execute", state_no=6, previous="Starting", command=None, by="e")
    )
    assert live.ended(utc(13, 30)) == []
    assert live.seconds_left(utc(13, 30)) == 1800
    # No fact for two windows: both reports come, in order, the state carried over.
    reports = live.ended(utc(23))
    assert [(r.window, r.run_s, r.ts) for r in reports] == [
        ("early 2026-03-02", 3600, utc(23)),
        ("late 2026-03-02", 8 * 3600, utc(23)),
    ]
    assert live.ended(utc(23)) == []


@pytest.mark.parametrize(
    ("oee", "message"),
    [
        ({"shifts": [{"name": "a", "start": "06:00", "end": "14:00"}] * 2}, "shift 'a' is named twice"),
        ({"shifts": [{"name": "a", "start": "06:00", "end": "06:00"}]}, "starts and ends at 06:00"),
        ({"shifts": [{"name": "a", "start": "6:00", "end": "14:00"}]}, "String should match pattern"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"changeover": "sometimes"}, "planned_downtime"),
    ],
)
def test_bad_oee_sections_are_refused_with_the_reason(oee: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        OeeConfig.model_validate(oee)
