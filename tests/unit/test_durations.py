"""Measured step durations: the estimator, reading them from the journal, planner, scheduler, engine."""

from __future__ import annotations

import math
import sqlite3
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.core.events import ChangeoverEvent, ChangeoverStatus, StepEvent, StepStatus
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.durations import DEFAULT_MIN_SAMPLES, DEFAULT_WINDOW, StepDurations
from cellctl.engine.planner import plan_changeover, target_setup
from cellctl.engine.scheduler import changeover_costs
from cellctl.errors import StoreError
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.store import Store
from cellctl.store import steps as stored_steps
from tests.softcell import soft_cell
from tests.unit.test_engine import FakeSink, T, reset_and_start, running

TOOL = ("toolchanger", "tool_change")
"""The step on the oslo -> bergen critical path (config: expected 4 s)."""

durations_s = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
junk_s = st.sampled_from([math.nan, math.inf, -math.inf, -0.5, -1e9])


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def step_event(
    status: StepStatus = StepStatus.DONE,
    duration_s: float | None = 1.0,
    device: str | None = "toolchanger",
    kind: str = "tool_change",
) -> StepEvent:
    return StepEvent(
        ts=1.0,
        changeover="C1",
        job="J1",
        step=f"{device}:{kind}",
        step_kind=kind,
        device=device,
        status=status,
        duration_s=duration_s,
    )


# --- the estimator --------------------------------------------------------------------------------------


@given(st.lists(durations_s, max_size=DEFAULT_MIN_SAMPLES - 1), st.floats(0.0, 3600.0))
def test_below_the_minimum_of_samples_the_configured_duration_is_used(
    samples: list[float], configured: float
) -> None:
    durations = StepDurations.from_samples((*TOOL, s) for s in samples)
    estimate = durations.estimate(*TOOL, configured)
    assert (estimate.expected_s, estimate.measured, estimate.samples) == (configured, False, len(samples))
    assert estimate.describe().startswith("configured")


@given(st.lists(durations_s, min_size=DEFAULT_MIN_SAMPLES, max_size=3 * DEFAULT_WINDOW))
def test_from_the_minimum_on_it_is_the_median_of_the_newest_window(samples: list[float]) -> None:
    durations = StepDurations.from_samples((*TOOL, s) for s in samples)
    estimate = durations.estimate(*TOOL, 4.0)
    newest = samples[-DEFAULT_WINDOW:]
    assert estimate.measured and estimate.samples == len(newest)
    assert estimate.expected_s == statistics.median(newest)
    assert min(newest) <= estimate.expected_s <= max(newest)
    assert estimate.describe() == f"measured (n={len(newest)})"


@given(st.lists(st.one_of(durations_s, junk_s), max_size=40))
def test_non_finite_and_negative_durations_are_ignored(samples: list[float]) -> None:
    durations = StepDurations.from_samples((*TOOL, s) for s in samples)
    usable = [s for s in samples if math.isfinite(s) and s >= 0.0]
    only_usable = StepDurations.from_samples((*TOOL, s) for s in usable)
    assert durations.estimate(*TOOL, 4.0) == only_usable.estimate(*TOOL, 4.0)
    assert durations.samples(*TOOL) == len(usable[-DEFAULT_WINDOW:])


def test_one_outlier_among_steady_measurements_hardly_moves_the_estimate() -> None:
    # Given a step that takes 5 s, once 500 s (an operator left it waiting)
    durations = StepDurations.from_samples((*TOOL, s) for s in (5.0, 5.2, 500.0, 4.9, 5.1))
    # then the estimate stays a typical duration
    assert durations.expected_s(*TOOL, 4.0) == 5.1


def test_keys_are_per_device_and_step_kind() -> None:
    durations = StepDurations.from_samples([("a", "tool_change", 9.0)] * 3 + [("b", "tool_change", 1.0)] * 3)
    assert durations.expected_s("a", "tool_change", 4.0) == 9.0
    assert durations.expected_s("b", "tool_change", 4.0) == 1.0
    assert durations.expected_s("a", "robot_program", 4.0) == 4.0


@pytest.mark.parametrize(
    ("status", "duration_s"),
    [
        pytest.param(StepStatus.FAILED, 3.0, id="failed"),
        pytest.param(StepStatus.STARTED, 3.0, id="started"),
        pytest.param(StepStatus.SKIPPED, 3.0, id="skipped"),
        pytest.param(StepStatus.DONE, None, id="done-without-duration"),
        pytest.param(StepStatus.DONE, math.nan, id="done-nan"),
    ],
)
def test_only_completed_steps_with_a_duration_are_counted(
    status: StepStatus, duration_s: float | None
) -> None:
    durations = StepDurations()
    version = durations.version
    assert not durations.observe(step_event(status, duration_s))
    assert durations.samples(*TOOL) == 0 and durations.version == version


def test_a_completed_step_is_counted_and_bumps_the_version() -> None:
    durations = StepDurations()
    version = durations.version
    assert durations.observe(step_event(StepStatus.DONE, 2.5))
    assert durations.samples(*TOOL) == 1 and durations.version > version


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        StepDurations(window=3, min_samples=4)


# --- reading them from the journal ----------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "cellctl.db")
    yield s
    await s.close()


async def test_the_store_gives_completed_step_durations_oldest_first(store: Store) -> None:
    # Given a journal with started, failed, done (one without a usable duration) step rows
    for event in (
        step_event(StepStatus.STARTED, None),
        step_event(StepStatus.DONE, 1.0),
        step_event(StepStatus.FAILED, 9.0),
        step_event(StepStatus.DONE, math.nan),  # journaled as null
        step_event(StepStatus.DONE, 2.0, device=None, kind="confirm"),
        step_event(StepStatus.DONE, 3.0),
    ):
        await store.append(event, [])

    # then only the completed ones with a duration come back, oldest first
    assert await store.step_durations() == [
        ("toolchanger", "tool_change", 1.0),
        (None, "confirm", 2.0),
        ("toolchanger", "tool_change", 3.0),
    ]


async def test_the_store_reads_only_the_newest_window_of_step_rows(store: Store) -> None:
    for k in range(10):
        await store.append(step_event(StepStatus.DONE, float(k)), [])
    samples = await store.step_durations(window=4)
    assert [s[2] for s in samples] == [6.0, 7.0, 8.0, 9.0]


async def test_reading_read_only_never_creates_a_store(tmp_path: Path) -> None:
    path = tmp_path / "nothing" / "cellctl.db"
    with pytest.raises(StoreError, match="no store file"):
        stored_steps.read_only(path)
    assert not path.parent.exists()


async def test_reading_read_only_sees_what_the_store_wrote_and_writes_nothing(
    store: Store, tmp_path: Path
) -> None:
    await store.append(step_event(StepStatus.DONE, 1.5), [])
    before = await store.last_journal_id()
    assert stored_steps.read_only(store.path) == [("toolchanger", "tool_change", 1.5)]
    assert await store.last_journal_id() == before


def test_reading_a_file_that_is_no_store_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "cellctl.db"
    sqlite3.connect(path).close()  # an empty database: no journal table
    with pytest.raises(StoreError, match="cannot read step durations"):
        stored_steps.read_only(path)


# --- planner and scheduler ------------------------------------------------------------------------------


def test_the_plan_uses_measured_durations_but_keeps_the_configured_timeout(config: LoadedConfig) -> None:
    cell, recipes = config.cell, config.recipes
    durations = StepDurations.from_samples([(*TOOL, 40.0)] * 3 + [("robot1", "robot_program", 0.1)] * 2)
    oslo = target_setup(recipes["oslo"], cell)

    measured = plan_changeover(oslo, recipes["bergen"], cell, from_variant="oslo", durations=durations)
    configured = plan_changeover(oslo, recipes["bergen"], cell, from_variant="oslo")

    steps = {s.id: s for s in measured.steps}
    plain = {s.id: s for s in configured.steps}
    assert steps["toolchanger:tool_change"].expected_s == 40.0
    assert steps["toolchanger:tool_change"].timeout_s == plain["toolchanger:tool_change"].timeout_s
    # too few samples: still configured
    assert steps["robot1:robot_program"].expected_s == plain["robot1:robot_program"].expected_s
    # The tool change comes after the magazine's preselect (a setpoint), the program after the tool change.
    before = plain["toolchanger:setpoints"].expected_s
    assert measured.critical_path()[1] == pytest.approx(
        before + 40.0 + plain["robot1:robot_program"].expected_s
    )


def test_changeover_costs_follow_the_measured_durations_as_they_change(config: LoadedConfig) -> None:
    durations = StepDurations()
    cost = changeover_costs(config.recipes, config.cell, durations=durations)
    before = cost("oslo", "bergen")
    for _ in range(DEFAULT_MIN_SAMPLES):
        durations.add(*TOOL, 100.0)
    after = cost("oslo", "bergen")
    assert after > before
    assert after == pytest.approx(
        plan_changeover(
            target_setup(config.recipes["oslo"], config.cell),
            config.recipes["bergen"],
            config.cell,
            from_variant="oslo",
            durations=durations,
        ).critical_path(internal_only=True)[1]
    )


# --- the engine -----------------------------------------------------------------------------------------


async def test_the_engine_plans_with_the_durations_it_was_given(config: LoadedConfig) -> None:
    # Given measured tool changes of 42 s, and an order for bergen
    sink = FakeSink()
    durations = StepDurations.from_samples([(*TOOL, 42.0)] * 3)
    engine = Engine(config, soft_cell(config.cell), sink, durations=durations)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "bergen", 1), by="mes")
        # the queue's predicted changeover already uses them
        proposal = engine.status().proposed_order
        assert proposal is not None and proposal.queue_changeover_s >= 42.0
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)

    # then the changeover that ran was planned with them
    started = [e for e in sink.of(ChangeoverEvent) if e.status is ChangeoverStatus.STARTED]
    assert started and started[0].planned_s >= 42.0


async def test_the_engine_counts_each_completed_step_it_records(config: LoadedConfig) -> None:
    # Given two earlier tool changes of 50 s (too few to be used)
    sink = FakeSink()
    durations = StepDurations.from_samples([(*TOOL, 50.0)] * 2)
    engine = Engine(config, soft_cell(config.cell), sink, durations=durations)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)

    # then every completed step it ran is one more sample of its own (device, kind)
    done = [e for e in sink.of(StepEvent) if e.status is StepStatus.DONE]
    tool_changes = [e.duration_s for e in done if (e.device, e.step_kind) == TOOL]
    assert tool_changes and all(d is not None for d in tool_changes)
    assert engine.durations is durations
    assert durations.samples(*TOOL) == 2 + len(tool_changes)
    estimate = durations.estimate(*TOOL, 4.0)
    assert estimate.measured
    assert estimate.expected_s == statistics.median([50.0, 50.0, *(d or 0.0 for d in tool_changes)])
    for event in done:
        assert durations.samples(event.device, event.step_kind) >= 1
