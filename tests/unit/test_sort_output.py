"""The part's accept/reject output: written for its verdict only once its record is durable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.core.events import Event, PartProduced, Verdict
from cellctl.engine import Engine, OrderRequest, State
from cellctl.errors import StoreError
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell
from tests.unit.test_engine import OSLO_FAIL, OSLO_GOOD, FakeSink, GaugeScript, T, reset_and_start, running

SORT_TAGS = ("accept", "reject")


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def sorted_writes(writes: list[tuple[str, object]]) -> list[tuple[str, object]]:
    return [w for w in writes if w[0] in SORT_TAGS]


class WatchingSink(FakeSink):
    """Notes, as each part's record is made, how many accept/reject writes the gauge had seen."""

    def __init__(self, gauge_writes: list[tuple[str, object]]) -> None:
        super().__init__()
        self._gauge_writes = gauge_writes
        self.seen_at_record: list[int] = []

    async def record(self, event: Event) -> int:
        if isinstance(event, PartProduced):
            self.seen_at_record.append(len(sorted_writes(self._gauge_writes)))
        return await super().record(event)


async def test_each_part_is_sorted_by_its_verdict_after_its_record(config: LoadedConfig) -> None:
    # Oslo's first-article gate needs one good part: the first one is good, so the cell runs on.
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_FAIL, OSLO_GOOD]))
    sink = WatchingSink(devices["gauge"].writes)
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 3), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)

    verdicts = [p.verdict for p in sink.of(PartProduced)]
    assert verdicts == [Verdict.PASS, Verdict.FAIL, Verdict.PASS]
    # Two writes per part (the output going false first), none of a part's before its record.
    assert sink.seen_at_record == [0, 2, 4]
    assert sorted_writes(devices["gauge"].writes) == [
        ("reject", False),
        ("accept", True),
        ("accept", False),
        ("reject", True),
        ("reject", False),
        ("accept", True),
    ]


class FailingPartSink(FakeSink):
    """A store that cannot keep part records."""

    async def record(self, event: Event) -> int:
        if isinstance(event, PartProduced):
            raise StoreError("disk full")
        return await super().record(event)


async def test_a_part_whose_record_fails_is_not_sorted(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD]))
    engine = Engine(config, devices, FailingPartSink())
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        # The store's failure holds the cell (tests/unit/test_store_alarm.py), it does not crash it.
        await engine.wait_for(State.HELD, timeout=T)
        assert "disk full" in engine.status().reason

    assert sorted_writes(devices["gauge"].writes) == []
    assert [w for w in devices["gauge"].writes if w[0] == "trigger"]  # the part was measured
