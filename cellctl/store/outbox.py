"""The outbox and stream-sequence tables: telemetry waiting for the broker's acknowledgement, with its SQL."""

from __future__ import annotations

import functools
import json
import math
import random
import sqlite3
import struct
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

SCHEMA_V1: tuple[str, ...] = (
    # One row per telemetry stream: the last sequence number handed out, so consumers can spot gaps.
    """
    CREATE TABLE streams (
        stream  TEXT    PRIMARY KEY,
        seq     INTEGER NOT NULL CHECK (seq >= 1)
    ) WITHOUT ROWID
    """,
    # AUTOINCREMENT: ids keep growing after the outbox empties, so the publisher's "after id" cursor holds.
    """
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        journal_id  INTEGER NOT NULL REFERENCES journal (id),
        topic       TEXT    NOT NULL,
        stream      TEXT    NOT NULL,
        seq         INTEGER NOT NULL,
        msg_id      TEXT    NOT NULL UNIQUE,
        event_ts    REAL    NOT NULL,
        body        TEXT    NOT NULL CHECK (json_valid(body)),
        retain      INTEGER NOT NULL CHECK (retain IN (0, 1)),
        qos         INTEGER NOT NULL CHECK (qos IN (0, 1, 2))
    )
    """,
    "CREATE INDEX outbox_by_journal ON outbox (journal_id)",
)
"""Statements of schema version 1 for the outbox and the stream sequences."""

SCHEMA_V4: tuple[str, ...] = (
    # The publisher reads each stream in id order from its own cursor (backlog replay interleaved with live
    # rows): an index range scan per stream instead of a scan of the whole backlog.
    "CREATE INDEX outbox_by_stream ON outbox (stream, id)",
)
"""Statements of schema version 4: the per-stream read index."""

_TAKE_SEQS = (
    "INSERT INTO streams (stream, seq) VALUES (?, ?) "
    "ON CONFLICT (stream) DO UPDATE SET seq = seq + ? RETURNING seq"
)
_INSERT = (
    "INSERT INTO outbox (journal_id, topic, stream, seq, msg_id, event_ts, body, retain, qos) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = "id, topic, stream, seq, msg_id, event_ts, body, retain, qos"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A telemetry message to queue with its event: ``body`` becomes the envelope's ``data``."""

    topic: str
    stream: str
    body: dict[str, Any] = field(hash=False)
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A queued message as stored; ``body`` is the raw JSON text so the publisher splices it unparsed."""

    id: int
    topic: str
    stream: str
    seq: int
    msg_id: str
    event_ts: float
    body: str
    retain: bool
    qos: int

    def data(self) -> dict[str, Any]:
        """The body decoded."""
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


def insert(
    conn: sqlite3.Connection,
    journal_id: int,
    event_ts: float,
    messages: Sequence[OutboxMessage],
    bodies: Sequence[str],
) -> None:
    """Queue messages inside the caller's transaction, each with a new msg_id and its stream's next seq."""
    if not messages:
        return
    wanted: dict[str, int] = {}
    for message in messages:
        stream = str(message.stream)
        wanted[stream] = wanted.get(stream, 0) + 1
    # One sequence update per stream: take the whole run of seqs at once, hand them out in message order.
    next_seq: dict[str, int] = {}
    for stream, n in wanted.items():
        (last,) = conn.execute(_TAKE_SEQS, (stream, n, n)).fetchone()
        next_seq[stream] = int(last) - n + 1
    rows = []
    for message, body in zip(messages, bodies, strict=True):
        stream = str(message.stream)
        seq = next_seq[stream]
        next_seq[stream] = seq + 1
        rows.append(
            (
                journal_id,
                message.topic,
                stream,
                seq,
                str(uuid.uuid4()),
                event_ts,
                body,
                int(message.retain),
                message.qos,
            )
        )
    conn.executemany(_INSERT, rows)


STREAM_ROWS_SQL = f"SELECT {_COLUMNS} FROM outbox WHERE stream = ? AND id > ? ORDER BY id LIMIT ?"
"""One stream's next rows: a range scan of ``outbox_by_stream``."""

# The publisher reads while its event loop is busy, and SQLite hands back the GIL at every row it steps:
# a batch of 100 rows stepped one by one took four times its CPU time waiting for the GIL (and made the loop
# wait for it in turn). As one JSON array built in SQLite, a batch is one step. ``event_ts`` goes as text
# of 21 significant digits (``%!.20e``, what SQLite's ``quote`` falls back to for an exact value): JSON's
# 15 would round it (``test_outbox_streams`` checks the round trip).
STREAM_BATCH_SQL = (
    "SELECT json_group_array(json_array(id, topic, stream, seq, msg_id, printf('%!.20e', event_ts), body, "
    f"retain, qos)) FROM ({STREAM_ROWS_SQL})"
)
"""One stream's next rows as one JSON array of arrays (one SQLite step)."""


def select_batch(conn: sqlite3.Connection, *, after_id: int, limit: int) -> list[OutboxRow]:
    """The oldest ``limit`` rows with id > ``after_id``, in id order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    ).fetchall()
    return [_row(r) for r in rows]


def select_streams(
    conn: sqlite3.Connection,
    *,
    after: Mapping[str, int],
    limit: int,
    streams: Collection[str] | None = None,
    skip: Collection[str] = (),
) -> dict[str, list[OutboxRow]]:
    """Per stream, its oldest ``limit`` rows with id > ``after[stream]`` (0 if absent), in id order.

    ``streams`` None reads every stream that ever had a message (the ``streams`` table) but those in
    ``skip``; streams without rows past their cursor are left out of the result.
    """
    if streams is None:
        skipped = frozenset(skip)
        streams = [name for (name,) in conn.execute("SELECT stream FROM streams") if name not in skipped]
    packed = _packed_exact()
    batches: dict[str, list[OutboxRow]] = {}
    for stream in streams:
        cursor = after.get(stream, 0)
        if not packed:
            rows = conn.execute(STREAM_ROWS_SQL, (stream, cursor, limit)).fetchall()
            if rows:
                batches[stream] = [_row(r) for r in rows]
            continue
        ((text,),) = conn.execute(STREAM_BATCH_SQL, (stream, cursor, limit)).fetchall()
        packed_rows: list[list[Any]] = json.loads(text)
        if packed_rows:
            # An aggregate's input order is SQLite's choice, not a promise: id order is made sure of here.
            packed_rows.sort(key=_first)
            batches[stream] = [
                OutboxRow(i, topic, name, seq, msg_id, float(ts), body, bool(retain), qos)
                for i, topic, name, seq, msg_id, ts, body, retain, qos in packed_rows
            ]
    return batches


@functools.cache
def _packed_exact() -> bool:
    """True when this process's SQLite writes doubles exactly with ``%!.20e`` (checked once, about 15 ms).

    Its float-to-text conversion is only as exact as its ``long double``: 64 bits of mantissa on x86-64, and
    a quad on aarch64 Linux, give every double back; a platform where ``long double`` is a plain double may
    not. There, batches are read row by row (slower, exact).
    """
    rng = random.Random(6)
    values = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(4096)]
    values = [v for v in values if math.isfinite(v)]
    values += [rng.uniform(0.0, 4.2e9) for _ in range(4096)]
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (x REAL)")
        conn.executemany("INSERT INTO t (x) VALUES (?)", [(v,) for v in values])
        (text,) = conn.execute(
            "SELECT json_group_array(printf('%!.20e', x)) FROM (SELECT x FROM t ORDER BY rowid)"
        ).fetchone()
    finally:
        conn.close()
    back = [float(t) for t in json.loads(text)]
    return back == values


def _first(row: list[Any]) -> Any:
    return row[0]


def _row(r: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(
        id=r[0],
        topic=r[1],
        stream=r[2],
        seq=r[3],
        msg_id=r[4],
        event_ts=r[5],
        body=r[6],
        retain=bool(r[7]),
        qos=r[8],
    )


def delete(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Delete acknowledged rows inside the caller's transaction (unknown ids are ignored)."""
    conn.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in ids))


def last_id(conn: sqlite3.Connection) -> int:
    """The newest queued row's id, 0 when none is queued."""
    row = conn.execute("SELECT MAX(id) FROM outbox").fetchone()
    return int(row[0] or 0)


def count(conn: sqlite3.Connection) -> int:
    """Rows waiting for the broker."""
    row = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(row[0])


def sequences(conn: sqlite3.Connection) -> dict[str, int]:
    """Last sequence number handed out per stream."""
    return {stream: seq for stream, seq in conn.execute("SELECT stream, seq FROM streams")}


# ------------------------------------------------------------------------------------------------------------
# Bounds (schema version 3): rows and bytes waiting, telemetry-class rows dropped oldest-first and counted.

SCHEMA_V5: tuple[str, ...] = (
    # Telemetry rows dropped at the outbox's bound, per stream, since the file was created.
    """
    CREATE TABLE outbox_dropped (
        stream  TEXT    PRIMARY KEY,
        rows    INTEGER NOT NULL CHECK (rows >= 0),
        bytes   INTEGER NOT NULL CHECK (bytes >= 0)
    ) WITHOUT ROWID
    """,
    # Pruning the oldest rows of one stream at the bound reads the `outbox_by_stream` index of version 4.
)
"""Statements of schema version 5 for the outbox's bound: dropped-telemetry counts."""

SCHEMA_V7: tuple[str, ...] = (
    # Every acknowledged row is deleted, so the outbox's indexes are the publisher's store cost per message.
    # The UNIQUE index on msg_id (random uuid4 text: each delete dirtied a random page of it) made deletes
    # three times dearer (17 against 6 us a row in groups of 40), and nothing looks a row up by msg_id, which
    # is unique by construction (a new uuid4 per row). ``outbox_by_journal`` served no query and no
    # foreign-key check: journal rows are never deleted. SQLite drops a constraint only by copying the table;
    # the AUTOINCREMENT high-water mark is carried over, so ids keep growing.
    """
    CREATE TABLE outbox_v7 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        journal_id  INTEGER NOT NULL REFERENCES journal (id),
        topic       TEXT    NOT NULL,
        stream      TEXT    NOT NULL,
        seq         INTEGER NOT NULL,
        msg_id      TEXT    NOT NULL,
        event_ts    REAL    NOT NULL,
        body        TEXT    NOT NULL CHECK (json_valid(body)),
        retain      INTEGER NOT NULL CHECK (retain IN (0, 1)),
        qos         INTEGER NOT NULL CHECK (qos IN (0, 1, 2))
    )
    """,
    "INSERT INTO outbox_v7 SELECT id, journal_id, topic, stream, seq, msg_id, event_ts, body, retain, qos "
    "FROM outbox",
    "DELETE FROM sqlite_sequence WHERE name = 'outbox_v7'",
    "INSERT INTO sqlite_sequence (name, seq) "
    "SELECT 'outbox_v7', seq FROM sqlite_sequence WHERE name = 'outbox'",
    "DROP TABLE outbox",
    "ALTER TABLE outbox_v7 RENAME TO outbox",
    *SCHEMA_V4,
)
"""Statements of schema version 7: the outbox without the msg_id and journal indexes its deletes paid for."""

_SIZE = "LENGTH(topic) + LENGTH(body)"
_ADD_DROPPED = (
    "INSERT INTO outbox_dropped (stream, rows, bytes) VALUES (?, ?, ?) "
    "ON CONFLICT (stream) DO UPDATE SET rows = rows + excluded.rows, bytes = bytes + excluded.bytes"
)
PRUNE_CHUNK = 256
"""Rows fetched per telemetry stream per pruning round."""


def size_of(message: OutboxMessage, body: str) -> int:
    """What a row counts against ``max_bytes``: its topic and body (JSON text, ASCII: characters = bytes)."""
    return len(message.topic) + len(body)


@dataclass(slots=True)
class StreamTotals:
    """Rows and bytes of one stream: waiting in the outbox, or dropped so far."""

    rows: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox against its bound, for status and diagnostics."""

    rows: int
    bytes: int
    max_rows: int
    max_bytes: int
    dropped: dict[str, int]
    """Telemetry rows dropped per stream since the file was created."""

    @property
    def dropped_total(self) -> int:
        """Rows dropped over all streams."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "rows": self.rows,
            "bytes": self.bytes,
            "max_rows": self.max_rows,
            "max_bytes": self.max_bytes,
            "dropped": dict(self.dropped),
        }


class OutboxFullError(Exception):
    """Raised inside the transaction when only records would remain and the new rows still do not fit."""


class OutboxBound:
    """Running totals of the outbox and its bound; pruning runs inside the caller's transaction.

    The totals live in memory (one query at open, updated by insert, ack and prune) so an insert never sums
    the table. A change is staged while its transaction runs and applied only once it committed.
    """

    def __init__(self, max_rows: int, max_bytes: int, telemetry: frozenset[str]) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.telemetry = telemetry
        self._waiting: dict[str, StreamTotals] = {}
        self._dropped: dict[str, StreamTotals] = {}
        # Prune a little more than needed so a full outbox is not pruned again on every insert.
        self._slack_rows = max(1, max_rows // 100)
        self._slack_bytes = max(1, max_bytes // 100)

    def load(self, conn: sqlite3.Connection) -> None:
        """(Re)read the totals from the file: at open and after a reopen."""
        self._waiting = {
            stream: StreamTotals(int(rows), int(size))
            for stream, rows, size in conn.execute(
                f"SELECT stream, COUNT(*), COALESCE(SUM({_SIZE}), 0) FROM outbox GROUP BY stream"
            )
        }
        self._dropped = {
            stream: StreamTotals(int(rows), int(size))
            for stream, rows, size in conn.execute("SELECT stream, rows, bytes FROM outbox_dropped")
        }

    @property
    def rows(self) -> int:
        """Rows waiting."""
        return sum(t.rows for t in self._waiting.values())

    @property
    def bytes(self) -> int:
        """Bytes waiting."""
        return sum(t.bytes for t in self._waiting.values())

    def stats(self) -> OutboxStats:
        """A snapshot of the totals and limits."""
        return OutboxStats(
            rows=self.rows,
            bytes=self.bytes,
            max_rows=self.max_rows,
            max_bytes=self.max_bytes,
            dropped={s: t.rows for s, t in sorted(self._dropped.items()) if t.rows},
        )

    def make_room(self, conn: sqlite3.Connection, rows: int, size: int) -> dict[str, StreamTotals]:
        """Drop the oldest telemetry rows so ``rows`` more rows of ``size`` bytes fit; returns the drops to
        apply once committed. OutboxFullError (nothing dropped yet) when dropping every telemetry row would
        not be enough."""
        over_rows = self.rows + rows - self.max_rows
        over_bytes = self.bytes + size - self.max_bytes
        if over_rows <= 0 and over_bytes <= 0:
            return {}
        tele_rows = sum(t.rows for s, t in self._waiting.items() if s in self.telemetry)
        tele_bytes = sum(t.bytes for s, t in self._waiting.items() if s in self.telemetry)
        if over_rows > tele_rows or over_bytes > tele_bytes:
            raise OutboxFullError(
                f"the outbox is full ({self.rows} rows, {self.bytes} bytes; limits {self.max_rows} rows, "
                f"{self.max_bytes} bytes) and holds only {tele_rows} droppable telemetry rows"
            )
        want_rows = min(tele_rows, over_rows + self._slack_rows) if over_rows > 0 else 0
        want_bytes = min(tele_bytes, over_bytes + self._slack_bytes) if over_bytes > 0 else 0
        dropped: dict[str, StreamTotals] = {}
        freed_rows = freed_bytes = 0
        while freed_rows < want_rows or freed_bytes < want_bytes:
            victims = self._oldest_telemetry(conn)
            if not victims:  # pragma: no cover - the totals said there were enough
                raise OutboxFullError("the outbox's totals disagree with its rows; reopen the store")
            chosen: list[int] = []
            for row_id, stream, row_size in victims:
                if freed_rows >= want_rows and freed_bytes >= want_bytes:
                    break
                chosen.append(row_id)
                freed_rows += 1
                freed_bytes += row_size
                total = dropped.setdefault(stream, StreamTotals())
                total.rows += 1
                total.bytes += row_size
            conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(chosen),)
            )
        for stream, total in dropped.items():
            conn.execute(_ADD_DROPPED, (stream, total.rows, total.bytes))
        return dropped

    def _oldest_telemetry(self, conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
        """The oldest telemetry rows of all telemetry streams in id order, each read by its index."""
        merged: list[tuple[int, str, int]] = []
        horizon: int | None = None
        for stream in sorted(self.telemetry):
            rows = conn.execute(
                f"SELECT id, {_SIZE} FROM outbox WHERE stream = ? ORDER BY id LIMIT ?", (stream, PRUNE_CHUNK)
            ).fetchall()
            merged.extend((int(r[0]), stream, int(r[1])) for r in rows)
            if len(rows) == PRUNE_CHUNK:
                # Rows of other streams past this stream's last fetched id may not be the oldest overall.
                last = int(rows[-1][0])
                horizon = last if horizon is None else min(horizon, last)
        merged.sort()
        return merged if horizon is None else [v for v in merged if v[0] <= horizon]

    def checkpoint(self) -> tuple[dict[str, StreamTotals], dict[str, StreamTotals]]:
        """A copy of the totals, for ``restore`` when a group's changes applied per fact do not commit."""
        return (
            {s: replace(t) for s, t in self._waiting.items()},
            {s: replace(t) for s, t in self._dropped.items()},
        )

    def restore(self, saved: tuple[dict[str, StreamTotals], dict[str, StreamTotals]]) -> None:
        """Put back the totals of a ``checkpoint``."""
        self._waiting, self._dropped = saved

    def committed(
        self,
        added: Sequence[tuple[str, int]] = (),
        removed: dict[str, StreamTotals] | None = None,
        dropped: dict[str, StreamTotals] | None = None,
    ) -> None:
        """Apply a committed transaction: rows (stream, size) added, totals removed and dropped per stream."""
        for stream, row_size in added:
            total = self._waiting.setdefault(stream, StreamTotals())
            total.rows += 1
            total.bytes += row_size
        for stream, gone in (removed or {}).items():
            total = self._waiting.setdefault(stream, StreamTotals())
            total.rows -= gone.rows
            total.bytes -= gone.bytes
        for stream, drop in (dropped or {}).items():
            total = self._waiting.setdefault(stream, StreamTotals())
            total.rows -= drop.rows
            total.bytes -= drop.bytes
            counted = self._dropped.setdefault(stream, StreamTotals())
            counted.rows += drop.rows
            counted.bytes += drop.bytes


def delete_acked(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[str, StreamTotals]:
    """Delete acknowledged rows inside the caller's transaction; the rows and bytes deleted per stream
    (unknown ids, e.g. telemetry dropped meanwhile, are ignored)."""
    # Totals by one grouped query, not RETURNING: every row stepped out of SQLite releases and takes back the
    # GIL, and the publisher's event loop holds it most of the time (an ack group of 50 rows cost ~1.5 ms).
    id_json = json.dumps(list(ids))
    totals = {
        str(stream): StreamTotals(int(rows), int(size))
        for stream, rows, size in conn.execute(
            f"SELECT stream, COUNT(*), COALESCE(SUM({_SIZE}), 0) FROM outbox "
            "WHERE id IN (SELECT value FROM json_each(?)) GROUP BY stream",
            (id_json,),
        )
    }
    if totals:
        conn.execute("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (id_json,))
    return totals
