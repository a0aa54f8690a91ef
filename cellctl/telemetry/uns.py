"""The default wire encoding: a Unified Namespace of JSON envelopes, a retained ``status`` birth and will."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from cellctl import __version__
from cellctl.schema.cell import Identity
from cellctl.store import OutboxRow
from cellctl.telemetry.encoding import Outgoing, Reaction
from cellctl.telemetry.payloads import CellIdentityData, StatusMessage, StreamInfo, schema_id
from cellctl.telemetry.topics import STREAM_TOPICS, envelope_json, status_topic, topic_root

_BIRTH_ONLY = frozenset({"cell", "encoding", "streams", "started_ts"})
"""Status fields the birth carries and the will leaves out (the will stays small)."""


class UnsJsonEncoding:
    """Each outbox row as-is on its UNS topic; ``<root>/status`` says online (birth) or offline (will)."""

    name = "uns-json"

    def __init__(self, identity: Identity, client_id: str, *, started_ts: float | None = None) -> None:
        """Encode for the cell of ``identity``, whose MQTT session is ``client_id``.

        ``started_ts`` is when this controller run started (epoch seconds; default: now), told in births.
        """
        self._status_topic = status_topic(identity)
        self._client_id = client_id
        self._started_ts = time.time() if started_ts is None else started_ts
        root = topic_root(identity)
        self._cell = CellIdentityData.model_validate(identity.model_dump())
        self._streams = [
            StreamInfo(
                stream=t.stream,
                topic=f"{root}/{t.filter}",
                schema_id=schema_id(t.stream),
                retained=t.retained,
            )
            for t in STREAM_TOPICS
        ]

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
        """The retained ``online`` status with the cell's metadata: identity, version, encoding, streams."""
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
        if status == "offline":
            small = StatusMessage(
                status=status, client_id=self._client_id, version=__version__, ts=ts, reason=reason
            )
            return small.model_dump_json(by_alias=True, exclude=set(_BIRTH_ONLY)).encode()
        birth = StatusMessage(
            status=status,
            client_id=self._client_id,
            version=__version__,
            ts=ts,
            reason=reason,
            cell=self._cell,
            encoding=self.name,
            streams=self._streams,
            started_ts=self._started_ts,
        )
        return birth.model_dump_json(by_alias=True).encode()
