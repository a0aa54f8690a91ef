"""Due dates on orders: parsed at the API edge, validated, part of idempotency, in views and proposals."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.api.protocol import ProtocolError, Request, SubmitArgs, parse_args, parse_due
from cellctl.core.clock import ManualClock
from cellctl.core.events import JobEvent
from cellctl.engine import Engine, OrderRequest
from cellctl.engine.scheduler import SchedJob, changeover_costs, evaluate
from cellctl.errors import JobError
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell
from tests.unit.test_engine import FakeSink

NOW = 1_800_000_000.0


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def submit_args(due: object) -> SubmitArgs:
    args = parse_args(
        Request(id=1, cmd="submit", args={"order_id": "PO-1", "variant": "oslo", "quantity": 1, "due": due})
    )
    assert isinstance(args, SubmitArgs)
    return args


# --- the API edge ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(
            "2026-11-28T14:00:00+01:00", datetime(2026, 11, 28, 13, tzinfo=UTC).timestamp(), id="offset"
        ),
        pytest.param("2026-11-28T13:00:00Z", datetime(2026, 11, 28, 13, tzinfo=UTC).timestamp(), id="zulu"),
        pytest.param(1_800_000_000, 1_800_000_000.0, id="epoch-int"),
        pytest.param(1_800_000_000.5, 1_800_000_000.5, id="epoch-float"),
        pytest.param(None, None, id="none"),
    ],
)
def test_a_due_time_is_epoch_seconds_or_iso_8601_with_a_timezone(
    given: object, expected: float | None
) -> None:
    assert submit_args(given).due == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        pytest.param("2026-11-28T14:00:00", "has no timezone", id="naive"),
        pytest.param("2026-11-28", "has no timezone", id="date-only"),
        pytest.param("tomorrow", "is not an ISO 8601 time", id="unparseable"),
        pytest.param("", "is not an ISO 8601 time", id="empty"),
        pytest.param(True, "is not a time", id="bool"),
        pytest.param(-5, "finite number >= 0", id="negative"),
        pytest.param([2026, 11, 28], "is not a time", id="list"),
    ],
)
def test_a_bad_due_time_is_refused_naming_the_field(given: object, says: str) -> None:
    with pytest.raises(ProtocolError, match=r"args\.due") as info:
        submit_args(given)
    assert says in str(info.value)


def test_non_finite_epoch_seconds_are_refused() -> None:
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            parse_due(value)


# --- the engine ------------------------------------------------------------------------------------------


async def test_the_due_date_is_in_the_job_view_and_its_event(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink, ManualClock(NOW))
    view = await engine.submit(OrderRequest("PO-1", "oslo", 2, due=NOW + 3600), by="mes")
    assert view.due == NOW + 3600 and view.to_dict()["due"] == NOW + 3600
    assert engine.status().queue[0].due == NOW + 3600
    (event,) = sink.of(JobEvent)
    assert event.due == NOW + 3600 and event.to_data()["due"] == NOW + 3600


async def test_the_same_order_id_with_another_due_date_is_another_order(config: LoadedConfig) -> None:
    engine = Engine(config, soft_cell(config.cell), FakeSink(), ManualClock(NOW))
    first = await engine.submit(OrderRequest("PO-1", "oslo", 2, due=NOW + 60), by="mes")
    again = await engine.submit(OrderRequest("PO-1", "oslo", 2, due=NOW + 60), by="mes")
    assert again.job_id == first.job_id
    with pytest.raises(JobError, match="different content"):
        await engine.submit(OrderRequest("PO-1", "oslo", 2, due=NOW + 120), by="mes")
    with pytest.raises(JobError, match="different content"):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
    assert len(engine.status().queue) == 1


@pytest.mark.parametrize("due", [math.nan, math.inf, -1.0])
async def test_an_in_process_order_with_a_bad_due_date_is_refused(config: LoadedConfig, due: float) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink, ManualClock(NOW))
    with pytest.raises(JobError, match="due: "):
        await engine.submit(OrderRequest("PO-1", "oslo", 1, due=due), by="mes")
    assert engine.status().queue == () and sink.events == []


async def test_the_proposal_runs_an_early_due_job_before_a_late_due_one_queued_first(
    config: LoadedConfig,
) -> None:
    # Given a long oslo job due in a day, queued before a one-part bergen job due in a minute
    engine = Engine(config, soft_cell(config.cell), FakeSink(), ManualClock(NOW))
    late = await engine.submit(OrderRequest("PO-1", "oslo", 100, due=NOW + 86_400), by="mes")
    early = await engine.submit(OrderRequest("PO-2", "bergen", 1, due=NOW + 60), by="mes")
    assert [j.job_id for j in engine.status().queue] == [late.job_id, early.job_id]

    # When the status is read
    proposed = engine.status().proposed_order

    # Then the early-due job runs first, and so neither is late, where the queue's order makes it late
    assert proposed is not None
    assert proposed.job_ids == (early.job_id, late.job_id)
    jobs = [
        SchedJob.from_recipe(late.job_id, config.recipes["oslo"], 100, due_s=NOW + 86_400, seq=1),
        SchedJob.from_recipe(early.job_id, config.recipes["bergen"], 1, due_s=NOW + 60, seq=2),
    ]
    cost = changeover_costs(config.recipes, config.cell)
    assert evaluate(list(proposed.job_ids), None, jobs, cost, NOW).lateness_s == 0.0
    assert evaluate([late.job_id, early.job_id], None, jobs, cost, NOW).lateness_s > 0.0


async def test_without_due_dates_the_same_queue_keeps_its_order(config: LoadedConfig) -> None:
    # The due date, not the variants, moved the early job: without due dates FIFO stands (oslo from an
    # unknown setup costs no more than bergen does).
    engine = Engine(config, soft_cell(config.cell), FakeSink(), ManualClock(NOW))
    first = await engine.submit(OrderRequest("PO-1", "oslo", 100), by="mes")
    second = await engine.submit(OrderRequest("PO-2", "bergen", 1), by="mes")
    proposed = engine.status().proposed_order
    assert proposed is not None
    assert proposed.job_ids == (first.job_id, second.job_id)


@given(
    st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.timezones()),
)
def test_any_aware_time_in_iso_8601_parses_to_its_instant(when: datetime) -> None:
    assert parse_due(when.isoformat()) == when.timestamp()
    assert parse_due(when.timestamp()) == when.timestamp()
