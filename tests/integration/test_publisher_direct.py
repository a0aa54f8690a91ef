"""The publisher hands outbox messages to paho directly (``_DirectPublish``): what it relies on in aiomqtt.

``_DirectPublish`` reaches into aiomqtt's private paho client; these tests fail loudly when an aiomqtt release
changes what it relies on (aiomqtt is pinned below 2.6 in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import uuid

import aiomqtt
import paho.mqtt.client as paho
import pytest

from cellctl.telemetry.encoding import Outgoing
from cellctl.telemetry.publisher import _DirectPublish
from tests.fixtures.broker import Mosquitto, collect

pytestmark = pytest.mark.broker

WAIT_S = 10.0


async def test_aiomqtt_keeps_the_private_paho_client_and_publish_hook_direct_publish_relies_on() -> None:
    version = tuple(int(part) for part in importlib.metadata.version("aiomqtt").split(".")[:2])
    assert (2, 5) <= version < (2, 6), f"aiomqtt {version}: re-check _DirectPublish against this release"
    client = aiomqtt.Client("127.0.0.1", 1)
    inner = client._client
    assert isinstance(inner, paho.Client), "aiomqtt.Client._client is no longer paho's client"
    assert inner.on_publish == client._on_publish, "aiomqtt no longer settles its publishes in on_publish"


async def test_direct_publish_calls_back_at_puback_on_the_loop_thread_and_keeps_aiomqtt_publish_working(
    broker: Mosquitto,
) -> None:
    topic = f"cellctl-test/direct/{uuid.uuid4().hex[:8]}"
    loop_thread = threading.get_ident()
    acked: list[tuple[int, int]] = []
    all_acked = asyncio.Event()
    async with (
        collect(broker.host, broker.port, f"{topic}/#") as seen,
        aiomqtt.Client(broker.host, broker.port) as client,
    ):

        def on_acked(token: int) -> None:
            acked.append((token, threading.get_ident()))
            if len(acked) == 20:
                all_acked.set()

        direct = _DirectPublish(client, on_acked)
        for i in range(20):
            direct.publish(Outgoing(f"{topic}/{i}", f"{i}".encode(), qos=1), i)
        # aiomqtt's own awaited publish still completes with the hook installed.
        async with asyncio.timeout(WAIT_S):
            await client.publish(f"{topic}/awaited", b"x", qos=1)
            await all_acked.wait()
        await seen.wait_until(lambda messages: len(messages) >= 21, timeout=WAIT_S)
        assert direct.waiting == 0
    assert [i for i, _ in acked] == list(range(20))
    assert {thread for _, thread in acked} == {loop_thread}
    assert [m.topic for m in seen.messages] == [*(f"{topic}/{i}" for i in range(20)), f"{topic}/awaited"]


async def test_direct_publish_on_a_dropped_link_raises_a_link_error(broker: Mosquitto) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        direct = _DirectPublish(client, lambda _token: None)
        client._client.disconnect()
        async with asyncio.timeout(WAIT_S):
            await client._disconnected  # paho's socket is closed: it can no longer queue a publish
        with pytest.raises(aiomqtt.MqttCodeError):
            direct.publish(Outgoing("cellctl-test/direct/dropped", b"x", qos=1), 0)
