"""The orders table: one row per accepted order id with its job and content digest, so no id makes two jobs.

The row is written in the transaction of the job's first journal entry (status queued), so a job exists in
the journal exactly when its order id is taken; the primary key is the last word under concurrent submits.
"""

from __future__ import annotations

import json
import sqlite3

from cellctl.core.events import JobEvent, JobStatus
from cellctl.core.ports import OrderRecord
from cellctl.errors import OrderConflict

SCHEMA_V2: tuple[str, ...] = (
    """
    CREATE TABLE orders (
        order_id     TEXT    PRIMARY KEY,
        job_id       TEXT    NOT NULL,
        content_hash TEXT    NOT NULL,
        journal_id   INTEGER NOT NULL REFERENCES journal (id)
    )
    """,
    # A store written before this table existed: take its order ids from the journal, first job wins. The
    # content of those orders was not kept (empty digest), so a repeat of one is refused, never guessed.
    """
    INSERT OR IGNORE INTO orders (order_id, job_id, content_hash, journal_id)
    SELECT json_extract(data, '$.order_id'), job_id, '', id FROM journal
    WHERE kind = 'job' AND job_id IS NOT NULL AND json_extract(data, '$.order_id') IS NOT NULL
    ORDER BY id
    """,
)
"""Statements of schema version 2: the orders table, filled from an older journal."""


def claim(conn: sqlite3.Connection, event: JobEvent, journal_id: int) -> None:
    """Take the event's order id for its job inside the caller's transaction; OrderConflict if another job
    has it. A job event that releases its order id frees it; other events, and a queued entry without a
    content digest, change nothing."""
    if event.order_released:
        conn.execute("DELETE FROM orders WHERE order_id = ? AND job_id = ?", (event.order_id, event.job))
        return
    if event.status is not JobStatus.QUEUED or not event.order_hash:
        return
    row = conn.execute(
        "SELECT job_id, content_hash FROM orders WHERE order_id = ?", (event.order_id,)
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO orders (order_id, job_id, content_hash, journal_id) VALUES (?, ?, ?, ?)",
            (event.order_id, event.job, event.order_hash, journal_id),
        )
        return
    job_id, content_hash = str(row[0]), str(row[1])
    if job_id != event.job:  # the same job journaled queued again (restored after a restart) is fine
        raise OrderConflict(event.order_id, job_id, same_content=content_hash == event.order_hash)


def find(conn: sqlite3.Connection, order_id: str) -> OrderRecord | None:
    """The order id's row with its job's first and newest job events; None when the id is not taken."""
    row = conn.execute("SELECT job_id, content_hash FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    job_id, content_hash = str(row[0]), str(row[1])
    events = conn.execute(
        "SELECT ts, data FROM journal WHERE kind = 'job' AND job_id = ? AND id IN ("
        "SELECT MIN(id) FROM journal WHERE kind = 'job' AND job_id = ? "
        "UNION SELECT MAX(id) FROM journal WHERE kind = 'job' AND job_id = ?) ORDER BY id",
        (job_id, job_id, job_id),
    ).fetchall()
    first_ts, first = (float(events[0][0]), json.loads(events[0][1])) if events else (0.0, {})
    last_ts, last = (float(events[-1][0]), json.loads(events[-1][1])) if events else (0.0, {})
    return OrderRecord(
        order_id=order_id,
        job_id=job_id,
        content_hash=content_hash,
        submitted_at=first_ts,
        submitted_by=str(first.get("by") or "unknown"),
        last_ts=last_ts,
        last_data=last,
    )
