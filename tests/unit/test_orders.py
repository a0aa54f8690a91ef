"""Orders: per-part parameters (batch size one) and one job per order id, enforced by the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellctl.core.events import Event, JobEvent, JobStatus, PartProduced
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.recovery import RecoveredJob, Recovery
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


async def test_a_job_not_restored_after_an_unclean_stop_frees_its_order_id(
    config: LoadedConfig, tmp_path: Path
) -> None:
    store = await Store.open(tmp_path / "cell.db")
    try:
        sink = Recorder(store, config.cell.identity, telemetry=False)
        first = Engine(config, soft_cell(config.cell), sink, orders=store)
        async with running(first):
            old = await first.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        # The journal says PO-1 is queued; its recipe changed since (another hash): it cannot be restored.
        saved = RecoveredJob(
            job_id=old.job_id,
            order_id="PO-1",
            variant="oslo",
            recipe_version=old.recipe_version,
            recipe_hash="changed-since",
            quantity=1,
            status=JobStatus.QUEUED,
            submitted_at=old.submitted_at,
            submitted_by="mes",
            seq=1,
        )
        recovery = Recovery(unclean=True, last_state="Execute", changeover=None, jobs=(saved,))
        refused = RefusalWatch(sink)
        second = Engine(config, soft_cell(config.cell), refused, orders=store, recovery=recovery)
        async with running(second):
            async with asyncio.timeout(T):
                await refused.aborted.wait()  # reported at power-up, right after Stopped
            again = await second.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
    finally:
        await store.close()

    assert again.job_id != old.job_id
    assert again.status is JobStatus.QUEUED


class RefusalWatch:
    """Passes events to the store's recorder and says when a job was journaled ABORTED."""

    def __init__(self, inner: Recorder) -> None:
        self._inner = inner
        self.aborted = asyncio.Event()

    async def record(self, event: Event) -> int:
        journal_id = await self._inner.record(event)
        if isinstance(event, JobEvent) and event.status is JobStatus.ABORTED:
            self.aborted.set()
        return journal_id
