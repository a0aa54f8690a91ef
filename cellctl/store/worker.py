"""The store's one thread: one call at a time, the cell's own ahead of the publisher's background ones."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")

_Call = tuple["concurrent.futures.Future[Any]", Callable[[], Any]]


class StoreWorker:
    """One thread for one SQLite connection; a call queued in the foreground runs before any background one.

    The publisher reads ahead and deletes acknowledged rows while the cell records: queued in arrival order,
    a record waited behind every publisher call queued before it, and a drain at full speed made each record
    take twice as long (the live line of ``bench/telemetry.py`` b fell from 200 to 120 records a second).
    Background calls still run in their own order, and whenever no foreground call waits.
    """

    def __init__(self) -> None:
        """Start the thread (``ThreadPoolExecutor``'s: joined at interpreter exit after its queue ran)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellctl-store")
        self._lock = threading.Lock()
        self._foreground: deque[_Call] = deque()
        self._background: deque[_Call] = deque()

    async def run(self, fn: Callable[[], _T], *, background: bool = False) -> _T:
        """Run ``fn`` on the thread and return its result (or raise its exception).

        Cancelling the caller before ``fn`` starts means it never runs; once started, it runs to the end.
        RuntimeError after :meth:`shutdown`.
        """
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        with self._lock:
            (self._background if background else self._foreground).append((future, fn))
        try:
            # One turn of the thread per call queued: each turn runs the first call waiting, foreground first.
            self._executor.submit(self._next)
        except RuntimeError:
            with self._lock:
                queue = self._background if background else self._foreground
                queue.remove((future, fn))
            raise
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Run what is queued, then let the thread end; no new calls are taken."""
        self._executor.shutdown(wait=False)

    def _next(self) -> None:
        with self._lock:
            queue = self._foreground or self._background
            if not queue:
                return
            future, fn = queue.popleft()
        if not future.set_running_or_notify_cancel():
            return  # its caller was cancelled before it started
        try:
            result = fn()
        except BaseException as exc:  # handed to the caller, as an executor does
            future.set_exception(exc)
        else:
            future.set_result(result)
