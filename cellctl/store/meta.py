"""The meta table: small named values the controller keeps across restarts (e.g. the Sparkplug bdSeq)."""

from __future__ import annotations

import sqlite3

SCHEMA_V3: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key     TEXT PRIMARY KEY CHECK (length(key) > 0),
        value   TEXT NOT NULL
    ) WITHOUT ROWID
    """,
)
"""Statements of schema version 3: the meta key/value table."""


def get(conn: sqlite3.Connection, key: str) -> str | None:
    """The value stored under ``key``, None when there is none."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def put(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Store ``value`` under ``key`` inside the caller's transaction, replacing what was there."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
