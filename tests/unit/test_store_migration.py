"""Store files of older schema versions, made by old commits (tests/fixtures/stores), open with today's code:
migrated in one transaction, every record kept, and the store usable; a newer file is refused untouched."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.events import StateChanged
from cellctl.engine.recovery import read_recovery
from cellctl.errors import StoreError, StoreTooNew
from cellctl.store import SCHEMA_VERSION, OutboxMessage, Store
from cellctl.store import db as store_db
from cellctl.store.history import to_event

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stores"
OLD_FILES = {1: FIXTURES / "store-v1.db", 5: FIXTURES / "store-v5.db"}
JOURNAL_KINDS = {
    "alarm": 2,
    "changeover": 2,
    "changeover_kpi": 1,
    "device_health": 3,
    "first_article": 2,
    "job": 8,
    "operator_action": 4,
    "part": 4,
    "state_changed": 6,
    "step": 6,
}
WAITING_ROWS = 30  # outbox rows not yet delivered when the old code closed the file


def copy_of(version: int, tmp_path: Path) -> Path:
    path = tmp_path / f"cell-v{version}.db"
    shutil.copyfile(OLD_FILES[version], path)
    return path


def raw(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows read with plain sqlite3 (no cellctl code), the connection closed after."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def tables(path: Path) -> set[str]:
    return {r[0] for r in raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.mark.parametrize("version", sorted(OLD_FILES))
def test_the_fixture_file_is_of_its_old_version_and_holds_the_varied_facts(version: int) -> None:
    path = OLD_FILES[version]

    assert raw(path, "SELECT version FROM schema_version") == [(version,)]
    assert dict(raw(path, "SELECT kind, count(*) FROM journal GROUP BY kind")) == JOURNAL_KINDS
    assert raw(path, "SELECT count(*) FROM outbox") == [(WAITING_ROWS,)]
    assert path.stat().st_size < 200 * 1024


@pytest.mark.parametrize("version", sorted(OLD_FILES))
async def test_an_old_store_migrates_to_the_current_version_keeping_every_journal_row(
    version: int, tmp_path: Path
) -> None:
    path = copy_of(version, tmp_path)
    before = raw(path, "SELECT id, ts, kind, stream, job_id, data FROM journal ORDER BY id")

    store = await Store.open(path)
    try:
        settings = await store.settings()
        entries = await store.journal(limit=10_000)
    finally:
        await store.close()

    assert settings["schema_version"] == SCHEMA_VERSION
    assert [(e.id, e.ts, e.kind, e.stream, e.job_id, e.data) for e in entries] == [
        (i, ts, kind, stream, job_id, json.loads(data)) for i, ts, kind, stream, job_id, data in before
    ]
    assert len(entries) == sum(JOURNAL_KINDS.values())


@pytest.mark.parametrize("version", sorted(OLD_FILES))
async def test_an_old_store_keeps_its_waiting_outbox_rows_with_msg_id_and_seq_and_the_sequences(
    version: int, tmp_path: Path
) -> None:
    path = copy_of(version, tmp_path)
    before = raw(
        path, "SELECT id, topic, stream, seq, msg_id, event_ts, body, retain, qos FROM outbox ORDER BY id"
    )
    sequences_before = dict(raw(path, "SELECT stream, seq FROM streams"))

    store = await Store.open(path)
    try:
        rows = await store.outbox_batch(10_000)
        sequences = await store.sequences()
        stats = store.stats()
    finally:
        await store.close()

    assert [
        (r.id, r.topic, r.stream, r.seq, r.msg_id, r.event_ts, r.body, int(r.retain), r.qos) for r in rows
    ] == before
    assert len(rows) == WAITING_ROWS
    assert sequences == sequences_before
    assert stats.rows == WAITING_ROWS  # the outbox bound counts the rows the old code left


async def test_a_version_1_store_gains_its_order_ids_from_the_journal_first_job_winning(
    tmp_path: Path,
) -> None:
    path = copy_of(1, tmp_path)

    store = await Store.open(path)
    try:
        found = {order: await store.find_order(order) for order in ("PO-1001", "PO-1002", "PO-1003")}
    finally:
        await store.close()

    # Version 1 let two jobs take PO-1003 (J3, then J4, cancelled): the first one keeps it.
    assert {order: r.job_id if r else None for order, r in found.items()} == {
        "PO-1001": "J1",
        "PO-1002": "J2",
        "PO-1003": "J3",
    }


@pytest.mark.parametrize("version", sorted(OLD_FILES))
async def test_todays_readers_understand_the_old_journal(version: int, tmp_path: Path) -> None:
    path = copy_of(version, tmp_path)

    store = await Store.open(path)
    try:
        entries = await store.journal(limit=10_000)
        recovery = await read_recovery(store)
    finally:
        await store.close()

    events = [to_event(e) for e in entries]  # raises StoreError naming a row that no longer fits its kind
    assert sum(isinstance(e, StateChanged) for e in events) == JOURNAL_KINDS["state_changed"]
    # J1 started and J3 queued were never finished; J2 completed, J4 cancelled.
    assert sorted(j.job_id for j in recovery.jobs) == ["J1", "J3"]


@pytest.mark.parametrize("version", sorted(OLD_FILES))
async def test_a_migrated_store_appends_publishes_and_acknowledges(version: int, tmp_path: Path) -> None:
    path = copy_of(version, tmp_path)
    last_journal = raw(path, "SELECT max(id) FROM journal")[0][0]
    last_outbox = raw(path, "SELECT max(id) FROM outbox")[0][0]
    last_state_seq = dict(raw(path, "SELECT stream, seq FROM streams"))["state"]
    event = StateChanged(ts=2e9, state="Resetting", state_no=1, previous="Stopped", command="reset", by="op")

    store = await Store.open(path)
    try:
        journal_id = await store.append(event, [OutboxMessage("acme/state", "state", {"state": "Resetting"})])
        lanes = await store.outbox_by_stream({}, 10_000, streams=["state"])
        waiting = await store.outbox_batch(10_000)
        await store.ack([r.id for r in waiting])
        left = await store.outbox_count()
    finally:
        await store.close()

    new = lanes["state"][-1]
    assert journal_id == last_journal + 1
    assert (new.id, new.seq) == (last_outbox + 1, last_state_seq + 1)
    assert len(waiting) == WAITING_ROWS + 1 and left == 0


@pytest.mark.parametrize("version", sorted(OLD_FILES))
async def test_the_outbox_loses_its_msg_id_and_journal_indexes_and_its_ids_keep_growing_when_empty(
    version: int, tmp_path: Path
) -> None:
    path = copy_of(version, tmp_path)
    last_outbox = raw(path, "SELECT max(id) FROM outbox")[0][0]
    with sqlite3.connect(path) as conn:  # every row delivered: only AUTOINCREMENT remembers the last id
        conn.execute("DELETE FROM outbox")
    event = StateChanged(ts=2e9, state="Resetting", state_no=1, previous="Stopped", command="reset", by="op")

    store = await Store.open(path)
    try:
        await store.append(event, [OutboxMessage("acme/state", "state", {"state": "Resetting"})])
        (new,) = await store.outbox_batch(10)
    finally:
        await store.close()

    assert new.id == last_outbox + 1
    assert [r[1] for r in raw(path, "PRAGMA index_list(outbox)")] == ["outbox_by_stream"]
    assert raw(path, "SELECT count(*) FROM sqlite_master WHERE name = 'outbox_v7'") == [(0,)]


async def test_a_store_of_a_newer_version_is_refused_naming_both_versions_and_left_byte_for_byte(
    tmp_path: Path,
) -> None:
    path = copy_of(5, tmp_path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 3,))
    conn.execute("PRAGMA journal_mode = DELETE")  # one file: the bytes compared are all of it
    conn.close()
    before = path.read_bytes()

    with pytest.raises(StoreTooNew) as info:
        await Store.open(path)

    message = str(info.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 3}; this one knows up to {SCHEMA_VERSION}" in message
    assert "install a cellctl that knows this schema version" in message and "restore a backup" in message
    assert path.read_bytes() == before
    assert names(tmp_path) == [path.name]  # no -wal or -shm left beside it


async def test_a_failing_migration_leaves_the_file_at_its_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = copy_of(1, tmp_path)
    tables_before = tables(path)
    journal_before = raw(path, "SELECT * FROM journal ORDER BY id")
    broken = (*store_db.MIGRATIONS[SCHEMA_VERSION], "CREATE TABLE journal (clash INTEGER)")
    monkeypatch.setitem(store_db.MIGRATIONS, SCHEMA_VERSION, broken)

    with pytest.raises(
        StoreError, match=rf"migrating schema version {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}"
    ):
        await Store.open(path)

    # Versions 2 to SCHEMA_VERSION - 1 ran before the broken one: none of them is kept.
    assert raw(path, "SELECT version FROM schema_version") == [(1,)]
    assert tables(path) == tables_before
    assert raw(path, "SELECT * FROM journal ORDER BY id") == journal_before

    monkeypatch.undo()
    store = await Store.open(path)  # the fixed code migrates the untouched file
    await store.close()
    assert raw(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


async def test_a_database_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE journal (x)")
    conn.close()

    with pytest.raises(StoreError, match=f"{path}: a SQLite database but not a cellctl store"):
        await Store.open(path)
