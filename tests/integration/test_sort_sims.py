"""The accept/reject output on the simulated gauge: one sort per part, on the wire only after its record."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from cellctl.core.clock import SystemClock
from cellctl.core.events import Event, JobEvent, JobStatus, PartProduced
from cellctl.drivers import build_driver
from cellctl.engine import Engine, OrderRequest, State
from cellctl.schema.load import load_config
from device_sims.harness import SimCell
from tests.fixtures.journal import Journal
from tests.integration.test_hold_changeover import TIMEOUT, _all_up

REPO = Path(__file__).resolve().parents[2]
PARTS = 4


@pytest.fixture
def sim_time_scale() -> float:
    return 0.01


@pytest.fixture
def sim_sims_file(tmp_path: Path) -> Path:
    """config/sims.yaml without gauge outliers: every part passes (the first-article gate lets it run)."""
    yaml = YAML(typ="safe")
    data = yaml.load((REPO / "config" / "sims.yaml").read_text())
    data["gauge"]["outlier_rate"] = 0.0
    path = tmp_path / "sims.yaml"
    with path.open("w") as out:
        yaml.dump(data, out)
    return path


class SortWatch(Journal):
    """Notes, as each part is recorded, how many accept writes the simulated gauge has taken."""

    def __init__(self, sim: SimCell) -> None:
        super().__init__()
        self._sim = sim
        self.accepted_at_record: list[int] = []

    async def record(self, event: Event) -> int:
        if isinstance(event, PartProduced):
            self.accepted_at_record.append(self._sim.counters[("gauge", "accept")])
        return await super().record(event)


async def test_each_good_part_is_accepted_once_after_its_record(sim_cell: SimCell) -> None:
    config = load_config(REPO / "config").with_cell(sim_cell.cell_config())
    clock = SystemClock()
    drivers = {name: build_driver(name, dev, clock) for name, dev in config.cell.devices.items()}
    journal = SortWatch(sim_cell)
    engine = Engine(config, drivers, journal, clock)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(d.run(), name=f"driver:{name}") for name, d in drivers.items()]
        tasks.append(group.create_task(engine.run(), name="engine"))
        try:
            await _all_up(drivers, engine)
            job = await engine.submit(OrderRequest("PO-1", "oslo", PARTS), by="mes")
            await engine.command("reset", by="op")
            await engine.wait_for(State.IDLE, timeout=TIMEOUT)
            await engine.command("start", by="op")
            await journal.wait_for(
                lambda e: isinstance(e, JobEvent) and e.job == job.job_id and e.status is JobStatus.COMPLETED
            )
        finally:
            for task in tasks:
                task.cancel()

    assert [e.verdict.value for e in journal.events if isinstance(e, PartProduced)] == ["pass"] * PARTS
    assert journal.accepted_at_record == list(range(PARTS))
    assert sim_cell.counters[("gauge", "accept")] == PARTS
    assert sim_cell.counters[("gauge", "reject")] == 0
    assert (sim_cell.value("gauge.accept"), sim_cell.value("gauge.reject")) == (True, False)
