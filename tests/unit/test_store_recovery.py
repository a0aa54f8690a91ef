"""A real SQLite store failing under a running cell: the cell holds with the `store` alarm naming the cause,
the store is retried by itself, the alarm clears while the cell stays Held, and Unhold finishes the job with
no fact lost or written twice."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest

from cellctl.cli.ctl import format_status
from cellctl.core.events import AlarmAction, AlarmEvent, DeviceHealthChanged, Event, PartProduced, Severity
from cellctl.core.packml import State
from cellctl.engine import Engine, OrderRequest
from cellctl.engine.engine import STORE_ALARM
from cellctl.errors import StoreCorrupt
from cellctl.runtime.app import TELEMETRY_DROPPED_ALARM, watch_outbox
from cellctl.schema.cell import StoreRetry
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.store import OutboxMessage, Store, StorePolicy
from cellctl.telemetry.recorder import Recorder
from tests.softcell import soft_cell
from tests.unit.test_engine import T, reset_and_start, running

QUANTITY = 30
"""Parts of the job: enough that the failure set after the third part hits before the job ends."""


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    loaded = load_config(config_dir)
    # Retried every 20 ms up to 100 ms: recovery is seen quickly, the loop stays bounded.
    store = loaded.cell.store.model_copy(update={"retry": StoreRetry(interval_s=0.02, max_interval_s=0.1)})
    return dataclasses.replace(loaded, cell=loaded.cell.model_copy(update={"store": store}))


@dataclasses.dataclass
class Run:
    engine: Engine
    store: Store
    third_part: asyncio.Event
    store_cleared: asyncio.Event


@asynccontextmanager
async def cell_on_a_real_store(
    config: LoadedConfig,
    path: Path,
    *,
    busy_timeout_ms: int = 5000,
    on_part: Callable[[int], None] | None = None,
) -> AsyncIterator[Run]:
    policy = dataclasses.replace(StorePolicy.from_config(config.cell.store), busy_timeout_ms=busy_timeout_ms)
    store = await Store.open(path, policy=policy)
    engine = Engine(
        config,
        soft_cell(config.cell),
        Recorder(store, config.cell.identity),
        store_stats=lambda: store.stats().to_dict(),
    )
    run = Run(engine, store, asyncio.Event(), asyncio.Event())

    def listen(event: Event) -> None:
        if isinstance(event, PartProduced):
            if on_part is not None:
                on_part(event.index)
            if event.index == 3:
                run.third_part.set()
        if (
            isinstance(event, AlarmEvent)
            and event.alarm == STORE_ALARM
            and event.action is AlarmAction.CLEARED
        ):
            run.store_cleared.set()

    engine.add_listener(listen)
    try:
        async with running(engine):
            yield run
    finally:
        await store.close()


def assert_consistent(path: Path) -> None:
    """Nothing half-written: every outbox row has its journal entry and every journaled record its rows."""
    with closing(sqlite3.connect(path)) as conn:
        (orphan_rows,) = conn.execute(
            "SELECT COUNT(*) FROM outbox o "
            "WHERE NOT EXISTS (SELECT 1 FROM journal j WHERE j.id = o.journal_id)"
        ).fetchone()
        (bare_entries,) = conn.execute(
            "SELECT COUNT(*) FROM journal j WHERE kind IN ('part', 'job', 'alarm') "
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.journal_id = j.id)"
        ).fetchone()
    assert (orphan_rows, bare_entries) == (0, 0)


async def finish_after_recovery(run: Run) -> None:
    """The alarm clears by itself, the cell stays Held, a person's Unhold finishes the job."""
    async with asyncio.timeout(T):
        await run.store_cleared.wait()
    status = run.engine.status()
    assert status.state == "Held" and not run.engine.alarms.is_active(STORE_ALARM)
    assert status.store is not None and status.store["failing"] is None
    await run.engine.command("unhold", by="op")
    await run.engine.wait_for(State.SUSPENDED, timeout=T)


async def assert_every_part_once(store: Store) -> None:
    journal = await store.journal(limit=100_000)
    assert [e.data["index"] for e in journal if e.kind == "part"] == list(range(1, QUANTITY + 1))
    jobs = [(e.data["status"], e.data["order_id"]) for e in journal if e.kind == "job"]
    assert jobs == [("queued", "PO-1"), ("started", "PO-1"), ("completed", "PO-1")]
    done = next(e for e in journal if e.kind == "job" and e.data["status"] == "completed")
    assert done.data["produced"] == QUANTITY
    alarms = [e.data["action"] for e in journal if e.kind == "alarm" and e.data["alarm"] == STORE_ALARM]
    assert alarms[:2] == ["raised", "cleared"]


def swap_in_garbage(path: Path) -> None:
    """Replace the database (and its write-ahead log) with a file that is not a database."""
    garbage = path.with_name("garbage")
    garbage.write_bytes(b"\x00not a database" * 1000)
    garbage.replace(path)
    for stale in ("-wal", "-shm"):
        Path(f"{path}{stale}").unlink(missing_ok=True)


async def test_a_full_disk_holds_the_cell_and_it_recovers_without_a_restart(
    config: LoadedConfig, tmp_path: Path
) -> None:
    path = tmp_path / "cellctl.db"
    async with cell_on_a_real_store(config, path) as run:
        await run.engine.submit(OrderRequest("PO-1", "oslo", QUANTITY), by="mes")
        await reset_and_start(run.engine)
        async with asyncio.timeout(T):
            await run.third_part.wait()
        await run.store.set_page_limit(1)  # not a page more than the file has: the next growth fails

        await run.engine.wait_for(State.HELD, timeout=T)
        status = run.engine.status()
        alarm = run.engine.alarms.get(STORE_ALARM)
        assert alarm is not None and alarm.active
        assert "disk_full" in alarm.message and "database or disk is full" in alarm.message
        assert str(path) in alarm.message and "Unhold" in alarm.message
        assert status.store is not None and status.store["failing"] == "disk_full"
        assert "FAILING: disk_full" in format_status(status.to_dict())  # `cellctl ctl status` shows it
        assert status.counters.parts < QUANTITY
        assert_consistent(path)

        await run.store.set_page_limit(1_000_000_000)  # space is back
        await finish_after_recovery(run)

    reopened = await Store.open(path)
    try:
        await assert_every_part_once(reopened)
        assert_consistent(path)
    finally:
        await reopened.close()


async def test_a_lock_held_elsewhere_holds_the_cell_and_releasing_it_recovers(
    config: LoadedConfig, tmp_path: Path
) -> None:
    path = tmp_path / "cellctl.db"
    other: list[sqlite3.Connection] = []

    def lock_after_third(index: int) -> None:
        if index == 3:
            other.append(sqlite3.connect(path, isolation_level=None, timeout=T))
            other[0].execute("BEGIN EXCLUSIVE")  # another process holds the write lock

    try:
        async with cell_on_a_real_store(config, path, busy_timeout_ms=50, on_part=lock_after_third) as run:
            await run.engine.submit(OrderRequest("PO-1", "oslo", QUANTITY), by="mes")
            await reset_and_start(run.engine)
            await run.engine.wait_for(State.HELD, timeout=T)
            alarm = run.engine.alarms.get(STORE_ALARM)
            assert alarm is not None and alarm.active
            assert "locked" in alarm.message and "database is locked" in alarm.message
            assert run.engine.status().counters.parts == 3

            other[0].execute("ROLLBACK")  # the other process lets go
            await finish_after_recovery(run)
            await assert_every_part_once(run.store)
    finally:
        for conn in other:
            conn.close()
    assert_consistent(path)


async def test_a_corrupt_file_holds_the_cell_and_the_retry_reopens_it_once_restored(
    config: LoadedConfig, tmp_path: Path
) -> None:
    path, backup = tmp_path / "cellctl.db", tmp_path / "backup.db"

    def back_up_after_third(index: int) -> None:
        if index == 3:
            with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(backup)) as dest:
                source.backup(dest)

    async with cell_on_a_real_store(config, path, on_part=back_up_after_third) as run:
        await run.engine.submit(OrderRequest("PO-1", "oslo", QUANTITY), by="mes")
        await reset_and_start(run.engine)
        async with asyncio.timeout(T):
            await run.third_part.wait()
        # The file is replaced by one that is not a database; the store's connection notices on reopening.
        swap_in_garbage(path)
        with pytest.raises(StoreCorrupt):
            await run.store.reopen()

        await run.engine.wait_for(State.HELD, timeout=T)
        alarm = run.engine.alarms.get(STORE_ALARM)
        assert alarm is not None and alarm.active
        assert "corrupt" in alarm.message and "file is not a database" in alarm.message
        assert "restore" in alarm.message

        shutil.copy(backup, path)  # restored from the backup: the retry opens the file anew
        await finish_after_recovery(run)

    restored = await Store.open(path)
    try:
        journal = await restored.journal(limit=100_000)
        # The backup's parts, then the ones made after the Unhold: what the file lost is the backup's gap.
        indexes = [e.data["index"] for e in journal if e.kind == "part"]
        assert indexes[:3] == [1, 2, 3] and indexes[-1] == QUANTITY
        assert indexes == sorted(set(indexes))
    finally:
        await restored.close()


async def test_dropped_telemetry_raises_one_warning_with_the_count_and_clears_once_there_is_room(
    config: LoadedConfig, tmp_path: Path
) -> None:
    store = await Store.open(tmp_path / "cellctl.db", policy=StorePolicy(max_rows=100))
    engine = Engine(config, soft_cell(config.cell), Recorder(store, config.cell.identity))
    seen: list[AlarmEvent] = []
    raised, cleared = asyncio.Event(), asyncio.Event()

    def listen(event: Event) -> None:
        if isinstance(event, AlarmEvent) and event.alarm == TELEMETRY_DROPPED_ALARM:
            seen.append(event)
            (raised if event.action is AlarmAction.RAISED else cleared).set()

    engine.add_listener(listen)
    state = OutboxMessage(topic="a/b/state", stream="state", body={"n": 0})
    try:
        async with running(engine), asyncio.TaskGroup() as group:
            watch = group.create_task(watch_outbox(store, engine, period_s=0.01), name="test:outbox")
            for n in range(150):
                await store.append(DeviceHealthChanged(ts=float(n), device="robot1", state="up"), [state])
            async with asyncio.timeout(T):
                await raised.wait()
            alarm = engine.alarms.get(TELEMETRY_DROPPED_ALARM)
            assert alarm is not None and alarm.active and alarm.severity is Severity.WARNING
            assert "telemetry message(s) dropped" in alarm.message and "state " in alarm.message
            assert store.stats().dropped["state"] >= 50

            batch = await store.outbox_batch(1000)
            await store.ack([r.id for r in batch])  # the broker took them: room again
            async with asyncio.timeout(T):
                await cleared.wait()
            watch.cancel()
    finally:
        await store.close()
    assert [e.action for e in seen] == [AlarmAction.RAISED, AlarmAction.CLEARED]  # once, not per drop
