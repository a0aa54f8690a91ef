"""``cellctl backup`` and ``cellctl restore``: a consistent copy while a store is written, the round trip, and
the refusals (a store in use, a controller on the socket, a corrupt or newer backup)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.cli import main
from cellctl.core.events import StateChanged
from cellctl.errors import StoreCorrupt, StoreLocked, StoreTooNew
from cellctl.store import SCHEMA_VERSION, OutboxMessage, Store
from cellctl.store.backup import backup, inspect, restore
from tests.fixtures.cellfolder import cell_folder, quiet_logging

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stores"
TIMEOUT_S = 20.0


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with quiet_logging():
        yield


def fact(n: int) -> tuple[StateChanged, list[OutboxMessage]]:
    event = StateChanged(
        ts=float(n), state="Execute", state_no=6, previous="Starting", command=None, by=f"t{n}"
    )
    return event, [OutboxMessage("acme/state", "state", {"n": n})]


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def filled(path: Path, n: int) -> None:
    store = await Store.open(path)
    try:
        for i in range(n):
            await store.append(*fact(i))
    finally:
        await store.close()


async def test_a_backup_taken_while_a_task_appends_is_consistent_and_opens(tmp_path: Path) -> None:
    path, out = tmp_path / "cell.db", tmp_path / "copy.db"
    store = await Store.open(path)
    started, backed_up = asyncio.Event(), asyncio.Event()
    appended = 0

    async def writer() -> None:
        nonlocal appended
        for i in range(5000):  # bounded: stops once the backup is done and a few more facts are in
            await store.append(*fact(i))
            appended += 1
            if appended == 50:
                started.set()
            if backed_up.is_set() and appended >= at_backup + 20:
                return

    at_backup = 0
    try:
        async with asyncio.timeout(TIMEOUT_S), asyncio.TaskGroup() as tg:
            tg.create_task(writer(), name="test:writer")
            await started.wait()
            info = await asyncio.to_thread(backup, path, out)
            at_backup = appended
            backed_up.set()
    finally:
        await store.close()

    # Each fact wrote one journal row and one outbox row in one transaction: a torn copy would differ.
    assert info.schema_version == SCHEMA_VERSION
    assert info.journal_rows == info.outbox_rows >= 50
    assert appended > info.journal_rows  # the writer went on after the copy's snapshot
    copy = await Store.open(out)
    try:
        entries = await copy.journal(limit=10_000)
    finally:
        await copy.close()
    assert [e.data["by"] for e in entries] == [f"t{i}" for i in range(info.journal_rows)]


async def test_backup_never_overwrites_a_file(tmp_path: Path) -> None:
    path, out = tmp_path / "cell.db", tmp_path / "copy.db"
    await filled(path, 3)
    out.write_bytes(b"precious")

    with pytest.raises(Exception, match=f"{out}: exists; not overwriting it"):
        backup(path, out)

    assert out.read_bytes() == b"precious"


async def test_restore_round_trip_keeps_every_record_and_the_replaced_store(tmp_path: Path) -> None:
    path, saved = tmp_path / "cell.db", tmp_path / "saved.db"
    await filled(path, 10)
    backup(path, saved)
    await filled(path, 5)  # facts after the backup: in the kept file, not in the restored store
    expected = (
        rows(saved, "SELECT * FROM journal ORDER BY id"),
        rows(saved, "SELECT * FROM outbox ORDER BY id"),
    )

    done = restore(path, saved, control_socket=tmp_path / "none.sock")

    assert done.kept is not None and done.kept.name.startswith("cell.db.before-restore-")
    assert (done.store.journal_rows, done.store.outbox_rows) == (10, 10)
    restored = rows(path, "SELECT * FROM journal ORDER BY id"), rows(path, "SELECT * FROM outbox ORDER BY id")
    assert restored == expected
    assert len(restored[0]) == 10
    assert rows(done.kept, "SELECT count(*) FROM journal") == [(15,)]
    assert names(tmp_path) == sorted(["cell.db", done.kept.name, "saved.db"])  # no stale -wal beside it
    store = await Store.open(path)
    try:
        new_id = await store.append(*fact(99))
    finally:
        await store.close()
    assert new_id == 11


async def test_an_old_schema_backup_is_restored_and_migrated_when_opened(tmp_path: Path) -> None:
    path, old = tmp_path / "cell.db", tmp_path / "old.db"
    await filled(path, 2)
    shutil.copyfile(FIXTURES / "store-v1.db", old)

    done = restore(path, old, control_socket=None)
    store = await Store.open(path)
    try:
        settings = await store.settings()
    finally:
        await store.close()

    assert done.store.schema_version == 1
    assert settings["schema_version"] == SCHEMA_VERSION


async def test_restore_is_refused_while_a_process_has_the_store_open(tmp_path: Path) -> None:
    path, saved = tmp_path / "cell.db", tmp_path / "saved.db"
    await filled(path, 3)
    backup(path, saved)
    store = await Store.open(path)  # a controller: its connection stays open while it runs
    try:
        await store.append(*fact(3))
        with pytest.raises(StoreLocked, match=f"{path}: in use by another process"):
            restore(path, saved, control_socket=tmp_path / "none.sock")
        count = await store.last_journal_id()
    finally:
        await store.close()

    assert count == 4
    assert not any(n.startswith("cell.db.before-restore") for n in names(tmp_path))


async def test_restore_is_refused_while_a_controller_answers_on_the_control_socket(tmp_path: Path) -> None:
    path, saved, sock = tmp_path / "cell.db", tmp_path / "saved.db", tmp_path / "c.sock"
    await filled(path, 3)
    backup(path, saved)
    before = path.read_bytes()
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(sock))

    try:
        async with server:
            with pytest.raises(StoreLocked, match=f"a controller is running \\(it answers on {sock}\\)"):
                await asyncio.to_thread(restore, path, saved, control_socket=sock)
    finally:
        server.close()

    assert path.read_bytes() == before


async def test_restore_refuses_a_corrupt_backup_naming_it(tmp_path: Path) -> None:
    path, bad = tmp_path / "cell.db", tmp_path / "bad.db"
    await filled(path, 200)
    backup(path, bad)
    data = bytearray(bad.read_bytes())
    data[2 * 4096 : 3 * 4096] = b"\xa5" * 4096  # a page of the tables overwritten
    bad.write_bytes(bytes(data))
    before = path.read_bytes()

    with pytest.raises(StoreCorrupt, match=str(bad)):
        restore(path, bad, control_socket=None)

    assert path.read_bytes() == before
    assert names(tmp_path) == ["bad.db", "cell.db"]


async def test_restore_refuses_a_backup_of_a_newer_cellctl(tmp_path: Path) -> None:
    path, newer = tmp_path / "cell.db", tmp_path / "newer.db"
    await filled(path, 2)
    backup(path, newer)
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()

    with pytest.raises(StoreTooNew, match=f"{newer}: written by a newer cellctl"):
        restore(path, newer, control_socket=None)

    assert inspect(path).journal_rows == 2


# ------------------------------------------------------------------------------------------------------------
# The command line


async def test_cli_backup_then_restore_print_what_they_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = cell_folder(tmp_path)
    await filled(store, 4)

    code = await asyncio.to_thread(main, ["backup", "--config", str(tmp_path)])
    out = capsys.readouterr().out
    (copy,) = (store.parent / n for n in names(store.parent) if ".backup-" in n)
    assert code == 0
    assert copy.name.startswith("cellctl.backup-") and copy.name.endswith("Z.db")
    for text in (str(copy), f"schema version: {SCHEMA_VERSION}", "journal rows:   4", "outbox rows:    4"):
        assert text in out

    code = await asyncio.to_thread(main, ["restore", "--config", str(tmp_path), str(copy)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"restored {copy} to {store}; the store it replaced kept as {store}.before-restore-" in out


async def test_cli_exit_codes_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = cell_folder(tmp_path)
    await filled(store, 1)
    missing = tmp_path / "missing.db"

    refused = await asyncio.to_thread(main, ["restore", "--config", str(tmp_path), str(missing)])
    err = capsys.readouterr().err
    usage = await asyncio.to_thread(main, ["backup", "--config", str(tmp_path / "nowhere")])

    assert refused == 1 and f"cellctl restore: {missing}: no such file" in err
    assert usage == 2
