"""The runtime's event sink: journals each fact with its telemetry in one transaction, then wakes the
publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from cellctl.core.events import Event
from cellctl.schema.cell import Identity
from cellctl.store import OutboxMessage, Store
from cellctl.telemetry.topics import messages_for_root, topic_root

Listener = Callable[[], None]

_log = structlog.get_logger("cellctl.telemetry")


class Recorder:
    """An ``EventSink``: ``record`` returns once the fact and its outbox rows are durable."""

    def __init__(
        self,
        store: Store,
        identity: Identity,
        *,
        telemetry: bool = True,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Record into ``store``; with ``telemetry`` False only the journal is written (MQTT disabled)."""
        self._store = store
        self._root = topic_root(identity)
        self._telemetry = telemetry
        self._listeners: list[Listener] = []
        if wake is not None:
            self._listeners.append(wake.set)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every durable record (e.g. ``publisher.notify``); returns the remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def record(self, event: Event) -> int:
        """Durably record one event and queue its telemetry; returns its journal id (StoreError if not)."""
        messages: list[OutboxMessage] = []
        if self._telemetry:
            try:
                messages = messages_for_root(event, self._root)
            except ValueError as exc:
                # A fact that cannot become telemetry is still a fact: journal it, say why it is not sent.
                _log.error("event not sent as telemetry", kind=event.kind, error=str(exc))
        journal_id = await self._store.append(event, messages)
        if messages:
            for listener in tuple(self._listeners):
                try:
                    listener()
                except Exception:
                    # The fact is already durable: a faulty listener must not make the caller think otherwise.
                    _log.exception("recorder listener failed", listener=repr(listener))
        return journal_id
