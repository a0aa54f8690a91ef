"""Backup and restore of the store file: an online consistent copy, its check, and an atomic replacement.

Blocking functions for the command line (a controller's own store is never touched from here). A backup is
taken with SQLite's backup API from a read-only connection: one read transaction, so the copy is the store as
of one commit, the write-ahead log included, while the controller keeps writing. A restore refuses a store in
use, keeps the current file beside it and swaps the backup in with a rename.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cellctl.errors import StoreCorrupt, StoreError, StoreLocked
from cellctl.store.db import SCHEMA_VERSION, check_version, classify

SIDE_FILES = ("-wal", "-shm", "-journal")
"""SQLite's files beside a database: a stale one next to a replaced file would be applied to it."""

SOCKET_PROBE_S = 2.0


@dataclass(frozen=True, slots=True)
class StoreFileInfo:
    """What a checked store file holds."""

    path: Path
    size: int
    schema_version: int
    journal_rows: int
    outbox_rows: int


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did: the backup put in place and where the replaced store was kept (None: no store)."""

    store: StoreFileInfo
    backup: Path
    kept: Path | None


def stamp(now: datetime | None = None) -> str:
    """A UTC timestamp for file names: ``20261127T223000Z``."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def default_backup_path(store: Path, now: datetime | None = None) -> Path:
    """``<store dir>/<stem>.backup-<UTC timestamp><suffix>``, next to the store."""
    return store.with_name(f"{store.stem}.backup-{stamp(now)}{store.suffix or '.db'}")


def inspect(path: Path) -> StoreFileInfo:
    """Open ``path`` read-only and check it: ``PRAGMA integrity_check``, a schema this code knows, the
    journal and outbox counted. StoreCorrupt, StoreTooNew or StoreError naming the file otherwise."""
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        with closing(_uri_connection(path)) as conn:
            problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if problems != ["ok"]:
                shown = "; ".join(problems[:5])
                raise StoreCorrupt(f"{path}: integrity check failed: {shown} ({StoreCorrupt.advice})")
            version = check_version(conn, path)
            if version == 0:
                raise StoreError(f"{path}: an empty database, not a cellctl store")
            (journal_rows,) = conn.execute("SELECT count(*) FROM journal").fetchone()
            (outbox_rows,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
    except sqlite3.Error as exc:
        raise classify(exc, path, "cannot check") from exc
    return StoreFileInfo(path, path.stat().st_size, version, int(journal_rows), int(outbox_rows))


def backup(store: Path, out: Path) -> StoreFileInfo:
    """Copy the store at ``store`` to the new file ``out`` (never overwritten), consistent while a controller
    writes, then check the copy; the copy appears under its name only once checked and on disk."""
    if not store.is_file():
        raise StoreError(f"{store}: no store file here")
    if out.exists():
        raise StoreError(f"{out}: exists; not overwriting it (name another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        _copy(store, tmp)
        _check_copy(tmp, out)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    finally:
        _remove_with_side_files(tmp)
    return inspect(out)


def restore(
    store: Path, source: Path, *, control_socket: Path | None, now: datetime | None = None
) -> Restored:
    """Put the backup ``source`` in place of the store at ``store``; the current file is kept as
    ``<store>.before-restore-<UTC timestamp>``.

    Refused (StoreLocked) while a controller answers on ``control_socket`` or any process holds the store
    open; refused for a backup that fails its check or was written by a newer cellctl. The store path always
    names a whole file: the new one is written beside it, synced, and renamed over it.
    """
    checked = inspect(source)
    if control_socket is not None and socket_is_live(control_socket):
        raise StoreLocked(f"{store}: a controller is running (it answers on {control_socket}); stop it first")
    kept: Path | None = None
    tmp = store.with_name(f".{store.name}.restoring")
    try:
        _copy(source, tmp)
        _check_copy(tmp, source)
        if store.exists():
            with _exclusive(store):
                kept = store.with_name(f"{store.name}.before-restore-{stamp(now)}")
                if kept.exists():
                    raise StoreError(f"{kept}: exists; not overwriting it (wait a second and try again)")
                # The old file keeps its name until the new one takes it: never a moment without a store.
                os.link(store, kept)
        store.parent.mkdir(parents=True, exist_ok=True)
        for suffix in SIDE_FILES:
            with suppress(FileNotFoundError):
                os.unlink(f"{store}{suffix}")
        os.replace(tmp, store)
        _fsync_dir(store.parent)
    finally:
        _remove_with_side_files(tmp)
    return Restored(inspect(store), checked.path, kept)


def socket_is_live(path: Path) -> bool:
    """True when something accepts connections on the Unix socket ``path`` (the server's stale-socket test:
    refused or missing means no controller)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SOCKET_PROBE_S)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StoreError(f"{path}: cannot tell whether a controller listens here: {exc}") from exc
    return True


@contextmanager
def _exclusive(store: Path) -> Iterator[None]:
    """Hold the store so no other process has it open, with its log checkpointed into the file (what is kept
    must be whole); StoreLocked when another process has it open."""
    try:
        conn = sqlite3.connect(store, isolation_level=None, timeout=0)
    except sqlite3.Error as exc:
        raise classify(exc, store, "cannot open") from exc
    try:
        try:
            # In WAL mode an exclusive locking mode cannot start while any other connection has the file
            # open: the test that no controller (nor a report) is using it, not only none writing.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            if not isinstance(classify(exc, store, "lock"), StoreLocked):
                raise classify(exc, store, "cannot take the store for the restore") from exc
            raise StoreLocked(
                f"{store}: in use by another process ({exc}); stop the controller (and any report reading "
                f"it) first: {StoreLocked.advice}"
            ) from exc
        if busy:
            raise StoreLocked(
                f"{store}: its write-ahead log could not be checkpointed; stop what uses it first"
            )
        yield
    finally:
        conn.close()


def _uri_connection(path: Path, mode: str = "ro") -> sqlite3.Connection:
    """``path`` opened in ``mode`` (``ro``, or ``rw``: never created)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _source(path: Path) -> sqlite3.Connection:
    """A connection that only reads ``path`` but may write its -wal and -shm: the last one to close removes
    them (a read-only one would leave them behind, owned by whoever ran the backup); read-only as the
    fallback when the file or its folder may not be written."""
    try:
        conn = _uri_connection(path, "rw")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        return _uri_connection(path)
    return conn


def _copy(source: Path, tmp: Path) -> None:
    """Copy ``source`` into the new file ``tmp`` with the backup API in one step (one read transaction:
    a consistent copy; writers in WAL mode are not blocked), then sync it to disk."""
    _remove_with_side_files(tmp)
    try:
        with closing(_source(source)) as src, closing(sqlite3.connect(tmp, isolation_level=None)) as dst:
            src.backup(dst)
            # One self-contained file (the copy would keep the source's WAL mode): the controller turns
            # write-ahead logging on again when it opens a restored store.
            dst.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise classify(exc, source, "cannot copy") from exc
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_copy(tmp: Path, named: Path) -> None:
    """The copy passes ``inspect``; its errors name ``named`` (the file a person asked about)."""
    try:
        inspect(tmp)
    except StoreError as exc:
        raise type(exc)(str(exc).replace(str(tmp), str(named))) from exc


def _remove_with_side_files(path: Path) -> None:
    for name in (str(path), *(f"{path}{s}" for s in SIDE_FILES)):
        with suppress(FileNotFoundError):
            os.unlink(name)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "SCHEMA_VERSION",
    "Restored",
    "StoreFileInfo",
    "backup",
    "default_backup_path",
    "inspect",
    "restore",
    "socket_is_live",
]
