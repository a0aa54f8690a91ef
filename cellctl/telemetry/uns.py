"""The default wire encoding: a Unified Namespace of JSON envelopes, a retained ``status`` birth and will."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from cellctl import __version__
from cellctl.schema.cell import Identity
from cellctl.store import OutboxRow
from cellctl.telemetry.encoding import Outgoing, Reaction
from cellctl.telemetry.payloads import StatusMessage
from cellctl.telemetry.topics import envelope_json, status_topic


class UnsJsonEncoding:
    """Each outbox row as-is on its UNS topic; ``<root>/status`` says online (birth) or offline (will)."""

    name = "uns-json"

    def __init__(self, identity: Identity, client_id: str) -> None:
        """Encode for the cell of ``identity``, whose MQTT session is ``client_id``."""
        self._status_topic = status_topic(identity)
        self._client_id = client_id

    @property
    def status_topic(self) -> str:
        """The retained birth / last-will topic."""
        return self._status_topic

    async def will(self) -> Outgoing:
        """A retained ``offline``; fixed when the connection opens, so it carries no timestamp."""
        return Outgoing(self._status_topic, self._status("offline", reason="connection lost"), retain=True)

    def subscriptions(self) -> Sequence[str]:
        """None: the UNS encoding takes no commands."""
        return ()

    def ready_on_connect(self) -> bool:
        """Always: there is no host to wait for."""
        return True

    def births(self, now: float) -> list[Outgoing]:
        """The retained ``online`` status."""
        return [Outgoing(self._status_topic, self._status("online", ts=now), retain=True)]

    def encode(self, row: OutboxRow, *, publish_ts: float, historical: bool) -> list[Outgoing]:
        """The row's envelope on its own topic, with its own QoS and retain flag."""
        payload = envelope_json(row, publish_ts, historical=historical)
        return [Outgoing(row.topic, payload, qos=row.qos, retain=row.retain)]

    def on_message(self, topic: str, payload: bytes) -> Reaction:
        """Nothing is subscribed, so nothing to react to."""
        return Reaction.NONE

    def goodbye(self, now: float) -> Outgoing | None:
        """A retained ``offline`` with the reason ``shutdown``."""
        return Outgoing(self._status_topic, self._status("offline", reason="shutdown", ts=now), retain=True)

    def _status(
        self, status: Literal["online", "offline"], *, reason: str = "", ts: float | None = None
    ) -> bytes:
        payload = StatusMessage(
            status=status, client_id=self._client_id, version=__version__, ts=ts, reason=reason
        )
        return payload.model_dump_json(by_alias=True).encode()
