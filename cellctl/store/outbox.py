"""The outbox and stream-sequence tables: telemetry waiting for the broker's acknowledgement, with its SQL."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
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

_NEXT_SEQ = (
    "INSERT INTO streams (stream, seq) VALUES (?, 1) "
    "ON CONFLICT (stream) DO UPDATE SET seq = seq + 1 RETURNING seq"
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
    for message, body in zip(messages, bodies, strict=True):
        stream = str(message.stream)
        (seq,) = conn.execute(_NEXT_SEQ, (stream,)).fetchone()
        conn.execute(
            _INSERT,
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
            ),
        )


STREAM_BATCH_SQL = f"SELECT {_COLUMNS} FROM outbox WHERE stream = ? AND id > ? ORDER BY id LIMIT ?"
"""One stream's next rows: a range scan of ``outbox_by_stream``."""


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
    batches: dict[str, list[OutboxRow]] = {}
    for stream in streams:
        rows = conn.execute(STREAM_BATCH_SQL, (stream, after.get(stream, 0), limit)).fetchall()
        if rows:
            batches[stream] = [_row(r) for r in rows]
    return batches


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
