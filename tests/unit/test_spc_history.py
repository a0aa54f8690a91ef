"""SPC charts rebuilt at start from the newest journaled parts: bounded, invalid values left out, and a drift
that began before the restart completes its rule on the first part after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.core.events import AlarmEvent, PartProduced, Severity, Verdict
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.spc_monitor import SpcMonitor, read_spc_history
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.schema.recipe import SpcConfig
from cellctl.store import Store
from tests.softcell import soft_cell
from tests.unit.test_engine import FakeSink, reset_and_start, running
from tests.unit.test_engine_spc import DRIFT, STEADY, part, widths, with_spc


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return with_spc(load_config(config_dir), SpcConfig(baseline=10, hold_on=(3,)))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "cellctl.db")
    yield s
    await s.close()


async def journal_parts(store: Store, widths_mm: list[float | None]) -> None:
    for i, width in enumerate(widths_mm, start=1):
        verdict = Verdict.PASS if width is not None else Verdict.INVALID
        await store.append(part(i, width, verdict), [])


async def test_the_history_is_the_newest_parts_oldest_first_without_invalid_values(store: Store) -> None:
    await journal_parts(store, [420.0, 420.1, None, 419.9, 420.2])

    history = await read_spc_history(store, limit=3)

    assert [(h.label, h.value) for h in history] == [("J-0004", 419.9), ("J-0005", 420.2)]
    assert {(h.variant, h.characteristic, h.lsl, h.usl) for h in history} == {
        ("oslo", "seat_width", 418.8, 421.2)
    }


async def test_history_against_other_spec_limits_is_not_replayed(config: LoadedConfig, store: Store) -> None:
    await journal_parts(store, [420.0, 420.1])
    history = await read_spc_history(store)
    narrowed = config.recipes["oslo"].quality["seat_width"].model_copy(update={"usl": 421.0})
    recipe = config.recipes["oslo"].model_copy(
        update={"quality": {**config.recipes["oslo"].quality, "seat_width": narrowed}}
    )

    assert SpcMonitor(config.recipes).replay(history) == 2
    assert SpcMonitor({"oslo": recipe}).replay(history) == 0


async def test_a_drift_begun_before_the_restart_holds_at_the_first_part_after_it(
    config: LoadedConfig, store: Store
) -> None:
    # Given a journal with the baseline and three drifting parts from before the restart
    await journal_parts(store, [*STEADY, *DRIFT[:3]])
    history = await read_spc_history(store)
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=widths(DRIFT[3:] * 5)), sink, spc_history=history)
    chart = engine.spc_chart("oslo", "seat_width")
    assert chart.limits is not None and len(chart.points) == len(STEADY) + 3

    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 5), by="mes")
        # When the cell makes its first part after the restart, still drifting
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=5)

    # Then that part completes rule 3 against the limits learnt before the restart, and the cell holds
    assert len(sink.of(PartProduced)) == 1
    [alarm] = [a for a in sink.of(AlarmEvent) if a.source == "spc"]
    assert (alarm.alarm, alarm.severity) == ("spc:oslo:seat_width:rule3", Severity.CRITICAL)
