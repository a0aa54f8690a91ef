"""Durable records: the journal of every fact and the telemetry outbox, in one SQLite file."""

from cellctl.store.db import SCHEMA_VERSION, Store, StorePolicy
from cellctl.store.journal import JournalEntry
from cellctl.store.outbox import OutboxMessage, OutboxRow, OutboxStats

__all__ = [
    "SCHEMA_VERSION",
    "JournalEntry",
    "OutboxMessage",
    "OutboxRow",
    "OutboxStats",
    "Store",
    "StorePolicy",
]
