"""System test: a publisher process SIGKILLed while it replays a backlog, restarted, loses nothing.

The child (``tests/system/replay_child.py``) publishes a store file pre-filled with 6,000 messages on three
streams; it is killed twice at seeded points of the replay (CELLCTL_REPLAY_KILL_SEED), then run to the end.
The subscriber, connected to the broker the whole time, must see every message of every stream, in order;
after each kill a stream may start again at most two windows back (one in flight, one acknowledged and not yet
deleted), with the same msg_ids (de-duplicable).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from cellctl.schema.cell import Identity
from cellctl.store import Store
from cellctl.telemetry.topics import topic_root
from tests.fixtures.backlog import check_stream, envelopes, fill_backlog
from tests.fixtures.broker import Collector, Mosquitto, Received

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("CELLCTL_REPLAY_KILL_SEED", "6"))
COUNTS = {"part": 2000, "quality": 3000, "state": 1000}
TOTAL = sum(COUNTS.values())
KILLS = 2
WINDOW = 50
RATE = 4000.0
T = 30.0
"""Bound of every wait (s)."""


async def _child(db: Path, broker: Mosquitto, cell: str) -> asyncio.subprocess.Process:
    """The publisher process, once its store is open; its log goes to ``child.log`` beside the store."""
    with (db.parent / "child.log").open("ab") as log:
        return await _spawn(db, broker, cell, log.fileno())


async def _spawn(db: Path, broker: Mosquitto, cell: str, log: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.system.replay_child",
        str(db),
        broker.host,
        str(broker.port),
        cell,
        str(WINDOW),
        str(RATE),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        cwd=REPO,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(T):
        line = await proc.stdout.readline()
    assert line.strip() == b"up", (line, (db.parent / "child.log").read_text()[-2000:])
    return proc


def _all_arrived(messages: list[Received], root: str) -> bool:
    """Every stream's seqs 1..n are in (duplicates or not)."""
    streams = envelopes(messages, root)
    return all(len({e.seq for e in streams.get(s, [])}) >= n for s, n in COUNTS.items())


def _outbox_count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


async def test_a_publisher_killed_during_replay_loses_nothing_and_keeps_each_stream_in_order(
    tmp_path: Path, broker: Mosquitto
) -> None:
    print(f"\nseed {SEED} (set CELLCTL_REPLAY_KILL_SEED to repeat)")
    rng = random.Random(SEED)
    cell = f"kill{time.time_ns()}"
    root = topic_root(Identity(enterprise="acme", site="test", area="a1", line="l1", cell=cell))
    db = tmp_path / "cellctl.db"
    store = await Store.open(db, synchronous="NORMAL")
    try:
        await fill_backlog(store, root, COUNTS, seed=SEED)
    finally:
        await store.close()

    async with Collector(broker.host, broker.port, f"{root}/#") as c:
        # Given a publisher replaying the backlog, killed at a seeded point, twice
        kills: list[int] = []
        for _ in range(KILLS):
            at = len(c.messages) + rng.randint(200, 1500)
            proc = await _child(db, broker, cell)
            await c.wait_until(lambda ms, at=at: len(ms) >= at, timeout=T)
            proc.send_signal(signal.SIGKILL)
            async with asyncio.timeout(T):
                assert await proc.wait() == -signal.SIGKILL
            kills.append(len(c.messages))
        left = _outbox_count(db)
        # When it is started again and runs to the end
        proc = await _child(db, broker, cell)
        async with asyncio.timeout(T):
            assert await proc.wait() == 0
        # Every seq of every stream, not a count: resent duplicates (up to two windows a kill) would reach a
        # count of TOTAL while the last messages are still on their way.
        await c.wait_until(lambda ms: len(ms) >= TOTAL, timeout=T)
        await c.wait_until(lambda ms: _all_arrived(ms, root), timeout=T)

    # Then the outbox is empty and every stream arrived whole and in order, duplicates within two windows
    assert 0 < left < TOTAL, "the kills landed during the replay"
    assert _outbox_count(db) == 0
    streams = envelopes(c.messages, root)
    duplicates = 0
    for stream, n in COUNTS.items():
        duplicates += check_stream(stream, streams[stream], last_seq=n, window=2 * WINDOW, rewinds=KILLS)
        assert all(e.historical for e in streams[stream])
        first: dict[int, int] = {}
        for e in streams[stream]:
            first.setdefault(e.seq, e.data["n"])
        assert [first[s] for s in range(1, n + 1)] == list(range(n))
    assert duplicates <= KILLS * 2 * WINDOW
    print(f"killed after {kills} messages received; {left} left; {duplicates} duplicate(s)")
