"""The store's SQLite file: opening, PRAGMAs, migrations and the async facade over one database thread."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from cellctl.core.events import Event, JobEvent
from cellctl.core.ports import OrderRecord
from cellctl.errors import StoreError
from cellctl.store import commands, journal, orders, outbox, steps
from cellctl.store.commands import CommandClaim
from cellctl.store.journal import JournalEntry
from cellctl.store.outbox import OutboxMessage, OutboxRow

SCHEMA_VERSION = 3
"""The newest schema this code knows; a file written by newer code is refused."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (*journal.SCHEMA_V1, *outbox.SCHEMA_V1),
    2: orders.SCHEMA_V2,
    3: commands.SCHEMA_V3,
}
"""Statements that take the schema from version ``n - 1`` to ``n``; each version runs in one transaction."""

SYNCHRONOUS_MODES = frozenset({"NORMAL", "FULL", "EXTRA"})
BUSY_TIMEOUT_MS = 5000

_T = TypeVar("_T")
_log = structlog.get_logger("cellctl.store")


class Store:
    """The journal and the outbox in one SQLite file; every call runs on the store's own thread."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        """Use ``Store.open``; this only wires an already opened connection and its thread."""
        self._path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn
        self._closing = False

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> Store:
        """Open (creating folders and file) and migrate the store; StoreError if it cannot be used."""
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            allowed = ", ".join(sorted(SYNCHRONOUS_MODES))
            raise StoreError(f"{path}: synchronous must be one of {allowed}, not {synchronous!r}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellctl-store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, Path(path), mode)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        _log.info("store opened", path=str(path), synchronous=mode, schema=SCHEMA_VERSION)
        return cls(Path(path), executor, conn)

    async def append(self, event: Event, messages: Sequence[OutboxMessage]) -> int:
        """Journal ``event`` and queue its messages in one transaction; return the journal id.

        A job's queued entry also takes its order id (OrderConflict, nothing written, if another job has it).
        """

        def work(conn: sqlite3.Connection) -> int:
            data_json = _dumps(event.to_data(), f"{event.kind} event")
            bodies = [_dumps(m.body, f"message to {m.topic}") for m in messages]
            with _transaction(conn):
                journal_id = journal.insert(conn, event, data_json)
                if isinstance(event, JobEvent):
                    orders.claim(conn, event, journal_id)
                outbox.insert(conn, journal_id, event.ts, messages, bodies)
            return journal_id

        return await self._call(f"append {event.kind}", work)

    async def journal(
        self,
        after_id: int = 0,
        limit: int = 1000,
        kinds: Collection[str] | None = None,
        *,
        job_id: str | None = None,
    ) -> list[JournalEntry]:
        """Journal entries after ``after_id`` in id order, at most ``limit``, optionally filtered."""
        kind_set = None if kinds is None else frozenset(kinds)
        return await self._call(
            "read journal",
            lambda conn: journal.select(conn, after_id=after_id, limit=limit, kinds=kind_set, job_id=job_id),
        )

    async def find_order(self, order_id: str) -> OrderRecord | None:
        """The order id's job, content digest and newest job event (None if never accepted): an OrderBook."""
        return await self._call("read orders", lambda conn: orders.find(conn, order_id))

    async def claim_command(
        self, source: str, command_id: str, *, now: float, keep_s: float, keep_rows: int
    ) -> CommandClaim:
        """Claim a remote command id of ``source`` in one transaction (after pruning rows older than
        ``keep_s`` or beyond the newest ``keep_rows``): NEW (run it), DONE with the stored reply, or
        INTERRUPTED (claimed by a run that stopped before replying)."""

        def work(conn: sqlite3.Connection) -> CommandClaim:
            with _transaction(conn):
                return commands.claim(conn, source, command_id, now=now, keep_s=keep_s, keep_rows=keep_rows)

        return await self._call("claim command", work)

    async def finish_command(self, source: str, command_id: str, reply: str, *, now: float) -> None:
        """Store the reply of a claimed command; a repeat of its id is answered with it."""

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                commands.finish(conn, source, command_id, reply, now=now)

        await self._call("store command reply", work)

    async def command_reply(self, source: str, command_id: str) -> str | None:
        """The stored reply of a handled command id of ``source`` (None when unknown); claims nothing."""
        return await self._call("read command", lambda conn: commands.stored_reply(conn, source, command_id))

    async def command_count(self) -> int:
        """Remote commands remembered."""
        return await self._call("count commands", commands.count)

    async def step_durations(self, window: int = steps.DEFAULT_WINDOW_ROWS) -> list[steps.StepDuration]:
        """(device, step kind, seconds) of the completed steps among the newest ``window`` step rows."""
        return await self._call("read step durations", lambda conn: steps.select(conn, window=window))

    async def last_entry(self, kind: str) -> JournalEntry | None:
        """The newest journal entry of ``kind`` (None when there is none)."""
        return await self._call("read journal", lambda conn: journal.last_of_kind(conn, kind))

    async def newest_entries(self, kind: str, limit: int) -> list[JournalEntry]:
        """The newest ``limit`` journal entries of ``kind``, oldest first (bounded: the kind index)."""
        return await self._call("read journal", lambda conn: journal.newest_of_kind(conn, kind, limit))

    async def open_job_entries(self) -> list[JournalEntry]:
        """Every job event of the jobs not finished (newest status queued or started), in id order."""
        return await self._call("read journal", journal.open_job_entries)

    async def verdict_counts(self, job_id: str, *, after_id: int) -> dict[str, int]:
        """Parts of ``job_id`` journaled after ``after_id``, counted by verdict."""
        return await self._call("read journal", lambda conn: journal.verdict_counts(conn, job_id, after_id))

    async def last_journal_id(self) -> int:
        """The newest journal id (0 when empty)."""
        return await self._call("read journal", journal.last_id)

    async def outbox_batch(self, limit: int, *, after_id: int = 0) -> list[OutboxRow]:
        """The oldest ``limit`` queued messages with id > ``after_id``, in id order."""
        return await self._call(
            "read outbox", lambda conn: outbox.select_batch(conn, after_id=after_id, limit=limit)
        )

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete acknowledged messages, all in one transaction (one commit for the group)."""
        if not ids:
            return
        id_list = list(ids)

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                outbox.delete(conn, id_list)

        await self._call("ack outbox", work)

    async def last_outbox_id(self) -> int:
        """The newest queued message's id (0 when the outbox is empty)."""
        return await self._call("read outbox", outbox.last_id)

    async def outbox_count(self) -> int:
        """Messages waiting for the broker."""
        return await self._call("count outbox", outbox.count)

    async def sequences(self) -> dict[str, int]:
        """The last sequence number handed out per telemetry stream."""
        return await self._call("read sequences", outbox.sequences)

    async def settings(self) -> dict[str, str | int]:
        """The connection's effective PRAGMAs and schema version, for diagnostics."""

        def work(conn: sqlite3.Connection) -> dict[str, str | int]:
            def pragma(name: str) -> str | int:
                value: str | int = conn.execute(f"PRAGMA {name}").fetchone()[0]
                return value

            sync_names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            (version,) = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return {
                "journal_mode": pragma("journal_mode"),
                "synchronous": sync_names.get(int(pragma("synchronous")), "?"),
                "foreign_keys": pragma("foreign_keys"),
                "busy_timeout": pragma("busy_timeout"),
                "schema_version": int(version),
            }

        return await self._call("read settings", work)

    async def close(self) -> None:
        """Close the database and stop its thread; calls after this raise StoreError. Idempotent."""
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await loop.run_in_executor(self._executor, conn.close)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: close failed: {exc}") from exc
        finally:
            self._executor.shutdown(wait=False)
        _log.info("store closed", path=str(self._path))

    async def _call(self, what: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None or self._closing:
            raise StoreError(f"{self._path}: {what}: the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {what} failed: {exc}") from exc


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open, configure and migrate the file (runs on the store thread)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create its folder: {exc}") from exc
    try:
        # Autocommit mode: transactions are explicit BEGIN IMMEDIATE ... COMMIT, never implicit.
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from exc
    try:
        _configure(conn, path, synchronous)
        _migrate(conn, path)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{path}: cannot open: {exc}") from exc
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, synchronous: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    (journal_mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(journal_mode).lower() != "wal":
        raise StoreError(f"{path}: cannot use write-ahead logging here (journal_mode is {journal_mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with _transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = int(row[0]) if row[0] is not None else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written by a newer cellctl (schema version {current}; this one knows up to "
            f"{SCHEMA_VERSION}); refusing to open it"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        with _transaction(conn):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        _log.info("store migrated", path=str(path), schema=version)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: taken immediately (no lock upgrade deadlock), rolled back on any failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full) can leave the transaction open: always end it.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _dumps(value: dict[str, Any], what: str) -> str:
    """Strict JSON text; NaN and infinities become null because no JSON parser accepts them."""
    try:
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_default)
        except ValueError:
            return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False, default=_default)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON data: {exc}") from exc


def _default(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
