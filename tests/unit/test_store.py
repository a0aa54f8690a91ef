"""The store: journal and outbox written together, sequences per stream, acks, reopening, schema guard."""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.core.events import (
    AlarmEvent,
    DeviceHealthChanged,
    JobEvent,
    JobStatus,
    Measurement,
    PartProduced,
    Severity,
    StateChanged,
    Verdict,
)
from cellctl.errors import StoreError
from cellctl.store import SCHEMA_VERSION, OutboxMessage, Store


def state(ts: float = 1.0, to: str = "Idle") -> StateChanged:
    return StateChanged(ts=ts, state=to, state_no=4, previous="Stopped", command="reset", by="op1")


def job(ts: float = 2.0, job_id: str = "J1", status: JobStatus = JobStatus.STARTED) -> JobEvent:
    return JobEvent(
        ts=ts,
        job=job_id,
        order_id="O-1",
        variant="oslo",
        recipe_version=3,
        recipe_hash="abc",
        quantity=10,
        status=status,
        parameters={"pitch": 12.5},
    )


def msg(stream: str = "state", topic: str = "a/b/state", n: int = 0) -> OutboxMessage:
    return OutboxMessage(topic=topic, stream=stream, body={"n": n})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "var" / "cellctl.db")
    yield s
    await s.close()


# --- opening -------------------------------------------------------------------------------------------


async def test_open_creates_missing_folders_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "cellctl.db"

    s = await Store.open(path)
    await s.close()

    assert path.is_file()


async def test_open_sets_wal_full_sync_foreign_keys_and_busy_timeout(store: Store) -> None:
    settings = await store.settings()

    assert settings == {
        "journal_mode": "wal",
        "synchronous": "FULL",
        "foreign_keys": 1,
        "busy_timeout": 5000,
        "schema_version": SCHEMA_VERSION,
    }


async def test_open_takes_synchronous_from_config(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "c.db", synchronous="NORMAL")
    try:
        assert (await s.settings())["synchronous"] == "NORMAL"
    finally:
        await s.close()


async def test_open_refuses_an_unknown_synchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="synchronous must be one of"):
        await Store.open(tmp_path / "c.db", synchronous="OFF")


async def test_open_refuses_a_file_written_by_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    s = await Store.open(path)
    await s.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()

    newer, known = SCHEMA_VERSION + 1, SCHEMA_VERSION
    with pytest.raises(
        StoreError, match=rf"newer cellctl \(schema version {newer}; this one knows up to {known}\)"
    ):
        await Store.open(path)


async def test_open_refuses_a_file_that_is_not_a_database_naming_the_cause(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(StoreError, match="cannot open") as info:
        await Store.open(path)

    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


async def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "c.db")
    await s.close()

    with pytest.raises(StoreError, match="closed"):
        await s.append(state(), [])


# --- append --------------------------------------------------------------------------------------------


async def test_append_journals_the_event_fields_as_json(store: Store) -> None:
    journal_id = await store.append(job(ts=12.5), [])

    [entry] = await store.journal()
    assert entry.id == journal_id
    assert (entry.ts, entry.kind, entry.stream, entry.job_id) == (12.5, "job", "job", "J1")
    assert entry.data["status"] == "started"  # a StrEnum is stored as its value
    assert entry.data["parameters"] == {"pitch": 12.5}
    assert "ts" not in entry.data


async def test_append_stores_tuples_as_lists_and_non_finite_numbers_as_null(store: Store) -> None:
    part = PartProduced(
        ts=3.0,
        part="P1",
        job="J1",
        variant="oslo",
        index=1,
        verdict=Verdict.INVALID,
        measurements=(
            Measurement(
                characteristic="width_mm",
                value=math.nan,
                quality="bad",
                units="mm",
                nominal=420,
                lsl=419,
                usl=421,
                verdict=Verdict.INVALID,
            ),
        ),
    )

    await store.append(part, [])

    [entry] = await store.journal()
    assert entry.data["measurements"][0]["value"] is None
    assert entry.data["measurements"][0]["verdict"] == "invalid"


async def test_append_queues_each_message_with_a_uuid_and_the_event_time(store: Store) -> None:
    await store.append(state(ts=7.0), [msg(n=1), msg(stream="health", topic="a/b/health/x", n=2)])

    rows = await store.outbox_batch(10)
    assert [(r.topic, r.stream, r.data(), r.event_ts) for r in rows] == [
        ("a/b/state", "state", {"n": 1}, 7.0),
        ("a/b/health/x", "health", {"n": 2}, 7.0),
    ]
    assert all(uuid.UUID(r.msg_id) for r in rows)
    assert len({r.msg_id for r in rows}) == 2


async def test_append_keeps_retain_and_qos_of_each_message(store: Store) -> None:
    await store.append(state(), [OutboxMessage("t/s", "state", {}, retain=True, qos=0)])

    [row] = await store.outbox_batch(1)
    assert (row.retain, row.qos) == (True, 0)


async def test_sequences_are_contiguous_per_stream_across_events(store: Store) -> None:
    for i in range(5):
        await store.append(
            state(ts=i), [msg("state", n=i), msg("part", "a/b/part", n=i), msg("part", "a/b/part")]
        )

    rows = await store.outbox_batch(100)
    assert [r.seq for r in rows if r.stream == "state"] == [1, 2, 3, 4, 5]
    assert [r.seq for r in rows if r.stream == "part"] == list(range(1, 11))
    assert await store.sequences() == {"state": 5, "part": 10}


async def test_a_failing_outbox_insert_leaves_no_journal_row_and_no_sequence_used(
    store: Store, tmp_path: Path
) -> None:
    await store.append(state(), [msg()])
    # A second connection makes the next outbox insert fail inside the store's transaction.
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    conn.close()

    with pytest.raises(StoreError, match="disk on fire") as info:
        await store.append(state(ts=2.0), [msg()])

    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert [e.ts for e in await store.journal()] == [1.0]
    assert await store.outbox_count() == 1
    assert await store.sequences() == {"state": 1}


async def test_an_event_whose_data_is_not_json_is_refused_and_nothing_is_written(store: Store) -> None:
    bad = AlarmEvent(ts=1.0, alarm="a", severity=Severity.INFO, active=True, message="m", source="s")

    with pytest.raises(StoreError, match="not JSON data"):
        await store.append(bad, [OutboxMessage("t/a", "alarm", {"x": object()})])

    assert await store.journal() == []
    assert await store.outbox_count() == 0


# --- outbox --------------------------------------------------------------------------------------------


async def test_outbox_batch_returns_rows_in_id_order_after_a_cursor(store: Store) -> None:
    for i in range(6):
        await store.append(state(ts=i), [msg(n=i)])
    first = await store.outbox_batch(3)

    rest = await store.outbox_batch(10, after_id=first[-1].id)

    assert [r.data()["n"] for r in first] == [0, 1, 2]
    assert [r.data()["n"] for r in rest] == [3, 4, 5]


async def test_ack_deletes_exactly_the_given_rows(store: Store) -> None:
    for i in range(5):
        await store.append(state(ts=i), [msg(n=i)])
    rows = await store.outbox_batch(10)

    await store.ack([rows[0].id, rows[2].id, 999_999])

    assert [r.data()["n"] for r in await store.outbox_batch(10)] == [1, 3, 4]
    assert await store.outbox_count() == 3


async def test_outbox_ids_keep_growing_after_the_outbox_empties(store: Store) -> None:
    await store.append(state(), [msg(n=1)])
    [old] = await store.outbox_batch(1)
    await store.ack([old.id])

    await store.append(state(), [msg(n=2)])

    [new] = await store.outbox_batch(1)
    assert new.id > old.id


async def test_reopening_keeps_journal_outbox_and_sequences(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    s = await Store.open(path)
    await s.append(state(ts=1.0), [msg(n=1)])
    await s.close()

    s = await Store.open(path)
    try:
        await s.append(state(ts=2.0), [msg(n=2)])
        assert [e.ts for e in await s.journal()] == [1.0, 2.0]
        assert [(r.data()["n"], r.seq) for r in await s.outbox_batch(10)] == [(1, 1), (2, 2)]
    finally:
        await s.close()


# --- journal -------------------------------------------------------------------------------------------


async def test_journal_filters_by_kind(store: Store) -> None:
    await store.append(state(ts=1), [])
    await store.append(job(ts=2), [])
    await store.append(DeviceHealthChanged(ts=3, device="robot1", state="down"), [])
    await store.append(job(ts=4, status=JobStatus.COMPLETED), [])

    entries = await store.journal(kinds={"job", "device_health"})

    assert [(e.kind, e.ts) for e in entries] == [("job", 2), ("device_health", 3), ("job", 4)]


async def test_journal_reads_after_an_id_and_at_most_a_limit(store: Store) -> None:
    ids = [await store.append(state(ts=i), []) for i in range(10)]

    entries = await store.journal(after_id=ids[3], limit=4)

    assert [e.id for e in entries] == ids[4:8]


async def test_journal_filters_by_job(store: Store) -> None:
    await store.append(job(ts=1, job_id="J1"), [])
    await store.append(job(ts=2, job_id="J2"), [])
    await store.append(state(ts=3), [])

    entries = await store.journal(job_id="J2")

    assert [(e.job_id, e.ts) for e in entries] == [("J2", 2)]


async def test_journal_with_no_kinds_asked_returns_nothing(store: Store) -> None:
    await store.append(state(), [])

    assert await store.journal(kinds=[]) == []


async def test_last_journal_id_is_zero_when_empty_then_the_newest(store: Store) -> None:
    assert await store.last_journal_id() == 0

    newest = await store.append(state(), [])

    assert await store.last_journal_id() == newest
