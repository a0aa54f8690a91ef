"""The outbox's bound, durability per class and failures classified: real SQLite files, no mocks."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from cellctl.core.events import DeviceHealthChanged, JobEvent, JobStatus, OperatorAction, StateChanged
from cellctl.errors import OutboxFull, StoreCorrupt, StoreError, StoreFull, StoreIOError, StoreLocked
from cellctl.schema.cell import StoreConfig
from cellctl.store import OutboxMessage, Store, StorePolicy
from cellctl.store.db import classify

MAX_ROWS = 100


def health(ts: float = 1.0) -> DeviceHealthChanged:
    return DeviceHealthChanged(ts=ts, device="robot1", state="up")


def job(n: int) -> JobEvent:
    return JobEvent(
        ts=float(n),
        job=f"J{n}",
        order_id=f"O-{n}",
        variant="oslo",
        recipe_version=1,
        recipe_hash="abc",
        quantity=1,
        status=JobStatus.QUEUED,
        parameters={},
    )


def telemetry(stream: str, n: int) -> OutboxMessage:
    return OutboxMessage(topic=f"a/b/{stream}", stream=stream, body={"n": n})


def rows(path: Path) -> list[tuple[str, int]]:
    """(stream, body n) of every queued row, oldest first, read by a second connection."""
    with closing(sqlite3.connect(path)) as conn:
        return [
            (str(stream), int(n))
            for stream, n in conn.execute("SELECT stream, json_extract(body, '$.n') FROM outbox ORDER BY id")
        ]


def swap_in_garbage(path: Path) -> None:
    """Replace the database (and its write-ahead log) with a file that is not a database."""
    garbage = path.with_name("garbage")
    garbage.write_bytes(b"\x00not a database" * 1000)
    garbage.replace(path)
    for stale in ("-wal", "-shm"):
        Path(f"{path}{stale}").unlink(missing_ok=True)


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Store]:
    """A store whose outbox holds at most MAX_ROWS rows (state and health droppable)."""
    s = await Store.open(tmp_path / "c.db", policy=StorePolicy(max_rows=MAX_ROWS))
    yield s
    await s.close()


async def fill(store: Store, streams: Sequence[str], count: int, *, start: int = 0) -> None:
    for n in range(start, start + count):
        stream = streams[n % len(streams)]
        event = job(n) if stream == "job" else health(float(n))
        await store.append(event, [telemetry(stream, n)])


# --- bound --------------------------------------------------------------------------------------------------


async def test_at_the_row_bound_the_oldest_telemetry_is_dropped_and_counted_records_never(
    small: Store,
) -> None:
    await fill(small, ["job", "health", "state"], MAX_ROWS)  # 34 jobs, 33 health, 33 state rows
    assert small.stats().rows == MAX_ROWS and small.stats().dropped == {}

    await small.append(job(1000), [telemetry("job", 1000)])

    stats = small.stats()
    queued = rows(small.path)
    assert stats.rows == len(queued) <= MAX_ROWS
    # Every record is still there, the new one included; the dropped rows were the oldest telemetry.
    assert [n for s, n in queued if s == "job"] == [*range(0, MAX_ROWS, 3), 1000]
    dropped = sorted(set(range(MAX_ROWS)) - {n for _, n in queued} - set(range(0, MAX_ROWS, 3)))
    kept_telemetry = sorted(n for s, n in queued if s != "job")
    assert dropped and max(dropped) < min(kept_telemetry)  # oldest first
    assert stats.dropped == {
        "health": sum(1 for n in dropped if n % 3 == 1),
        "state": sum(1 for n in dropped if n % 3 == 2),
    }


async def test_the_byte_bound_drops_telemetry_until_the_new_rows_fit(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db", policy=StorePolicy(max_rows=10_000, max_bytes=70_000))
    try:
        big = OutboxMessage(topic="a/b/state", stream="state", body={"pad": "x" * 1000})
        for n in range(100):
            await store.append(health(float(n)), [big])
        assert store.stats().bytes <= 70_000
        assert store.stats().dropped["state"] > 0
        with closing(sqlite3.connect(store.path)) as conn:
            (total,) = conn.execute("SELECT SUM(LENGTH(topic) + LENGTH(body)) FROM outbox").fetchone()
        assert store.stats().bytes == total
    finally:
        await store.close()


async def test_a_full_outbox_of_records_refuses_the_fact_and_writes_nothing(small: Store) -> None:
    await fill(small, ["job"], MAX_ROWS)
    before = await small.last_journal_id()

    with pytest.raises(OutboxFull, match=r"c\.db.*outbox is full"):
        await small.append(job(1000), [telemetry("job", 1000)])
    with pytest.raises(OutboxFull):
        await small.append(health(), [telemetry("health", 1001)])  # no telemetry to drop either

    assert await small.last_journal_id() == before  # not even the journal entry
    assert await small.find_order("O-1000") is None
    assert small.stats().rows == MAX_ROWS and small.stats().dropped == {}
    # Once the broker acknowledged some, records flow again.
    batch = await small.outbox_batch(10)
    await small.ack([r.id for r in batch])
    await small.append(job(1000), [telemetry("job", 1000)])
    assert small.stats().rows == MAX_ROWS - 9


async def test_the_totals_stay_right_across_ack_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    policy = StorePolicy(max_rows=MAX_ROWS)
    store = await Store.open(path, policy=policy)
    try:
        await fill(store, ["job", "state"], MAX_ROWS + 20)
        batch = await store.outbox_batch(15)
        await store.ack([r.id for r in batch] + [999_999])  # an unknown id changes nothing
        before = store.stats()
    finally:
        await store.close()
    assert before.rows == len(rows(path)) == MAX_ROWS - 15
    reopened = await Store.open(path, policy=policy)
    try:
        assert reopened.stats() == before
        assert before.dropped["state"] >= 20
        await reopened.reopen()
        assert reopened.stats() == before
    finally:
        await reopened.close()


# --- durability per class -----------------------------------------------------------------------------------


async def test_records_commit_full_and_pure_telemetry_normal(small: Store) -> None:
    completed = StateChanged(ts=1.0, state="Held", state_no=6, previous="Holding", command=None, by="engine")
    commanded = StateChanged(ts=2.0, state="Holding", state_no=5, previous="Execute", command="hold", by="op")
    action = OperatorAction(ts=3.0, action="submit", by="op")
    cases = [
        (health(), [telemetry("health", 1)], "NORMAL"),
        (completed, [telemetry("state", 2)], "NORMAL"),
        (commanded, [telemetry("state", 3)], "FULL"),
        (action, [], "FULL"),  # journal only, but a person's action
        (job(4), [telemetry("job", 4)], "FULL"),
        (health(), [telemetry("alarm", 5)], "FULL"),  # a record row in the transaction
    ]
    for event, messages, mode in cases:
        await small.append(event, messages)
        assert (await small.settings())["synchronous"] == mode, event.kind


def test_the_older_synchronous_key_sets_both_classes_and_durability_wins() -> None:
    assert StoreConfig().synchronous_for() == ("FULL", "NORMAL")
    assert StoreConfig(synchronous="NORMAL").synchronous_for() == ("NORMAL", "NORMAL")
    both = StoreConfig.model_validate({"synchronous": "NORMAL", "durability": {"records": "EXTRA"}})
    assert both.synchronous_for() == ("EXTRA", "NORMAL")


def test_a_stream_class_can_be_overridden_and_an_unknown_stream_is_named() -> None:
    config = StoreConfig.model_validate({"streams": {"health": "records", "oee": "telemetry"}})
    policy = StorePolicy.from_config(config)
    assert policy.telemetry_streams == {"state", "oee"}
    with pytest.raises(ValueError, match="unknown stream 'helth'"):
        StoreConfig.model_validate({"streams": {"helth": "records"}})


# --- failures classified ------------------------------------------------------------------------------------


async def test_a_file_that_is_not_a_database_is_refused_as_corrupt_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notadb.db"
    path.write_bytes(b"this is not a database file at all " * 200)
    with pytest.raises(StoreCorrupt, match=r"notadb\.db.*file is not a database.*restore .* from a backup"):
        await Store.open(path)


async def test_a_full_disk_is_classified_and_nothing_is_half_written(small: Store) -> None:
    await small.set_page_limit(1)  # no page more than the file has now
    with pytest.raises(StoreFull, match=r"c\.db.*disk is full.*free disk space"):
        for n in range(500):
            await small.append(job(n), [telemetry("job", n)])
    with closing(sqlite3.connect(small.path)) as conn:
        orphans = conn.execute(
            "SELECT COUNT(*) FROM journal j "
            "WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.journal_id = j.id)"
        ).fetchone()[0]
        (journaled,) = conn.execute("SELECT COUNT(*) FROM journal").fetchone()
    assert orphans == 0 and small.stats().rows == journaled
    await small.set_page_limit(1_000_000)
    await small.append(job(1000), [telemetry("job", 1000)])


async def test_a_lock_held_by_another_connection_is_classified_as_locked(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db", policy=StorePolicy(busy_timeout_ms=50))
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreLocked, match=r"c\.db.*database is locked.*other process"):
            await store.append(job(1), [telemetry("job", 1)])
        other.execute("ROLLBACK")
        await store.append(job(1), [telemetry("job", 1)])
    finally:
        other.close()
        await store.close()


async def test_a_corrupt_file_is_reopened_on_the_next_call_once_it_is_restored(tmp_path: Path) -> None:
    path, backup = tmp_path / "c.db", tmp_path / "backup.db"
    seed = await Store.open(path)
    await seed.append(job(1), [telemetry("job", 1)])
    await seed.close()
    shutil.copy(path, backup)
    store = await Store.open(path)
    try:
        await store.append(job(2), [telemetry("job", 2)])
        # The file is replaced by one that is not a database (as a broken disk or a bad copy leaves it).
        swap_in_garbage(path)
        with pytest.raises(StoreCorrupt, match="file is not a database"):
            await store.reopen()
        with pytest.raises(StoreCorrupt):  # every call tries the file again
            await store.append(job(3), [telemetry("job", 3)])

        shutil.copy(backup, path)  # restored from the backup
        await store.append(job(4), [telemetry("job", 4)])
        assert [e.job_id for e in await store.journal()] == ["J1", "J4"]
        assert store.stats().rows == 2
    finally:
        await store.close()


def test_sqlite_messages_without_a_code_are_classified_by_their_text() -> None:
    path = Path("/var/cellctl.db")
    io = classify(sqlite3.OperationalError("disk I/O error"), path, "append failed")
    assert isinstance(io, StoreIOError) and str(io).startswith("/var/cellctl.db: append failed: disk I/O")
    assert isinstance(
        classify(sqlite3.DatabaseError("database disk image is malformed"), path, "x"), StoreCorrupt
    )
    plain = classify(sqlite3.OperationalError("no such table: x"), path, "read")
    assert type(plain) is StoreError and plain.cause == "error"
