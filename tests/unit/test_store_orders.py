"""The store's orders table: one job per order id, taken with the job's queued entry; old stores migrate."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from cellctl.core.events import JobEvent, JobStatus
from cellctl.errors import OrderConflict
from cellctl.store import SCHEMA_VERSION, Store
from cellctl.store.db import MIGRATIONS


def queued(job_id: str, order_id: str = "PO-1", content: str = "h1", ts: float = 1.0) -> JobEvent:
    return JobEvent(
        ts=ts,
        job=job_id,
        order_id=order_id,
        variant="oslo",
        recipe_version=1,
        recipe_hash="r",
        quantity=2,
        status=JobStatus.QUEUED,
        by="api:mes",
        order_hash=content,
    )


async def test_a_queued_job_takes_its_order_id_and_the_record_shows_its_newest_event(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        await store.append(queued("J1"), [])
        await store.append(
            JobEvent(
                ts=5.0,
                job="J1",
                order_id="PO-1",
                variant="oslo",
                recipe_version=1,
                recipe_hash="r",
                quantity=2,
                status=JobStatus.COMPLETED,
                produced=2,
                good=2,
                order_hash="h1",
            ),
            [],
        )
        record = await store.find_order("PO-1")
        missing = await store.find_order("PO-2")
    finally:
        await store.close()

    assert missing is None
    assert record is not None
    assert (record.job_id, record.content_hash, record.submitted_by) == ("J1", "h1", "api:mes")
    assert (record.submitted_at, record.last_ts, record.last_data["status"]) == (1.0, 5.0, "completed")


@pytest.mark.parametrize(("content", "same"), [("h1", True), ("h2", False)])
async def test_a_second_job_for_a_taken_order_id_is_refused_and_nothing_is_written(
    tmp_path: Path, content: str, same: bool
) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        await store.append(queued("J1"), [])
        before = await store.last_journal_id()
        with pytest.raises(OrderConflict) as info:
            await store.append(queued("J2", content=content), [])
        after = await store.last_journal_id()
    finally:
        await store.close()

    assert (info.value.job_id, info.value.same_content) == ("J1", same)
    assert after == before


async def test_the_same_job_queued_again_after_a_restart_keeps_its_order_id(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        await store.append(queued("J1"), [])
        await store.append(queued("J1", ts=2.0), [])
        record = await store.find_order("PO-1")
    finally:
        await store.close()

    assert record is not None and record.job_id == "J1"


async def test_a_version_1_store_opens_and_its_orders_are_taken_without_a_content_digest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    data = {"job": "J0", "order_id": "PO-OLD", "status": "queued", "by": "api:mes"}
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute(
            "INSERT INTO journal (ts, kind, stream, job_id, data) VALUES (?, 'job', 'job', 'J0', ?)",
            (3.0, json.dumps(data)),
        )
    conn.close()

    store = await Store.open(path)
    try:
        settings = await store.settings()
        record = await store.find_order("PO-OLD")
        with pytest.raises(OrderConflict):
            await store.append(queued("J9", order_id="PO-OLD"), [])
    finally:
        await store.close()

    assert settings["schema_version"] == SCHEMA_VERSION
    assert record is not None
    assert (record.job_id, record.content_hash, record.submitted_by) == ("J0", "", "api:mes")


async def test_a_job_event_that_releases_its_order_id_lets_a_new_job_take_it(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        await store.append(queued("J1"), [])
        released = dataclasses.replace(queued("J1"), status=JobStatus.ABORTED, order_released=True)
        await store.append(released, [])
        freed = await store.find_order("PO-1")
        await store.append(queued("J2", content="h2"), [])
        record = await store.find_order("PO-1")
    finally:
        await store.close()

    assert freed is None
    assert record is not None and (record.job_id, record.content_hash) == ("J2", "h2")
