"""Remote commands already handled, by sender and command id, with their reply: so a replay never runs twice.

A sender (an MES over MQTT) names each command with its own id. The id is claimed in one transaction before
the command runs and the reply is stored once it has: a repeat of the id is answered from here without
touching the engine. The table is bounded: every claim first drops rows older than the retention time and
those beyond the newest ``keep_rows``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum

SCHEMA_V6: tuple[str, ...] = (
    """
    CREATE TABLE commands (
        seq         INTEGER PRIMARY KEY,
        source      TEXT    NOT NULL,
        command_id  TEXT    NOT NULL,
        received_ts REAL    NOT NULL,
        reply       TEXT,
        UNIQUE (source, command_id)
    )
    """,
    "CREATE INDEX commands_by_ts ON commands (received_ts)",
)
"""Statements of schema version 6: the handled remote commands."""


class ClaimState(StrEnum):
    """What a claim of a command id found."""

    NEW = "new"
    """Never seen: claimed now, run it."""
    DONE = "done"
    """Handled before: answer with the stored reply, run nothing."""
    INTERRUPTED = "interrupted"
    """Claimed before but no reply stored: the process stopped while it ran (run it again)."""


@dataclass(frozen=True, slots=True)
class CommandClaim:
    """The outcome of claiming a command id; ``reply`` is the stored reply text when ``DONE``."""

    state: ClaimState
    reply: str | None = None


def claim(
    conn: sqlite3.Connection,
    source: str,
    command_id: str,
    *,
    now: float,
    keep_s: float,
    keep_rows: int,
) -> CommandClaim:
    """Prune, then look up and (when new) take ``command_id`` of ``source`` (in the caller's transaction)."""
    conn.execute("DELETE FROM commands WHERE received_ts < ?", (now - keep_s,))
    conn.execute(
        "DELETE FROM commands WHERE seq <= (SELECT MAX(seq) FROM commands) - ?", (max(0, keep_rows - 1),)
    )
    row = conn.execute(
        "SELECT reply FROM commands WHERE source = ? AND command_id = ?", (source, command_id)
    ).fetchone()
    if row is not None:
        if row[0] is None:
            return CommandClaim(ClaimState.INTERRUPTED)
        return CommandClaim(ClaimState.DONE, str(row[0]))
    conn.execute(
        "INSERT INTO commands (source, command_id, received_ts) VALUES (?, ?, ?)", (source, command_id, now)
    )
    return CommandClaim(ClaimState.NEW)


def finish(conn: sqlite3.Connection, source: str, command_id: str, reply: str, *, now: float) -> None:
    """Store the reply of a claimed command (a row pruned meanwhile is written again, received ``now``)."""
    conn.execute(
        "INSERT INTO commands (source, command_id, received_ts, reply) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (source, command_id) DO UPDATE SET reply = excluded.reply",
        (source, command_id, now, reply),
    )


def stored_reply(conn: sqlite3.Connection, source: str, command_id: str) -> str | None:
    """The stored reply of a handled command id; None when unknown or not finished."""
    row = conn.execute(
        "SELECT reply FROM commands WHERE source = ? AND command_id = ?", (source, command_id)
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def count(conn: sqlite3.Connection) -> int:
    """Rows kept (for tests and diagnostics)."""
    (n,) = conn.execute("SELECT COUNT(*) FROM commands").fetchone()
    return int(n)
