"""SPC in the engine on a soft cell: a drifting process trips a rule while every part still passes; the rule
raises an alarm, and holds the cell where the recipe says so; the status and the chart data show it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.events import AlarmEvent, JobStatus, Measurement, PartProduced, Severity, Verdict
from cellctl.core.spc import Rule
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.spc_monitor import SpcMonitor, SpcOutcome
from cellctl.errors import JobError
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.schema.recipe import SpcConfig
from tests.softcell import soft_cell
from tests.unit.test_engine import OSLO_GOOD, FakeSink, GaugeScript, is_job, reset_and_start, running

BASELINE = 10
# Baseline alternating 419.9 / 420.1: centre 420.0, MRbar 0.2, sigma 0.2 / 1.128 = 0.177 mm, so the control
# limits are 419.47 .. 420.53 while the spec is 418.8 .. 421.2.
STEADY = [419.9, 420.1] * (BASELINE // 2)
# Then a slow upward drift, every point inside 1..2 sigma: the fourth completes rule 3 (4 of 5 beyond
# 1 sigma), far inside the spec.
DRIFT = [420.2, 420.25, 420.3, 420.35]
AFTER = [420.0] * 10


def widths(values: list[float]) -> GaugeScript:
    return GaugeScript([{**OSLO_GOOD, "width_mm": v} for v in values])


def with_spc(config: LoadedConfig, spc: SpcConfig) -> LoadedConfig:
    oslo = config.recipes["oslo"]
    width = oslo.quality["seat_width"].model_copy(update={"spc": spc})
    recipe = oslo.model_copy(update={"quality": {**oslo.quality, "seat_width": width}})
    return dataclasses.replace(config, recipes={**config.recipes, "oslo": recipe})


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def spc_alarms(sink: FakeSink) -> list[tuple[str, Severity, bool]]:
    return [(a.alarm, a.severity, a.active) for a in sink.of(AlarmEvent) if a.source == "spc"]


async def test_a_drift_holds_the_cell_on_rule_3_before_any_part_is_out_of_spec(config: LoadedConfig) -> None:
    # Given oslo x30 whose seat width is charted and holds on rules 3 and 4
    config = with_spc(config, SpcConfig(baseline=BASELINE, hold_on=(3, 4)))
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=widths(STEADY + DRIFT + AFTER)), sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 30), by="mes")
        # When the process drifts after the baseline
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=5)
        status = engine.status()
        chart = engine.spc_chart("oslo", "seat_width")

    # Then the cell held at the part that completed the pattern, every part made so far passed
    parts = sink.of(PartProduced)
    assert len(parts) == BASELINE + len(DRIFT)
    assert all(p.verdict is Verdict.PASS for p in parts)
    assert "rule 3" in status.reason and "oslo/seat_width" in status.reason
    assert spc_alarms(sink) == [("spc:oslo:seat_width:rule3", Severity.CRITICAL, True)]
    [raised] = [a for a in sink.of(AlarmEvent) if a.source == "spc"]
    assert parts[-1].part in raised.message
    assert "control limits [419.468, 420.532], spec [418.8, 421.2]" in raised.message
    # and the status and the chart show the frozen limits beside the spec, and the violation
    [summary] = status.spc
    assert summary.characteristic == "seat_width" and summary.limits is not None
    assert summary.limits.centre == pytest.approx(420.0)
    assert (summary.lsl, summary.usl) == (418.8, 421.2)
    assert summary.last_violation is not None and summary.last_violation.label == parts[-1].part
    assert summary.cp is not None and summary.cpk is not None and summary.cpk <= summary.cp
    assert [p.value for p in chart.points] == pytest.approx(STEADY + DRIFT)
    assert [list(p.violations) for p in chart.points][-1] == [Rule.FOUR_OF_FIVE_BEYOND_1_SIGMA]


async def test_without_hold_on_a_violation_only_raises_a_warning_and_production_goes_on(
    config: LoadedConfig,
) -> None:
    # Given the same drift, with rules checked but none configured to hold
    config = with_spc(config, SpcConfig(baseline=BASELINE))
    sink = FakeSink()
    values = STEADY + DRIFT + AFTER
    engine = Engine(config, soft_cell(config.cell, measure=widths(values)), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", len(values)), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(is_job(JobStatus.COMPLETED, job.job_id))

    # Then the rule raised a warning, cleared when the process came back, and the cell never held
    alarms = spc_alarms(sink)
    assert alarms[0] == ("spc:oslo:seat_width:rule3", Severity.WARNING, True)
    assert ("spc:oslo:seat_width:rule3", Severity.WARNING, False) in alarms  # cleared, as raised
    assert "Held" not in sink.states()
    # Through the alarm manager: shown until a person acknowledges it.
    assert [a.id for a in engine.status().alarms] == ["spc:oslo:seat_width:rule3"]


async def test_a_recipe_without_spc_charts_nothing(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=widths(STEADY + DRIFT)), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", len(STEADY + DRIFT)), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(is_job(JobStatus.COMPLETED, job.job_id))
        status = engine.status()
        with pytest.raises(JobError, match="no SPC chart for 'seat_width'"):
            engine.spc_chart("oslo", "seat_width")

    assert spc_alarms(sink) == []
    assert status.spc == ()


def part(index: int, width: float | None, verdict: Verdict = Verdict.PASS) -> PartProduced:
    measurement = Measurement(
        characteristic="seat_width",
        value=width,
        quality="good" if width is not None else "bad",
        units="mm",
        nominal=420.0,
        lsl=418.8,
        usl=421.2,
        verdict=verdict,
    )
    return PartProduced(
        ts=float(index),
        part=f"J-{index:04d}",
        job="J",
        variant="oslo",
        index=index,
        verdict=verdict,
        measurements=(measurement,),
    )


def test_invalid_measurements_never_enter_a_chart(config: LoadedConfig) -> None:
    config = with_spc(config, SpcConfig(baseline=4))
    monitor = SpcMonitor(config.recipes)
    recipe = config.recipes["oslo"]
    monitor.observe(part(1, 420.0), recipe)
    monitor.observe(part(2, None, Verdict.INVALID), recipe)
    monitor.observe(part(3, 425.0, Verdict.INVALID), recipe)  # e.g. stale: judged invalid, value kept
    monitor.observe(part(4, 420.1), recipe)
    data: dict[str, Any] = monitor.chart("oslo", "seat_width").to_dict()
    assert [p["label"] for p in data["points"]] == ["J-0001", "J-0004"]


def test_a_characteristic_configured_but_not_yet_measured_has_an_empty_chart(config: LoadedConfig) -> None:
    config = with_spc(config, SpcConfig())
    monitor = SpcMonitor(config.recipes)
    data = monitor.chart("oslo", "seat_width")
    assert data.points == () and data.limits is None and data.spec.usl == 421.2
    with pytest.raises(JobError, match="no recipe for variant 'nope'"):
        monitor.chart("nope", "seat_width")


def test_subgroups_chart_as_xbar_r_one_point_per_full_subgroup(config: LoadedConfig) -> None:
    config = with_spc(config, SpcConfig(baseline=2, subgroup=3))
    monitor = SpcMonitor(config.recipes)
    recipe = config.recipes["oslo"]
    for i, width in enumerate([420.0, 420.1, 420.2, 419.9, 420.0, 420.1, 420.0], start=1):
        monitor.observe(part(i, width), recipe)
    data = monitor.chart("oslo", "seat_width")
    # Two full subgroups (means 420.1 and 420.0, ranges 0.2 and 0.2); the seventh part waits for two more.
    assert data.kind == "Xbar-R"
    assert [p.value for p in data.points] == pytest.approx([420.1, 420.0])
    assert [p.range for p in data.points] == pytest.approx([0.2, 0.2])
    assert data.limits is not None and data.limits.ucl == pytest.approx(420.05 + 1.023 * 0.2)


def test_a_hold_rule_holds_and_a_point_in_control_clears_its_alarm(config: LoadedConfig) -> None:
    config = with_spc(config, SpcConfig(baseline=4, hold_on=(1,)))
    monitor = SpcMonitor(config.recipes)
    recipe = config.recipes["oslo"]
    for i, width in enumerate([419.9, 420.1, 419.9, 420.1], start=1):
        assert monitor.observe(part(i, width), recipe) == SpcOutcome()
    limits = monitor.chart("oslo", "seat_width").limits
    tripped = monitor.observe(part(5, 421.0), recipe)
    back = monitor.observe(part(6, 420.0), recipe)

    assert tripped.hold is not None and tripped.hold.rule == 1 and "J-0005" in str(tripped.hold)
    assert [(a.alarm, a.severity, a.active) for a in tripped.alarms] == [
        ("spc:oslo:seat_width:rule1", Severity.CRITICAL, True)
    ]
    assert back.hold is None
    assert [(a.alarm, a.active) for a in back.alarms] == [("spc:oslo:seat_width:rule1", False)]
    assert monitor.chart("oslo", "seat_width").limits == limits


def test_every_point_completing_a_hold_rule_holds_but_its_alarm_is_raised_once(config: LoadedConfig) -> None:
    config = with_spc(config, SpcConfig(baseline=4, hold_on=(1,)))
    monitor = SpcMonitor(config.recipes)
    recipe = config.recipes["oslo"]
    for i, width in enumerate([419.9, 420.1, 419.9, 420.1], start=1):
        monitor.observe(part(i, width), recipe)
    # Two parts in a row beyond 3 sigma, one on each side (after an Unhold the second one holds again)
    first, second = monitor.observe(part(5, 421.0), recipe), monitor.observe(part(6, 419.0), recipe)

    assert first.hold is not None and second.hold is not None and "J-0006" in str(second.hold)
    assert [a.active for a in first.alarms] == [True]
    assert second.alarms == ()


def test_spc_off_keeps_the_recipe_snapshot_hash_and_spc_on_changes_it(config: LoadedConfig) -> None:
    # The hashes these recipes had before SPC existed: jobs journaled then still match their recipe.
    assert config.recipes["oslo"].snapshot_hash() == "0c25082cf179adc8"
    assert config.recipes["tromso"].snapshot_hash() == "e5c99c7ac86c969e"
    charted = with_spc(config, SpcConfig()).recipes["oslo"]
    assert charted.snapshot_hash() != config.recipes["oslo"].snapshot_hash()
