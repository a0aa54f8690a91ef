"""Orders: per-part parameters (batch size one) and one job per order id, enforced by the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.core.events import PartProduced
from cellctl.engine import Engine, OrderRequest, State
from cellctl.errors import JobError
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.store import Store
from cellctl.telemetry.recorder import Recorder
from tests.softcell import soft_cell
from tests.unit.test_engine import FakeSink, T, reset_and_start, running


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


# --- batch size one ------------------------------------------------------------------------------------


async def test_each_part_of_a_batch_size_one_order_is_made_with_its_own_parameters(
    config: LoadedConfig,
) -> None:
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    pitches = [9.0, 11.5, 15.0]
    async with running(engine):
        view = await engine.submit(
            OrderRequest("PO-1", "oslo", 3, part_parameters=[{"staple_pitch": p} for p in pitches]), by="mes"
        )
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)

    assert [dict(p) for p in view.part_parameters] == [{"staple_pitch": p} for p in pitches]
    assert [w[1] for w in devices["stapler"].writes if w[0] == "pitch_mm"] == pitches
    assert [p.parameters["staple_pitch"] for p in sink.of(PartProduced)] == pitches


async def test_a_part_without_its_own_value_takes_the_orders_value(config: LoadedConfig) -> None:
    engine = Engine(config, soft_cell(config.cell), FakeSink())
    async with running(engine):
        view = await engine.submit(
            OrderRequest(
                "PO-1",
                "oslo",
                2,
                parameters={"staple_pitch": 10.0},
                part_parameters=[{}, {"staple_pitch": 14.0}],
            ),
            by="mes",
        )

    assert [dict(p) for p in view.part_parameters] == [{"staple_pitch": 10.0}, {"staple_pitch": 14.0}]


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([{"staple_pitch": 9.0}], r"part_parameters: 1 parameter sets for a quantity of 2"),
        (
            [{"staple_pitch": 9.0}, {"staple_pitch": 99.0}],
            r"part_parameters\[1\]\.staple_pitch: 99 is outside",
        ),
        ([{"staple_pitch": 9.0}, {"speed": 1.0}], r"part_parameters\[1\]\.speed: unknown parameter"),
    ],
)
async def test_a_bad_per_part_parameter_set_is_refused_naming_the_part_and_nothing_is_queued(
    config: LoadedConfig, parts: list[dict[str, float]], message: str
) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        recorded = len(sink.events)
        with pytest.raises(JobError, match=message):
            await engine.submit(OrderRequest("PO-1", "oslo", 2, part_parameters=parts), by="mes")
        assert engine.status().queue == ()
    assert len(sink.events) == recorded


async def test_the_same_order_id_with_other_part_parameters_is_refused(config: LoadedConfig) -> None:
    engine = Engine(config, soft_cell(config.cell), FakeSink())
    async with running(engine):
        first = await engine.submit(
            OrderRequest("PO-1", "oslo", 1, part_parameters=[{"staple_pitch": 9.0}]), by="a"
        )
        again = await engine.submit(
            OrderRequest("PO-1", "oslo", 1, part_parameters=[{"staple_pitch": 9.0}]), by="b"
        )
        with pytest.raises(JobError, match="different content"):
            await engine.submit(
                OrderRequest("PO-1", "oslo", 1, part_parameters=[{"staple_pitch": 10.0}]), by="c"
            )

    assert again.job_id == first.job_id


# --- one job per order id, in the store ---------------------------------------------------------------


async def test_an_order_finished_before_a_restart_is_still_its_job_and_a_changed_one_is_refused(
    config: LoadedConfig, tmp_path: Path
) -> None:
    store = await Store.open(tmp_path / "cell.db")
    try:
        sink = Recorder(store, config.cell.identity, telemetry=False)
        first = Engine(config, soft_cell(config.cell), sink, orders=store)
        async with running(first):
            made = await first.submit(
                OrderRequest("PO-1", "oslo", 1, parameters={"staple_pitch": 9.0}), by="mes"
            )
            await reset_and_start(first)
            await first.wait_for(State.SUSPENDED, timeout=T)

        # A new run knows nothing of PO-1 in memory: only the store does.
        second = Engine(config, soft_cell(config.cell), sink, orders=store)
        async with running(second):
            again = await second.submit(
                OrderRequest("PO-1", "oslo", 1, parameters={"staple_pitch": 9.0}), by="mes"
            )
            with pytest.raises(JobError, match="already accepted as job"):
                await second.submit(
                    OrderRequest("PO-1", "oslo", 2, parameters={"staple_pitch": 9.0}), by="mes"
                )
            queue = second.status().queue
        journal = await store.journal(kinds={"job"})
    finally:
        await store.close()

    assert (again.job_id, again.status.value, again.good) == (made.job_id, "completed", 1)
    assert queue == ()
    assert [e.data["status"] for e in journal] == ["queued", "started", "completed"]


async def test_two_engines_on_one_store_never_make_two_jobs_of_one_order_id(
    config: LoadedConfig, tmp_path: Path
) -> None:
    """The store is the last word: an engine that does not know the order id in memory is refused by it."""
    store = await Store.open(tmp_path / "cell.db")
    try:
        sink = Recorder(store, config.cell.identity, telemetry=False)
        # No OrderBook for these engines: only the store's unique order id stands between them.
        one = Engine(config, soft_cell(config.cell), sink)
        two = Engine(config, soft_cell(config.cell), sink, orders=store)
        blind = Engine(config, soft_cell(config.cell), sink)
        async with running(one), running(two), running(blind):
            made = await one.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
            same = await two.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
            with pytest.raises(JobError, match="already accepted as job"):
                await blind.submit(OrderRequest("PO-1", "oslo", 3), by="mes")
            assert two.status().queue == () and blind.status().queue == ()
        queued = [e for e in await store.journal(kinds={"job"}) if e.data["status"] == "queued"]
    finally:
        await store.close()

    assert same.job_id == made.job_id
    assert [e.job_id for e in queued] == [made.job_id]
