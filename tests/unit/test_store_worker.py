"""The store's thread: one call at a time, the cell's calls ahead of the publisher's background ones."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cellctl.store.worker import StoreWorker

WAIT_S = 5.0


@pytest.fixture
async def worker() -> AsyncIterator[StoreWorker]:
    w = StoreWorker()
    yield w
    w.shutdown()


@contextlib.asynccontextmanager
async def _busy(worker: StoreWorker) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """The thread kept busy through the block; the calls the block adds to the list are awaited after it."""
    started, release = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        release.wait(WAIT_S)

    holder = asyncio.create_task(worker.run(busy))
    assert await asyncio.to_thread(started.wait, WAIT_S)
    calls: list[asyncio.Task[Any]] = []
    try:
        yield calls
        await asyncio.sleep(0)  # every call queued while the thread is busy
    finally:
        release.set()
    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(holder, *calls)


async def test_calls_queued_in_the_foreground_run_before_the_background_ones_each_in_order(
    worker: StoreWorker,
) -> None:
    ran: list[str] = []
    async with _busy(worker) as calls:
        for name in ("bg1", "fg1", "bg2", "fg2"):
            call = worker.run(lambda name=name: ran.append(name), background=name.startswith("bg"))
            calls.append(asyncio.create_task(call))
    assert ran == ["fg1", "fg2", "bg1", "bg2"]


async def test_a_result_and_an_exception_come_back_to_the_caller(worker: StoreWorker) -> None:
    assert await worker.run(lambda: threading.current_thread().name) != threading.current_thread().name

    def fail() -> None:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        await worker.run(fail, background=True)


async def test_a_call_cancelled_before_it_started_never_runs_and_the_next_still_does(
    worker: StoreWorker,
) -> None:
    ran: list[str] = []
    async with _busy(worker) as calls:
        doomed = asyncio.create_task(worker.run(lambda: ran.append("cancelled")))
        calls.append(asyncio.create_task(worker.run(lambda: ran.append("kept"), background=True)))
        await asyncio.sleep(0)
        doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert ran == ["kept"]


async def test_shutdown_runs_what_is_queued_and_refuses_new_calls() -> None:
    worker = StoreWorker()
    ran: list[str] = []
    async with _busy(worker) as calls:
        calls.append(asyncio.create_task(worker.run(lambda: ran.append("queued"), background=True)))
        await asyncio.sleep(0)
        worker.shutdown()
    assert ran == ["queued"]
    with pytest.raises(RuntimeError):
        await worker.run(lambda: None)
