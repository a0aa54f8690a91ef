"""StoreWatch: the engine's EventSink in front of the store; notes a failing store and keeps what must wait.

A fact the store cannot keep raises StoreError naming the fact, and the watch remembers the failure. Facts
that took effect although they could not be journaled (a state move, an alarm: safety comes before the
journal) are handed to ``defer``; they are journaled first, in the order they happened, by the next record
once the store works again, so the journal tells the story in order. Until the backlog is written no newer
fact is journaled ahead of it. ``retry`` writes the backlog without a new fact: the engine's recovery task
calls it while the store fails.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from cellctl.core.events import Event
from cellctl.core.ports import EventSink
from cellctl.errors import StoreError

MAX_BACKLOG = 1000
"""Deferred facts kept at most; past it the oldest are dropped (logged): memory stays bounded."""

_log = structlog.get_logger(__name__)

_NAMES = ("job", "changeover", "step", "part", "alarm", "state", "status", "action")


def describe(event: Event) -> str:
    """A short name of a fact for messages: its kind and what identifies it (``part J-0002``)."""
    parts = [event.kind]
    for name in _NAMES:
        value = getattr(event, name, None)
        if value is not None and value != "" and not isinstance(value, list | tuple | dict):
            parts.append(f"{name}={getattr(value, 'value', value)}")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class StoreFailure:
    """The last record the store refused: which fact, the store's error, when."""

    fact: str
    error: str
    ts: float
    cause: str = StoreError.cause
    """Its class (``StoreError.cause``: disk_full, locked, corrupt, io_error, outbox_full, error)."""


class StoreWatch:
    """An EventSink over ``sink``: remembers the last failure, journals deferred facts before newer ones."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._backlog: list[Event] = []
        # One record at a time: a backlog being written must not be overtaken by a newer fact.
        self._lock = asyncio.Lock()
        self._failure: StoreFailure | None = None

    @property
    def failure(self) -> StoreFailure | None:
        """The last failure while the store fails; None once a record succeeded after it."""
        return self._failure

    @property
    def backlog(self) -> tuple[Event, ...]:
        """Deferred facts not journaled yet, oldest first."""
        return tuple(self._backlog)

    def defer(self, event: Event, error: StoreError) -> None:
        """``event`` took effect but could not be journaled: journal it before the next fact."""
        _log.error("fact not journaled yet: kept for the journal", fact=describe(event), error=str(error))
        self._backlog.append(event)
        if len(self._backlog) > MAX_BACKLOG:
            dropped = self._backlog.pop(0)
            _log.error("deferred fact dropped: too many wait", fact=describe(dropped), kept=MAX_BACKLOG)

    async def record(self, event: Event) -> int:
        """Journal the backlog, then ``event``; StoreError naming the fact when the store refuses either."""
        async with self._lock:
            try:
                await self._catch_up()
            except StoreError as exc:
                raise self._failed(event, exc, waiting=len(self._backlog)) from exc
            try:
                journal_id = await self._sink.record(event)
            except StoreError as exc:
                raise self._failed(event, exc) from exc
            if self._failure is not None:
                _log.info("store records again", failed_fact=self._failure.fact)
            self._failure = None
            return journal_id

    async def retry(self) -> int:
        """Journal the deferred facts (oldest first) and return how many were written; StoreError (the
        failure kept) when the store still refuses one. Writing nothing proves nothing: the failure stays
        noted until a record succeeds."""
        async with self._lock:
            waiting = len(self._backlog)
            try:
                await self._catch_up()
            except StoreError as exc:
                failure = self._failure
                fact = failure.fact if failure is not None else "a deferred fact"
                error = f"{len(self._backlog)} deferred fact(s) still wait: {exc}"
                self._failure = StoreFailure(
                    fact=fact, error=error, ts=failure.ts if failure else 0.0, cause=exc.cause
                )
                raise
            return waiting

    async def _catch_up(self) -> None:
        while self._backlog:
            event = self._backlog[0]
            await self._sink.record(event)
            self._backlog.pop(0)  # only once journaled: a failure leaves it first in line
            _log.info("deferred fact journaled", fact=describe(event))

    def _failed(self, event: Event, exc: StoreError, *, waiting: int = 0) -> StoreError:
        fact = describe(event)
        error = str(exc) if not waiting else f"{waiting} earlier fact(s) still wait: {exc}"
        self._failure = StoreFailure(fact=fact, error=error, ts=event.ts, cause=exc.cause)
        _log.error("store failed to journal a fact", fact=fact, error=error, cause=exc.cause)
        # The same class (StoreFull, OutboxFull, ...): callers and the alarm see the cause.
        return type(exc)(f"the store could not journal {fact}: {error}")


__all__ = ["MAX_BACKLOG", "StoreFailure", "StoreWatch", "describe"]
