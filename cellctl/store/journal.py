"""The journal table: every recorded fact, append-only, with its SQL and row type."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from cellctl.core.events import Event

SCHEMA_V1: tuple[str, ...] = (
    # AUTOINCREMENT: an id is never reused, even after pruning, so "after_id" readers never miss rows.
    """
    CREATE TABLE journal (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      REAL    NOT NULL,
        kind    TEXT    NOT NULL,
        stream  TEXT    NOT NULL,
        job_id  TEXT,
        data    TEXT    NOT NULL CHECK (json_valid(data))
    )
    """,
    "CREATE INDEX journal_by_kind ON journal (kind, id)",
    "CREATE INDEX journal_by_job ON journal (job_id, id) WHERE job_id IS NOT NULL",
)
"""Statements of schema version 1 for the journal."""

_INSERT = "INSERT INTO journal (ts, kind, stream, job_id, data) VALUES (?, ?, ?, ?, ?)"
_COLUMNS = "id, ts, kind, stream, job_id, data"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journaled fact as stored: ``data`` is the event's fields (StrEnums as strings, tuples as lists)."""

    id: int
    ts: float
    kind: str
    stream: str
    job_id: str | None
    data: dict[str, Any]


def insert(conn: sqlite3.Connection, event: Event, data_json: str) -> int:
    """Insert one journal row inside the caller's transaction and return its id."""
    cur = conn.execute(_INSERT, (event.ts, event.kind, str(event.stream), event.job_id, data_json))
    if cur.lastrowid is None:  # pragma: no cover - sqlite always sets it after an INSERT
        raise sqlite3.OperationalError("journal insert returned no row id")
    return cur.lastrowid


def select(
    conn: sqlite3.Connection,
    *,
    after_id: int,
    limit: int,
    kinds: Collection[str] | None,
    job_id: str | None,
) -> list[JournalEntry]:
    """Entries with id > ``after_id`` in id order, optionally only some kinds or one job."""
    where = ["id > ?"]
    args: list[Any] = [after_id]
    if kinds is not None:
        kind_list = sorted(set(kinds))
        if not kind_list:
            return []
        where.append(f"kind IN ({', '.join('?' * len(kind_list))})")
        args.extend(kind_list)
    if job_id is not None:
        where.append("job_id = ?")
        args.append(job_id)
    args.append(limit)
    sql = f"SELECT {_COLUMNS} FROM journal WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
    return [
        JournalEntry(id=r[0], ts=r[1], kind=r[2], stream=r[3], job_id=r[4], data=json.loads(r[5]))
        for r in conn.execute(sql, args)
    ]


def last_id(conn: sqlite3.Connection) -> int:
    """The newest journal id, 0 when the journal is empty."""
    row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM journal").fetchone()
    return int(row[0])


_OPEN_JOBS = f"""
    SELECT {_COLUMNS} FROM journal
    WHERE kind = 'job' AND job_id IN (
        SELECT job_id FROM journal AS last
        WHERE last.id IN (SELECT MAX(id) FROM journal WHERE kind = 'job' GROUP BY job_id)
          AND json_extract(last.data, '$.status') IN ('queued', 'started')
    )
    ORDER BY id
"""


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    return JournalEntry(
        id=row[0], ts=row[1], kind=row[2], stream=row[3], job_id=row[4], data=json.loads(row[5])
    )


def last_of_kind(conn: sqlite3.Connection, kind: str) -> JournalEntry | None:
    """The newest entry of ``kind`` (by the kind index), None when there is none."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM journal WHERE kind = ? ORDER BY id DESC LIMIT 1", (kind,)
    ).fetchone()
    return None if row is None else _entry(row)


def newest_of_kind(conn: sqlite3.Connection, kind: str, limit: int) -> list[JournalEntry]:
    """The newest ``limit`` entries of ``kind`` (by the kind index, newest first), returned oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM journal WHERE kind = ? ORDER BY id DESC LIMIT ?", (kind, max(0, limit))
    ).fetchall()
    return [_entry(r) for r in reversed(rows)]


def open_job_entries(conn: sqlite3.Connection) -> list[JournalEntry]:
    """Every job event of the jobs whose newest job event says queued or started, in id order."""
    return [_entry(r) for r in conn.execute(_OPEN_JOBS)]


def verdict_counts(conn: sqlite3.Connection, job_id: str, after_id: int) -> dict[str, int]:
    """Parts of ``job_id`` journaled after ``after_id``, counted by verdict."""
    rows = conn.execute(
        "SELECT json_extract(data, '$.verdict'), COUNT(*) FROM journal "
        "WHERE job_id = ? AND id > ? AND kind = 'part' GROUP BY 1",
        (job_id, after_id),
    )
    return {str(verdict): int(count) for verdict, count in rows}
