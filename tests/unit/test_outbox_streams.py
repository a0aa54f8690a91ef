"""The outbox read per stream (the publisher's replay lanes): cursors, limits, and an indexed query."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.core.events import DeviceHealthChanged
from cellctl.store import OutboxMessage, Store
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
