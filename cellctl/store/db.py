"""The store's SQLite file: opening, PRAGMAs, migrations and the async facade over one database thread."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from cellctl.core.events import Event, JobEvent, OperatorAction, StateChanged
from cellctl.core.ports import OrderRecord
from cellctl.errors import (
    OutboxFull,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreTooNew,
)
from cellctl.schema.cell import DEFAULT_STREAM_CLASSES, StoreConfig, StreamClass
from cellctl.store import commands, journal, meta, orders, outbox, steps
from cellctl.store.commands import CommandClaim
from cellctl.store.journal import JournalEntry
from cellctl.store.outbox import OutboxBound, OutboxFullError, OutboxMessage, OutboxRow, OutboxStats
from cellctl.store.worker import StoreWorker

SCHEMA_VERSION = 7
"""The newest schema this code knows; a file written by newer code is refused."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (*journal.SCHEMA_V1, *outbox.SCHEMA_V1),
    2: orders.SCHEMA_V2,
    3: meta.SCHEMA_V3,
    4: outbox.SCHEMA_V4,
    5: outbox.SCHEMA_V5,
    6: commands.SCHEMA_V6,
    7: outbox.SCHEMA_V7,
}
"""Statements that take the schema from version ``n - 1`` to ``n``; each version runs in one transaction."""

SYNCHRONOUS_MODES = frozenset({"NORMAL", "FULL", "EXTRA"})
BUSY_TIMEOUT_MS = 5000

_T = TypeVar("_T")
_log = structlog.get_logger("cellctl.store")


@dataclass(frozen=True, slots=True)
class StorePolicy:
    """The outbox's bound, which streams may be dropped at it, and ``synchronous`` per class."""

    max_rows: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024
    telemetry_streams: frozenset[str] = frozenset(
        s for s, c in DEFAULT_STREAM_CLASSES.items() if c is StreamClass.TELEMETRY
    )
    records_synchronous: str = "FULL"
    telemetry_synchronous: str = "NORMAL"
    busy_timeout_ms: int = BUSY_TIMEOUT_MS
    """How long a write waits for another connection's lock before it fails as ``locked``."""

    @classmethod
    def from_config(cls, config: StoreConfig) -> StorePolicy:
        """The policy a cell file's ``store`` section asks for."""
        records, telemetry = config.synchronous_for()
        return cls(
            max_rows=config.outbox.max_rows,
            max_bytes=config.outbox.max_bytes,
            telemetry_streams=frozenset(
                s for s, c in config.stream_classes().items() if c is StreamClass.TELEMETRY
            ),
            records_synchronous=records,
            telemetry_synchronous=telemetry,
        )

    def is_record(self, event: Event, messages: Sequence[OutboxMessage]) -> bool:
        """True when the transaction keeping ``event`` holds a record (committed with records' durability):
        a record-class row or fact, an operator's action, or a commanded state move. Only pure telemetry (a
        device's health, a state completing by itself) is not."""
        telemetry = self.telemetry_streams
        if str(event.stream) not in telemetry or isinstance(event, OperatorAction):
            return True
        if isinstance(event, StateChanged) and event.command is not None:
            return True
        return any(str(m.stream) not in telemetry for m in messages)


@dataclass(slots=True)
class _Append:
    """An append waiting for its group's commit."""

    event: Event
    messages: Sequence[OutboxMessage]
    what: str
    future: asyncio.Future[int]


class Store:
    """The journal and the outbox in one SQLite file; every call runs on the store's own thread."""

    def __init__(
        self,
        path: Path,
        worker: StoreWorker,
        conn: sqlite3.Connection,
        *,
        policy: StorePolicy,
        bound: OutboxBound,
    ) -> None:
        """Use ``Store.open``; this only wires an already opened connection and its thread."""
        self._path = path
        self._worker = worker
        self._conn: sqlite3.Connection | None = conn
        self._closing = False
        self._policy = policy
        self._bound = bound
        self._synchronous = policy.records_synchronous  # what the connection is set to now
        # Set by a corrupt or I/O failure: the next call opens the file anew (it may have been replaced).
        self._reopen_due = False
        self._pending: list[_Append] = []  # appends waiting for the next group commit
        self._writer: asyncio.Task[None] | None = None
        self._append_commits = 0

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL", policy: StorePolicy | None = None) -> Store:
        """Open (creating folders and file) and migrate the store; StoreError if it cannot be used.

        ``policy`` (``StorePolicy.from_config``) sets the outbox's bound and durability per class; without
        it the default bound applies and every transaction commits with ``synchronous``.
        """
        if policy is None:
            policy = StorePolicy(records_synchronous=synchronous, telemetry_synchronous=synchronous)
        for name, value in (
            ("synchronous", policy.records_synchronous),
            ("synchronous", policy.telemetry_synchronous),
        ):
            if value.upper() not in SYNCHRONOUS_MODES:
                allowed = ", ".join(sorted(SYNCHRONOUS_MODES))
                raise StoreError(f"{path}: {name} must be one of {allowed}, not {value!r}")
        policy = replace(
            policy,
            records_synchronous=policy.records_synchronous.upper(),
            telemetry_synchronous=policy.telemetry_synchronous.upper(),
        )
        bound = OutboxBound(policy.max_rows, policy.max_bytes, policy.telemetry_streams)
        worker = StoreWorker()
        try:
            conn = await worker.run(lambda: _open_with_totals(Path(path), policy, bound))
        except BaseException:
            worker.shutdown()
            raise
        _log.info(
            "store opened",
            path=str(path),
            synchronous=policy.records_synchronous,
            telemetry_synchronous=policy.telemetry_synchronous,
            schema=SCHEMA_VERSION,
            outbox_rows=bound.rows,
            outbox_bytes=bound.bytes,
        )
        return cls(Path(path), worker, conn, policy=policy, bound=bound)

    @property
    def policy(self) -> StorePolicy:
        """The bound and durability this store applies."""
        return self._policy

    def stats(self) -> OutboxStats:
        """The outbox's rows and bytes against its limits and the telemetry dropped per stream (in memory)."""
        return self._bound.stats()

    async def reopen(self) -> None:
        """Close the connection and open the file anew (a replaced or repaired file needs a new connection);
        StoreError when it still cannot be opened (the next call tries again)."""
        await self._call("reopen", lambda _conn: None, reopen=True)

    async def append(self, event: Event, messages: Sequence[OutboxMessage]) -> int:
        """Journal ``event`` and queue its messages in one transaction; return the journal id once committed.

        A job's queued entry also takes its order id (OrderConflict, nothing written, if another job has it).
        Appends arriving while the store thread writes the previous ones are committed together, each fact
        still all or nothing on its own.
        """
        what = f"append {event.kind}"
        if self._closing:
            raise StoreError(f"{self._path}: {what}: the store is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(event, messages, what, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_appends(), name="store:group-commit")
        return await future

    @property
    def append_commits(self) -> int:
        """Transactions that committed appends so far (one per group): a diagnostics and test counter."""
        return self._append_commits

    async def _write_appends(self) -> None:
        """The one writer of appends: each round commits every append queued while the last one ran."""
        while self._pending:
            group = [a for a in self._pending if not a.future.done()]  # a cancelled caller is not written
            self._pending = []
            if not group:
                continue
            try:
                outcomes = await self._append_group(group)
            except BaseException:
                for a in group:
                    if not a.future.done():
                        a.future.set_exception(StoreError(f"{self._path}: {a.what}: interrupted"))
                raise
            for a, outcome in zip(group, outcomes, strict=True):
                if a.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    a.future.set_exception(outcome)
                else:
                    a.future.set_result(outcome)

    async def _append_group(self, group: Sequence[_Append]) -> list[int | BaseException]:
        """Write ``group`` in one transaction on the store thread: per fact its journal id or its error."""
        policy, bound, path = self._policy, self._bound, self._path

        def fact(conn: sqlite3.Connection, a: _Append) -> int:
            event, messages = a.event, a.messages
            data_json = _dumps(event.to_data(), f"{event.kind} event")
            bodies = [_dumps(m.body, f"message to {m.topic}") for m in messages]
            added = [(str(m.stream), outbox.size_of(m, b)) for m, b in zip(messages, bodies, strict=True)]
            conn.execute("SAVEPOINT fact")
            try:
                # The bound first: a fact that cannot fit writes nothing, its journal entry included.
                dropped = bound.make_room(conn, len(added), sum(size for _, size in added)) if added else {}
                journal_id = journal.insert(conn, event, data_json)
                if isinstance(event, JobEvent):
                    orders.claim(conn, event, journal_id)
                outbox.insert(conn, journal_id, event.ts, messages, bodies)
            except BaseException:
                # A failed statement may have ended the whole transaction (disk full): then the group fails.
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO fact")
                    conn.execute("RELEASE fact")
                raise
            conn.execute("RELEASE fact")
            # Applied now so the next fact's make_room counts these rows; undone if the COMMIT fails.
            bound.committed(added=added, dropped=dropped)
            if dropped:
                drops.append((dropped, bound.stats().dropped_total))
            return journal_id

        drops: list[tuple[dict[str, outbox.StreamTotals], int]] = []  # logged once committed

        def work() -> list[int | BaseException]:
            if self._reopen_due:
                self._reopen()
            conn = self._conn
            if conn is None:
                return [StoreError(f"{path}: {a.what}: the store is closed") for a in group]
            records = any(policy.is_record(a.event, a.messages) for a in group)
            mode = policy.records_synchronous if records else policy.telemetry_synchronous
            if mode != self._synchronous:
                # Per transaction, set outside it: records reach the disk at COMMIT, telemetry may lag.
                conn.execute(f"PRAGMA synchronous = {mode}")
                self._synchronous = mode
            saved = bound.checkpoint()
            outcomes: list[int | BaseException] = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for a in group:
                    try:
                        outcomes.append(fact(conn, a))
                    except Exception as exc:
                        if not conn.in_transaction:
                            raise
                        outcomes.append(exc)
                if all(isinstance(o, BaseException) for o in outcomes):
                    conn.execute("ROLLBACK")  # nothing to keep: no commit, no sync
                else:
                    conn.execute("COMMIT")
            except BaseException:
                bound.restore(saved)
                drops.clear()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return outcomes

        try:
            outcomes = await self._worker.run(work)
        except Exception as exc:
            return [self._failure(exc, a.what) for a in group]
        if any(not isinstance(o, BaseException) for o in outcomes):
            self._append_commits += 1
        for dropped, dropped_total in drops:
            _log.warning(
                "outbox full: oldest telemetry dropped",
                path=str(path),
                dropped={s: t.rows for s, t in dropped.items()},
                dropped_total=dropped_total,
            )
        return [
            o if isinstance(o, int) else self._failure(o, a.what)
            for o, a in zip(outcomes, group, strict=True)
        ]

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

    async def outbox_by_stream(
        self,
        after: Mapping[str, int],
        limit: int,
        *,
        streams: Collection[str] | None = None,
        skip: Collection[str] = (),
    ) -> dict[str, list[OutboxRow]]:
        """Per stream, the oldest ``limit`` queued messages with id > ``after[stream]`` (0 if absent).

        ``streams`` None reads every stream but those in ``skip``; streams with nothing past their cursor
        are left out. One indexed range read per stream, all in one call on the store thread.
        """
        cursors = dict(after)
        wanted = None if streams is None else list(streams)
        skipped = list(skip)

        def work(conn: sqlite3.Connection) -> dict[str, list[OutboxRow]]:
            return outbox.select_streams(conn, after=cursors, limit=limit, streams=wanted, skip=skipped)

        return await self._call("read outbox", work, background=True)

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete acknowledged messages, all in one transaction (one commit for the group)."""
        if not ids:
            return
        id_list = list(ids)

        bound = self._bound

        def work(conn: sqlite3.Connection) -> None:
            # A delete lost in a power cut only sends those rows again (same msg_id, consumers drop them):
            # no fsync here, so acknowledgements never queue behind the records' commits.
            if self._synchronous != "NORMAL":
                conn.execute("PRAGMA synchronous = NORMAL")
                self._synchronous = "NORMAL"
            with _transaction(conn):
                removed = outbox.delete_acked(conn, id_list)
            bound.committed(removed=removed)

        await self._call("ack outbox", work, background=True)

    async def last_outbox_id(self) -> int:
        """The newest queued message's id (0 when the outbox is empty)."""
        return await self._call("read outbox", outbox.last_id)

    async def outbox_count(self) -> int:
        """Messages waiting for the broker."""
        return await self._call("count outbox", outbox.count)

    async def sequences(self) -> dict[str, int]:
        """The last sequence number handed out per telemetry stream."""
        return await self._call("read sequences", outbox.sequences)

    async def get_meta(self, key: str) -> str | None:
        """The value kept under ``key`` in the meta table (None when there is none)."""
        return await self._call(f"read meta {key!r}", lambda conn: meta.get(conn, key))

    async def set_meta(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` in the meta table, replacing what was there (committed on return)."""

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                meta.put(conn, key, value)

        await self._call(f"write meta {key!r}", work)

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
        pending, self._pending = self._pending, []
        for a in pending:
            if not a.future.done():
                a.future.set_exception(StoreError(f"{self._path}: {a.what}: the store is closed"))
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await self._worker.run(conn.close)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: close failed: {exc}") from exc
        finally:
            self._worker.shutdown()
            if self._writer is not None:
                # Its group ran before the close on the store thread: it only has answers left to hand out.
                await asyncio.wait({self._writer})
        _log.info("store closed", path=str(self._path))

    async def set_page_limit(self, pages: int) -> int:
        """Test and diagnostics hook: cap the file at ``pages`` pages on this connection (``PRAGMA
        max_page_count``; a write past it fails as a full disk does); returns the limit in effect."""

        def work(conn: sqlite3.Connection) -> int:
            (limit,) = conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()
            return int(limit)

        return await self._call("set page limit", work)

    async def _call(
        self,
        what: str,
        work: Callable[[sqlite3.Connection], _T],
        *,
        reopen: bool = False,
        background: bool = False,
    ) -> _T:
        """Run ``work`` on the store thread; ``background`` (the publisher's reads and deletes) waits for
        every call of the cell queued meanwhile."""
        if self._closing:
            raise StoreError(f"{self._path}: {what}: the store is closed")

        def run() -> _T:
            # On the store thread, one call at a time: a reopen in progress is never seen half done.
            if reopen or self._reopen_due:
                self._reopen()
            if self._conn is None:
                raise StoreError(f"{self._path}: {what}: the store is closed")
            return work(self._conn)

        try:
            return await self._worker.run(run, background=background)
        except (OutboxFullError, sqlite3.Error) as exc:
            raise self._failure(exc, what) from exc

    def _failure(self, exc: BaseException, what: str) -> BaseException:
        """The error a caller gets for ``exc`` raised by ``what``: the outbox's refusal and SQLite's errors
        classified (a corrupt file or an I/O error makes the next call reopen it), others as they are."""
        error: BaseException
        if isinstance(exc, OutboxFullError):
            error = OutboxFull(f"{self._path}: {what} refused: {exc}; {OutboxFull.advice}")
        elif isinstance(exc, sqlite3.Error):
            error = classify(exc, self._path, f"{what} failed")
            if isinstance(error, StoreCorrupt | StoreIOError):
                self._reopen_due = True
        else:
            return exc
        error.__cause__ = exc
        return error

    def _reopen(self) -> None:
        """On the store thread: a new connection to the file and totals read again from it."""
        old, self._conn = self._conn, None
        if old is not None:
            with suppress(sqlite3.Error):
                old.close()
        self._reopen_due = True  # until the new connection is up
        try:
            self._conn = _open_with_totals(self._path, self._policy, self._bound)
        except StoreError:
            # Keep a (closed) handle so the next call comes here again instead of reporting "closed".
            self._conn = old
            raise
        self._synchronous = self._policy.records_synchronous
        self._reopen_due = False
        _log.warning("store reopened", path=str(self._path), outbox_rows=self._bound.rows)


_CAUSES: dict[int, type[StoreError]] = {
    sqlite3.SQLITE_FULL: StoreFull,
    sqlite3.SQLITE_BUSY: StoreLocked,
    sqlite3.SQLITE_LOCKED: StoreLocked,
    sqlite3.SQLITE_CORRUPT: StoreCorrupt,
    sqlite3.SQLITE_NOTADB: StoreCorrupt,
    sqlite3.SQLITE_IOERR: StoreIOError,
}
_MESSAGES: tuple[tuple[str, type[StoreError]], ...] = (
    ("database or disk is full", StoreFull),
    ("database is locked", StoreLocked),
    ("database table is locked", StoreLocked),
    ("file is not a database", StoreCorrupt),
    ("malformed", StoreCorrupt),
    ("disk i/o error", StoreIOError),
)


def classify(exc: sqlite3.Error, path: Path, what: str) -> StoreError:
    """The StoreError subclass of a sqlite3 error (by its primary result code, else its message), with a
    message naming the file, what failed and what a person can do."""
    code = getattr(exc, "sqlite_errorcode", None)
    kind: type[StoreError] = StoreError
    if isinstance(code, int) and (code & 0xFF) in _CAUSES:
        kind = _CAUSES[code & 0xFF]
    else:
        text = str(exc).lower()
        kind = next((k for needle, k in _MESSAGES if needle in text), StoreError)
    if kind is StoreError:
        return StoreError(f"{path}: {what}: {exc}")
    return kind(f"{path}: {what}: {exc} ({kind.cause}: {kind.advice})")


def _open_with_totals(path: Path, policy: StorePolicy, bound: OutboxBound) -> sqlite3.Connection:
    """Open the file (on the store thread) and read the outbox's totals from it."""
    conn = _connect(path, policy.records_synchronous, policy.busy_timeout_ms)
    try:
        bound.load(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise classify(exc, path, "cannot open") from exc
    return conn


def _connect(path: Path, synchronous: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """Open, configure and migrate the file (runs on the store thread)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create its folder: {exc}") from exc
    try:
        # Autocommit mode: transactions are explicit BEGIN IMMEDIATE ... COMMIT, never implicit.
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise classify(exc, path, "cannot open") from exc
    try:
        # Refused before any PRAGMA that writes: a file this code must not open is left as it is.
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        check_version(conn, path)
        _configure(conn, path, synchronous, busy_timeout_ms)
        _migrate(conn, path)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise classify(exc, path, "cannot open") from exc
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, synchronous: str, busy_timeout_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    (journal_mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(journal_mode).lower() != "wal":
        raise StoreError(f"{path}: cannot use write-ahead logging here (journal_mode is {journal_mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")


def schema_version(conn: sqlite3.Connection) -> int | None:
    """The file's schema version: 0 for a file without tables (new), None for a database that is not a
    store (tables but no ``schema_version``). Reads only."""
    (tables,) = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    if int(tables) == 0:
        return 0
    known = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if known is None:
        return None
    (version,) = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return 0 if version is None else int(version)


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version, one this code can open (older ones are migrated); StoreTooNew for a file
    of a newer cellctl, StoreError for a database that is not a store."""
    version = schema_version(conn)
    if version is None:
        raise StoreError(f"{path}: a SQLite database but not a cellctl store (no schema_version table)")
    if version > SCHEMA_VERSION:
        raise StoreTooNew(
            f"{path}: written by a newer cellctl (schema version {version}; this one knows up to "
            f"{SCHEMA_VERSION}); refusing to open it, the file is left as it is: {StoreTooNew.advice}"
        )
    return version


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Take the file to SCHEMA_VERSION in ONE transaction: a failing step leaves it at its old version."""
    with _transaction(conn):
        # Read again under the write lock: another process may have migrated it since check_version.
        current = check_version(conn, path)
        if current == SCHEMA_VERSION:
            return
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            try:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise StoreError(
                    f"{path}: migrating schema version {version - 1} to {version} failed: {exc}; the file is "
                    f"left at version {current}, unchanged"
                ) from exc
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    _log.info("store migrated", path=str(path), schema=SCHEMA_VERSION, previous=current)


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
