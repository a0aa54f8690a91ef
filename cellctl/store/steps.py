"""Reading measured changeover step durations from the journal, over a bounded window of its newest rows.

Loading must stay cheap however long the journal grows, so only the newest ``window`` step rows are read
(the ``journal_by_kind`` index walks them newest first and stops there): a (device, step kind) not run
within that window falls back to its configured duration until it runs again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cellctl.core.events import StepEvent, StepStatus
from cellctl.store import readonly

DEFAULT_WINDOW_ROWS = 10_000
"""Newest step rows read (started, done and failed: about 5,000 completed steps)."""

StepDuration = tuple[str | None, str, float]
"""(device, step kind, seconds) of one completed step."""

_SELECT = """
    SELECT json_extract(data, '$.device'), json_extract(data, '$.step_kind'),
           json_extract(data, '$.duration_s')
    FROM (SELECT id, data FROM journal WHERE kind = ? ORDER BY id DESC LIMIT ?)
    WHERE json_extract(data, '$.status') = ?
    ORDER BY id
"""


def select(conn: sqlite3.Connection, *, window: int = DEFAULT_WINDOW_ROWS) -> list[StepDuration]:
    """Durations of the completed steps among the newest ``window`` step rows, oldest first.

    Rows without a usable duration (null: the event had none, or a NaN journaled as null) are left out.
    """
    rows = conn.execute(_SELECT, (StepEvent.kind, max(0, window), StepStatus.DONE.value))
    result: list[StepDuration] = []
    for device, kind, seconds in rows:
        if not isinstance(kind, str) or isinstance(seconds, bool) or not isinstance(seconds, int | float):
            continue
        result.append((device if isinstance(device, str) else None, kind, float(seconds)))
    return result


def read_only(path: Path, *, window: int = DEFAULT_WINDOW_ROWS) -> list[StepDuration]:
    """``select`` on the store file at ``path`` opened read-only: never created, migrated or written.

    Blocking (run it in a thread from async code). StoreError when the file is missing or not a store.
    """
    return readonly.read_only(path, "step durations", lambda conn: select(conn, window=window))


__all__ = ["DEFAULT_WINDOW_ROWS", "StepDuration", "read_only", "select"]
