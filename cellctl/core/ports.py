"""Protocols the engine and runtime need from adapters (drivers, store): the seams between layers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from cellctl.core.events import Event
from cellctl.core.tags import TagBackend


class LinkState(StrEnum):
    """Health of a device link, as state (never an exception)."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Health:
    """Link state of one device, since when (monotonic s), and the last error if any."""

    device: str
    state: LinkState
    since: float
    error: str = ""


HealthCallback = Callable[[Health], None]


class Driver(TagBackend, Protocol):
    """A device connection: a TagBackend plus a supervisor loop that owns the link."""

    @property
    def health(self) -> Health:
        """Current link health."""
        ...

    def on_health(self, callback: HealthCallback) -> Callable[[], None]:
        """Call back on every health change; returns the unsubscribe function."""
        ...

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff, forever; returns only by cancellation."""
        ...


class EventSink(Protocol):
    """Where the engine records every fact; the runtime journals it and queues its telemetry atomically."""

    async def record(self, event: Event) -> int:
        """Durably record one event and return its journal id; raises StoreError if it cannot."""
        ...


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """An order id the store holds: the job it made, its content digest and that job's latest journaled event.

    ``content_hash`` is empty for an order accepted before the store kept order content.
    """

    order_id: str
    job_id: str
    content_hash: str
    submitted_at: float
    submitted_by: str
    last_ts: float
    last_data: Mapping[str, Any]


class OrderBook(Protocol):
    """The store's order ids, one job each: what a submit consults before making a job."""

    async def find_order(self, order_id: str) -> OrderRecord | None:
        """The order id's record, None when the store has never accepted it."""
        ...
