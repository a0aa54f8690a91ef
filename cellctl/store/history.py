"""Reading the journal over a time window for reports, read-only, and turning its rows back into events.

A report starts from the newest state change before the window (so it knows the state the window opens in)
and reads the facts from there in id order. Parts before the window are skipped in SQL. The read goes by
the primary key from that state change on, so it costs the rows since then, not the whole journal.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverKpi,
    ChangeoverStatus,
    Event,
    JobEvent,
    JobStatus,
    Measurement,
    PartProduced,
    Severity,
    StateChanged,
    StepKpi,
    Verdict,
)
from cellctl.errors import StoreError
from cellctl.store import readonly
from cellctl.store.journal import JournalEntry

REPORT_KINDS: tuple[str, ...] = (
    StateChanged.kind,
    PartProduced.kind,
    ChangeoverEvent.kind,
    ChangeoverKpi.kind,
    AlarmEvent.kind,
    JobEvent.kind,
)
"""The kinds a report reads."""

_COLUMNS = "id, ts, kind, stream, job_id, data"


def select_window(
    conn: sqlite3.Connection, since: float, until: float, kinds: Collection[str] = REPORT_KINDS
) -> list[JournalEntry]:
    """Rows of ``kinds`` up to ``until`` from the newest state change before ``since``, parts only from
    ``since``, in id order."""
    row = conn.execute(
        "SELECT MAX(id) FROM journal WHERE kind = ? AND ts < ?", (StateChanged.kind, since)
    ).fetchone()
    first = int(row[0]) if row[0] is not None else 0
    kind_list = sorted(set(kinds))
    if not kind_list:
        return []
    marks = ", ".join("?" * len(kind_list))
    sql = (
        f"SELECT {_COLUMNS} FROM journal WHERE id >= ? AND kind IN ({marks}) AND ts < ? "
        "AND (kind != ? OR ts >= ?) ORDER BY id"
    )
    rows = conn.execute(sql, (first, *kind_list, until, PartProduced.kind, since))
    return [
        JournalEntry(id=r[0], ts=r[1], kind=r[2], stream=r[3], job_id=r[4], data=json.loads(r[5]))
        for r in rows
    ]


def read_window(
    path: Path, since: float, until: float, kinds: Collection[str] = REPORT_KINDS
) -> list[JournalEntry]:
    """``select_window`` on the store file at ``path`` opened read-only: never created, migrated or written.

    Blocking. StoreError when the file is missing or not a store.
    """
    return readonly.read_only(path, "the journal", lambda conn: select_window(conn, since, until, kinds))


def _fields(cls: type[Event], data: Mapping[str, Any]) -> dict[str, Any]:
    # Keys a newer cellctl added are dropped: a report reads what it knows.
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names and k != "ts"}


def to_event(entry: JournalEntry) -> Event | None:
    """The event a report row was written from, None for a kind reports do not read.

    StoreError naming the row when its data does not fit the kind.
    """
    data = entry.data
    try:
        if entry.kind == StateChanged.kind:
            return StateChanged(ts=entry.ts, **_fields(StateChanged, data))
        if entry.kind == PartProduced.kind:
            fields = _fields(PartProduced, data)
            fields["verdict"] = Verdict(fields["verdict"])
            fields["measurements"] = tuple(
                Measurement(**{**m, "verdict": Verdict(m["verdict"])}) for m in fields.get("measurements", ())
            )
            return PartProduced(ts=entry.ts, **fields)
        if entry.kind == ChangeoverEvent.kind:
            fields = _fields(ChangeoverEvent, data)
            fields["status"] = ChangeoverStatus(fields["status"])
            fields["steps"] = tuple(fields.get("steps", ()))
            return ChangeoverEvent(ts=entry.ts, **fields)
        if entry.kind == ChangeoverKpi.kind:
            fields = _fields(ChangeoverKpi, data)
            fields["steps"] = tuple(StepKpi(**s) for s in fields.get("steps", ()))
            return ChangeoverKpi(ts=entry.ts, **fields)
        if entry.kind == AlarmEvent.kind:
            fields = _fields(AlarmEvent, data)
            fields["severity"] = Severity(fields["severity"])
            return AlarmEvent(ts=entry.ts, **fields)
        if entry.kind == JobEvent.kind:
            fields = _fields(JobEvent, data)
            fields["status"] = JobStatus(fields["status"])
            return JobEvent(ts=entry.ts, **fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"journal row {entry.id} ({entry.kind}): cannot read it: {exc}") from exc
    return None


__all__ = ["REPORT_KINDS", "read_window", "select_window", "to_event"]
