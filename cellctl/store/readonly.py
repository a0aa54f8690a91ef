"""Reading a store file beside a running controller: opened read-only, never created, migrated or written."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cellctl.errors import StoreError

_T = TypeVar("_T")


def read_only(path: Path, what: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """``work`` on the store file at ``path`` opened read-only; StoreError naming ``what`` on any failure.

    Blocking (run it in a thread from async code). A missing file is an error, never created.
    """
    if not path.is_file():
        raise StoreError(f"{path}: no store file here")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open read-only: {exc}") from exc
    try:
        return work(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read {what}: {exc}") from exc
    finally:
        conn.close()


__all__ = ["read_only"]
