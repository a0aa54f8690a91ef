"""Durable records: the journal of every fact and the telemetry outbox, in one SQLite file."""

from cellctl.store.db import SCHEMA_VERSION, Store
from cellctl.store.journal import JournalEntry
from cellctl.store.outbox import OutboxMessage, OutboxRow

__all__ = ["SCHEMA_VERSION", "JournalEntry", "OutboxMessage", "OutboxRow", "Store"]
