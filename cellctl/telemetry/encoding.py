"""What the MQTT link asks of a wire encoding (UNS JSON or Sparkplug B) and of an inbound command handler.

The publisher owns the connection and the outbox; an ``Encoding`` decides what goes on the wire: the last
will, the births after connecting, how each outbox row is turned into messages, and how to react to the
messages it subscribes to (a Sparkplug rebirth request, the primary host's STATE). An ``Inbound`` handler
answers commands that arrive on topics it subscribes to (orders from the MES). Neither imports an MQTT
library: they see topics and bytes only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cellctl.store import OutboxRow


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to put on the wire."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Reaction(StrEnum):
    """What the link does after an encoding looked at a message it subscribed to."""

    NONE = "none"
    """Nothing."""
    REBIRTH = "rebirth"
    """Publish the births again (Sparkplug NCMD ``Node Control/Rebirth``)."""
    READY = "ready"
    """Births may go out and data may flow (the primary host said ONLINE)."""
    NOT_READY = "not_ready"
    """Stop sending data, say goodbye and reconnect (the primary host went OFFLINE)."""


class Encoding(Protocol):
    """How telemetry is put on the wire; one instance lives as long as the publisher."""

    name: str

    async def will(self) -> Outgoing:
        """The last will of the next connection (called once per connection attempt, before it)."""
        ...

    def subscriptions(self) -> Sequence[str]:
        """Topic filters to subscribe to after connecting, before births (may be empty)."""
        ...

    def ready_on_connect(self) -> bool:
        """True when births and data may go out at once; False to wait for a READY reaction."""
        ...

    def births(self, now: float) -> list[Outgoing]:
        """Messages to publish after connecting (once ready) and on a rebirth, before any data."""
        ...

    def encode(self, row: OutboxRow, *, publish_ts: float, historical: bool) -> list[Outgoing]:
        """The messages one outbox row becomes (possibly none); ``historical`` marks replayed backlog."""
        ...

    def on_message(self, topic: str, payload: bytes) -> Reaction:
        """React to a message on one of ``subscriptions()``."""
        ...

    def goodbye(self, now: float) -> Outgoing | None:
        """What to publish on a clean stop before disconnecting (the will does not fire then)."""
        ...


class Inbound(Protocol):
    """A handler of commands arriving over MQTT; its replies go out on the same link."""

    def subscriptions(self) -> Sequence[str]:
        """Topic filters to subscribe to after connecting."""
        ...

    async def handle(self, topic: str, payload: bytes, *, retained: bool) -> list[Outgoing]:
        """Answer one message; never raises for bad input (a malformed command gets an error reply)."""
        ...
