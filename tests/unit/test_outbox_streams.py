"""The outbox read per stream (the publisher's replay lanes): cursors, limits, and an indexed query."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.core.events import DeviceHealthChanged
from cellctl.store import OutboxMessage, Store, outbox
from cellctl.store import db as store_db
from cellctl.store.outbox import STREAM_ROWS_SQL, select_streams


def msg(stream: str, n: int) -> OutboxMessage:
    return OutboxMessage(topic=f"a/{stream}", stream=stream, body={"n": n})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "cellctl.db", synchronous="NORMAL")
    # part 0, quality 0, part 1, quality 1, ... part 4, quality 4, then state 0
    await s.append(
        DeviceHealthChanged(ts=1.0, device="d", state="up"),
        [m for n in range(5) for m in (msg("part", n), msg("quality", n))] + [msg("state", 0)],
    )
    yield s
    await s.close()


async def test_each_stream_is_read_in_id_order_from_its_own_cursor(store: Store) -> None:
    first = await store.outbox_by_stream({}, 2)
    assert {s: [r.data()["n"] for r in rows] for s, rows in first.items()} == {
        "part": [0, 1],
        "quality": [0, 1],
        "state": [0],
    }
    after = {s: rows[-1].id for s, rows in first.items()}
    more = await store.outbox_by_stream(after, 10, streams=["part", "state"])
    assert {s: [(r.seq, r.data()["n"]) for r in rows] for s, rows in more.items()} == {
        "part": [(3, 2), (4, 3), (5, 4)]
    }


async def test_streams_skipped_or_without_rows_past_their_cursor_are_left_out(store: Store) -> None:
    rows = await store.outbox_by_stream({}, 10, skip=["quality"])
    assert set(rows) == {"part", "state"}
    await store.ack([r.id for r in rows["state"]])
    assert set(await store.outbox_by_stream({}, 10)) == {"part", "quality"}


async def test_a_stream_is_read_through_the_stream_index_not_a_scan(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    try:
        plan = " ".join(
            str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {STREAM_ROWS_SQL}", ("part", 0, 10))
        )
        assert select_streams(conn, after={}, limit=1, streams=["part"])["part"][0].seq == 1
    finally:
        conn.close()
    assert "outbox_by_stream" in plan and "SCAN" not in plan and "TEMP B-TREE" not in plan, plan


def _outbox_conn() -> sqlite3.Connection:
    """An in-memory database with the outbox of the current schema (no journal: no foreign keys)."""
    conn = sqlite3.connect(":memory:")
    for version in sorted(store_db.MIGRATIONS):
        for statement in store_db.MIGRATIONS[version]:
            conn.execute(statement)
    return conn


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(st.characters(codec="utf-8"), max_size=20),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    )
)
@pytest.mark.parametrize("packed", [True, False], ids=["one-json-array", "row-by-row"])
def test_a_batch_read_gives_back_every_field_exactly(
    rows: list[tuple[float, str, bool]], packed: bool
) -> None:
    # As one JSON array (where this SQLite writes doubles exactly) and row by row (where it may not):
    # event_ts must come back as the same double (JSON numbers have 15 significant digits), and the body
    # (JSON text, escapes and all) as the same text.
    conn = _outbox_conn()
    try:
        stored = []
        for n, (ts, text, retain) in enumerate(rows, start=1):
            body = json.dumps({"text": text, "n": n}, ensure_ascii=n % 2 == 0)
            values = (n, f"a/{text}", "part", n, f"m{n}", ts, body, int(retain), 1)
            conn.execute(
                "INSERT INTO outbox (journal_id, topic, stream, seq, msg_id, event_ts, body, retain, qos) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            stored.append(values)
        with mock.patch.object(outbox, "_packed_exact", lambda: packed):
            (read,) = select_streams(conn, after={}, limit=len(rows), streams=["part"]).values()
    finally:
        conn.close()
    assert [(r.id, r.topic, r.seq, r.msg_id, r.body, r.retain, r.qos) for r in read] == [
        (n, topic, seq, msg_id, body, bool(retain), qos)
        for n, (_j, topic, _s, seq, msg_id, _ts, body, retain, qos) in enumerate(stored, start=1)
    ]
    # (SQLite itself stores -0.0 as 0.0: equal as numbers is all a REAL column keeps.)
    assert [r.event_ts for r in read] == [ts for ts, _text, _retain in rows]


def test_this_sqlite_writes_doubles_exactly_so_batches_are_read_as_one_json_array() -> None:
    # x86-64 and aarch64 Linux: if this fails, the platform reads row by row (correct, slower): say so in
    # bench/README.md rather than loosening the check.
    assert outbox._packed_exact()
