"""Group commit: concurrent appends share one transaction, each fact still all or nothing on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from cellctl.core.events import DeviceHealthChanged, JobEvent, JobStatus, OperatorAction
from cellctl.errors import OrderConflict, OutboxFull, StoreError, StoreFull
from cellctl.store import OutboxMessage, Store, StorePolicy

N = 20


def health(n: int) -> DeviceHealthChanged:
    return DeviceHealthChanged(ts=float(n), device="robot1", state="up")


def job(n: int, *, order: int | None = None) -> JobEvent:
    return JobEvent(
        ts=float(n),
        job=f"J{n}",
        order_id=f"O-{n if order is None else order}",
        variant="oslo",
        recipe_version=1,
        recipe_hash="abc",
        quantity=1,
        status=JobStatus.QUEUED,
        parameters={},
        order_hash="h",
    )


def message(stream: str, n: int, pad: int = 0) -> OutboxMessage:
    return OutboxMessage(topic=f"a/b/{stream}", stream=stream, body={"n": n, "pad": "x" * pad})


def queued(path: Path) -> list[tuple[int, str, int, int]]:
    """(journal id, stream, seq, body n) of every queued row in id order, read by a second connection."""
    with closing(sqlite3.connect(path)) as conn:
        return [
            (int(j), str(s), int(q), int(n))
            for j, s, q, n in conn.execute(
                "SELECT journal_id, stream, seq, json_extract(body, '$.n') FROM outbox ORDER BY id"
            )
        ]


async def fresh_stats(store: Store) -> tuple[int, int, dict[str, int]]:
    """The totals a new connection reads from the file (what a reopen would load)."""
    other = await Store.open(store.path, policy=store.policy)
    try:
        s = other.stats()
        return s.rows, s.bytes, s.dropped
    finally:
        await other.close()


def totals(store: Store) -> tuple[int, int, dict[str, int]]:
    s = store.stats()
    return s.rows, s.bytes, s.dropped


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "c.db")
    yield s
    await s.close()


async def test_concurrent_appends_share_commits_and_keep_call_order(store: Store) -> None:
    facts = [
        (job(n), [message("job", n), message("state", n)]) if n % 2 else (health(n), [message("health", n)])
        for n in range(N)
    ]

    ids = await asyncio.gather(*(store.append(event, messages) for event, messages in facts))

    assert store.append_commits < N
    assert ids == sorted(ids) and len(set(ids)) == N  # journal ids in call order
    rows = queued(store.path)
    assert [n for _, _, _, n in rows] == [n for n in range(N) for _ in (1, 2) if n % 2 or _ == 1]
    for stream in ("job", "state", "health"):
        assert [q for _, s, q, _ in rows if s == stream] == list(range(1, N // 2 + 1))  # contiguous
    assert {j for j, _, _, _ in rows} == set(ids)
    assert [e.id for e in await store.journal()] == ids


async def test_a_lone_append_is_one_commit(store: Store) -> None:
    for n in range(3):
        await store.append(job(n), [message("job", n)])
    assert store.append_commits == 3


async def test_a_failing_fact_fails_alone_and_its_group_commits(store: Store) -> None:
    await store.append(job(0), [message("job", 0)])
    before = store.append_commits

    results = await asyncio.gather(
        store.append(job(1), [message("job", 1)]),
        store.append(job(2, order=0), [message("job", 2)]),  # order O-0 belongs to J0
        store.append(health(3), [message("health", 3)]),
        return_exceptions=True,
    )

    assert isinstance(results[1], OrderConflict)
    assert all(isinstance(r, int) for r in (results[0], results[2]))
    assert store.append_commits == before + 1
    assert [(s, n) for _, s, _, n in queued(store.path)] == [("job", 0), ("job", 1), ("health", 3)]
    assert [q for _, s, q, _ in queued(store.path) if s == "job"] == [1, 2]  # the failed fact took no seq
    record = await store.find_order("O-0")
    assert record is not None and record.job_id == "J0"
    assert totals(store) == await fresh_stats(store)


async def test_a_group_over_the_bound_drops_telemetry_fact_by_fact_then_refuses_records(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "c.db", policy=StorePolicy(max_rows=20))
    try:
        for n in range(15):
            await store.append(job(n), [message("job", n)])
        for n in range(15, 20):
            await store.append(health(n), [message("health", n)])

        results = await asyncio.gather(
            *(store.append(job(n), [message("job", n)]) for n in range(20, 28)),
            store.append(OperatorAction(ts=30.0, action="note", by="op"), []),  # journal only: fits
            return_exceptions=True,
        )

        # Each fact saw the rows of the facts before it in the group: five fit by dropping all five health
        # rows, then only records remain and the rest are refused, writing nothing.
        assert [isinstance(r, int) for r in results] == [True] * 5 + [False] * 3 + [True]
        assert all(isinstance(r, OutboxFull) for r in results[5:8])
        kept = [*range(15), *range(20, 25)]
        assert [(s, n) for _, s, _, n in queued(store.path)] == [("job", n) for n in kept]
        assert store.stats().rows == 20 and store.stats().dropped == {"health": 5}
        assert totals(store) == await fresh_stats(store)
    finally:
        await store.close()


async def test_a_group_that_cannot_commit_fails_every_caller_and_changes_no_total(store: Store) -> None:
    await store.append(job(0), [message("job", 0)])
    before = totals(store)
    pages = await store.set_page_limit(1)  # the pages the file has now
    await store.set_page_limit(pages + 3)  # room for some of the group's rows, not all

    results = await asyncio.gather(
        *(store.append(job(n), [message("job", n, pad=300)]) for n in range(1, 51)),
        return_exceptions=True,
    )

    # The disk filled mid-group: SQLite ended the transaction, so no fact of the group is kept.
    assert all(isinstance(r, StoreFull) for r in results)
    assert totals(store) == before == await fresh_stats(store)
    assert [n for _, _, _, n in queued(store.path)] == [0]
    await store.set_page_limit(1_000_000)
    await store.append(job(51), [message("job", 51)])
    assert [q for _, _, q, _ in queued(store.path)] == [1, 2]


async def test_close_answers_every_pending_append(store: Store) -> None:
    first = [asyncio.create_task(store.append(job(n), [message("job", n)])) for n in range(5)]
    await asyncio.sleep(0)  # the first ones queue
    await asyncio.sleep(0)  # the writer takes them to the store thread
    later = [asyncio.create_task(store.append(job(n), [message("job", n)])) for n in range(5, 10)]
    await asyncio.sleep(0)

    async with asyncio.timeout(5):
        await store.close()
        results = await asyncio.gather(*first, *later, return_exceptions=True)

    assert all(isinstance(r, int | StoreError) for r in results[:5])
    assert all(isinstance(r, StoreError) and "closed" in str(r) for r in results[5:])
    with pytest.raises(StoreError, match="closed"):
        await store.append(job(99), [])


async def test_one_fact_takes_each_streams_next_seqs_in_message_order(store: Store) -> None:
    await store.append(health(0), [message("state", 0)])

    await store.append(
        job(1), [message("state", 1), message("job", 2), message("state", 3), message("job", 4)]
    )

    assert [(s, q, n) for _, s, q, n in queued(store.path)] == [
        ("state", 1, 0),
        ("state", 2, 1),
        ("job", 1, 2),
        ("state", 3, 3),
        ("job", 2, 4),
    ]
    assert await store.sequences() == {"state": 3, "job": 2}
