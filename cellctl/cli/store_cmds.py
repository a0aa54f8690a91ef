"""``cellctl backup`` and ``cellctl restore``: a consistent copy of a cell's store, and putting one back.

Exit codes: 0 done; 1 refused or failed (the store in use, a backup that fails its check or is too new, a
file that cannot be read or written); 2 a bad request (arguments or configuration).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cellctl.errors import ConfigError, StoreError
from cellctl.schema.load import LoadedConfig, format_issues, load_config
from cellctl.store.backup import SCHEMA_VERSION, StoreFileInfo, backup, default_backup_path, restore

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_parsers(sub: Any) -> None:
    """Register ``backup`` and ``restore``."""
    bk = sub.add_parser(
        "backup",
        help="copy the cell's store to a new file (safe while the controller runs)",
        description="A consistent copy of the store (SQLite's backup API: the controller may keep running), "
        "checked with PRAGMA integrity_check before it is given its name.",
    )
    bk.add_argument("--config", required=True, help="folder holding cell.yaml, or a cell file")
    bk.add_argument(
        "--out", type=Path, help="the new file (default: next to the store, named with the UTC time)"
    )
    bk.set_defaults(handler=run_backup)
    rs = sub.add_parser(
        "restore",
        help="put a backup in place of the cell's store (the controller stopped)",
        description="Checks the backup, keeps the current store as <store>.before-restore-<UTC time>, and "
        "renames the backup's copy into place. Refused while a controller runs on the store.",
    )
    rs.add_argument("--config", required=True, help="folder holding cell.yaml, or a cell file")
    rs.add_argument("file", type=Path, help="the backup to restore")
    rs.set_defaults(handler=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    """``cellctl backup``."""
    loaded = _load(args.config, "backup")
    if loaded is None:
        return EXIT_USAGE
    store = loaded.resolve(loaded.cell.store.path)
    out: Path = args.out if args.out is not None else default_backup_path(store)
    try:
        info = backup(store, out)
    except StoreError as exc:
        sys.stderr.write(f"cellctl backup: {exc}\n")
        return EXIT_FAILED
    sys.stdout.write(f"backed up {store}\n{_describe(info)}")
    return EXIT_OK


def run_restore(args: argparse.Namespace) -> int:
    """``cellctl restore``."""
    loaded = _load(args.config, "restore")
    if loaded is None:
        return EXIT_USAGE
    store = loaded.resolve(loaded.cell.store.path)
    try:
        done = restore(store, args.file, control_socket=loaded.resolve(loaded.cell.api.socket))
    except StoreError as exc:
        sys.stderr.write(f"cellctl restore: {exc}\n")
        return EXIT_FAILED
    kept = f"the store it replaced kept as {done.kept}" if done.kept else "there was no store to replace"
    sys.stdout.write(f"restored {done.backup} to {store}; {kept}\n{_describe(done.store)}")
    if done.store.schema_version < SCHEMA_VERSION:
        sys.stdout.write(f"the controller migrates it to schema version {SCHEMA_VERSION} when it starts\n")
    return EXIT_OK


def _load(config: str, command: str) -> LoadedConfig | None:
    try:
        return load_config(config)
    except ConfigError as exc:
        sys.stderr.write(f"cellctl {command}: invalid configuration:\n{format_issues(exc)}\n")
        return None


def _describe(info: StoreFileInfo) -> str:
    return (
        f"  file:           {info.path}\n"
        f"  size:           {info.size} bytes\n"
        f"  schema version: {info.schema_version}\n"
        f"  journal rows:   {info.journal_rows}\n"
        f"  outbox rows:    {info.outbox_rows}\n"
        "  integrity:      ok\n"
    )
