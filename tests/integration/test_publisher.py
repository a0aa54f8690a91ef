"""The outbox publisher against a private mosquitto: order, sequence, delete-after-PUBACK, outages, status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from cellctl.core.events import DeviceHealthChanged, StateChanged
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.store import Store
from cellctl.telemetry.payloads import StateMessage, parse_message
from cellctl.telemetry.publisher import OutboxPublisher
from cellctl.telemetry.recorder import Recorder
from cellctl.telemetry.topics import status_topic, topic_root
from tests.fixtures.broker import Collector, Mosquitto, Received, collect
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.telemetry import running

pytestmark = pytest.mark.broker

WAIT_S = 20.0  # generous: a reconnect may wait out one backoff (capped at 0.5 s here)


def publisher_for(store: Store, identity: Identity, host: str, port: int, **mqtt: object) -> OutboxPublisher:
    # The longest keepalive: a link stalled on purpose counts as dead after a keepalive without an answer
    # (1.5 x keepalive at most), and a loaded machine must not turn a short stall into that.
    config = MqttConfig.model_validate({"host": host, "port": port, "keepalive_s": 10, **mqtt})
    return OutboxPublisher(store, config, identity, backoff_base_s=0.05, backoff_cap_s=0.5)


def state(i: int) -> StateChanged:
    return StateChanged(ts=1000.0 + i, state=f"S{i}", state_no=i, previous="x", command=None, by="test")


def payloads(messages: list[Received], topic: str) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages if m.topic == topic]


def has(count: int, topic: str) -> Callable[[list[Received]], bool]:
    return lambda messages: sum(1 for m in messages if m.topic == topic) >= count


def is_status(status: str, topic: str) -> Callable[[list[Received]], bool]:
    def check(messages: list[Received]) -> bool:
        mine = [m for m in messages if m.topic == topic]
        return bool(mine) and json.loads(mine[-1].payload)["status"] == status

    return check


async def wait_online(collector: Collector, identity: Identity) -> None:
    await collector.wait_until(is_status("online", status_topic(identity)), timeout=WAIT_S)


async def delivering(publisher: OutboxPublisher, recorder: Recorder) -> None:
    """Wait until the publisher has delivered a row: its births are acknowledged and its pump runs.

    The broker forwards the birth to subscribers before its PUBACK reaches the publisher, so seeing the
    birth does not mean the publisher is past it; a proxy stalled then would hold the birth, not the rows.
    """
    await recorder.record(DeviceHealthChanged(ts=0.5, device="warmup", state="up"))
    assert await publisher.flush(WAIT_S)


async def wait_online_via(broker: Mosquitto, identity: Identity) -> None:
    """Wait until the publisher's retained birth is on the broker."""
    async with collect(broker.host, broker.port, status_topic(identity)) as c:
        await wait_online(c, identity)


async def test_messages_arrive_in_id_order_with_contiguous_sequence_numbers(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    publisher = publisher_for(store, identity, broker.host, broker.port, window=20)
    recorder = Recorder(store, identity)
    recorder.add_listener(publisher.notify)
    topic = f"{topic_root(identity)}/state"

    async with collect(broker.host, broker.port, f"{topic_root(identity)}/#") as c, running(publisher):
        for i in range(200):
            await recorder.record(state(i))
        await c.wait_until(has(200, topic), timeout=WAIT_S)

    received = payloads(c.messages, topic)
    assert [p["seq"] for p in received] == list(range(1, 201))
    assert [p["data"]["state"] for p in received] == [f"S{i}" for i in range(200)]  # type: ignore[index]
    assert len({p["msg_id"] for p in received}) == 200
    assert all(isinstance(parse_message(json.dumps(p)), StateMessage) for p in received)


async def test_delivered_rows_leave_the_outbox(broker: Mosquitto, store: Store, identity: Identity) -> None:
    publisher = publisher_for(store, identity, broker.host, broker.port)
    recorder = Recorder(store, identity)
    recorder.add_listener(publisher.notify)

    async with running(publisher):
        for i in range(30):
            await recorder.record(state(i))
        drained = await publisher.flush(WAIT_S)

    assert drained
    assert await store.outbox_count() == 0
    assert publisher.delivered == 30


async def test_a_row_stays_in_the_outbox_until_the_broker_acknowledges_it(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    # Given a publisher whose link forwards to the broker but holds the broker's replies
    async with TcpProxy(broker.host, broker.port) as proxy:
        publisher = publisher_for(store, identity, proxy.host, proxy.port)
        recorder = Recorder(store, identity)
        recorder.add_listener(publisher.notify)
        health = f"{topic_root(identity)}/health/robot1"
        async with collect(broker.host, broker.port, f"{topic_root(identity)}/#") as c, running(publisher):
            await wait_online(c, identity)
            await delivering(publisher, recorder)
            proxy.stall()
            # When the broker has the message but its PUBACK cannot arrive
            await recorder.record(DeviceHealthChanged(ts=1.0, device="robot1", state="down"))
            await c.wait_until(has(1, health), timeout=WAIT_S)
            # Then the row is still queued
            assert await store.outbox_count() == 1
            assert publisher.delivered == 1
            # And once the PUBACK arrives it is gone
            proxy.unstall()
            assert await publisher.flush(WAIT_S)
        assert publisher.delivered == 2


async def test_rows_unacknowledged_when_the_link_drops_are_sent_again_with_the_same_ids(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    topic = f"{topic_root(identity)}/state"
    async with TcpProxy(broker.host, broker.port) as proxy:
        publisher = publisher_for(store, identity, proxy.host, proxy.port, window=50)
        recorder = Recorder(store, identity)
        recorder.add_listener(publisher.notify)
        async with collect(broker.host, broker.port, topic) as c, running(publisher):
            await wait_online_via(broker, identity)
            await delivering(publisher, recorder)
            # Given ten messages the broker has taken but whose PUBACKs never came back
            proxy.stall()
            for i in range(10):
                await recorder.record(state(i))
            await c.wait_until(has(10, topic), timeout=WAIT_S)
            # When the link drops and comes back
            await proxy.cut()
            proxy.unstall()
            await proxy.restore()
            # Then the same ten are sent again, and only then leave the outbox
            await c.wait_until(has(20, topic), timeout=WAIT_S)
            assert await publisher.flush(WAIT_S)

    received = payloads(c.messages, topic)
    first, again = received[:10], received[10:]
    assert [(p["msg_id"], p["seq"]) for p in again] == [(p["msg_id"], p["seq"]) for p in first]
    assert [p["seq"] for p in first] == list(range(1, 11))


async def test_a_broker_outage_keeps_rows_and_delivers_all_in_order_when_back(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    topic = f"{topic_root(identity)}/state"
    # The publisher reaches the broker through a proxy, so the test decides when it may reconnect.
    async with TcpProxy(broker.host, broker.port) as proxy:
        publisher = publisher_for(store, identity, proxy.host, proxy.port, window=50)
        recorder = Recorder(store, identity)
        recorder.add_listener(publisher.notify)
        async with running(publisher):
            async with collect(broker.host, broker.port, topic) as before:
                for i in range(10):
                    await recorder.record(state(i))
                await before.wait_until(has(10, topic), timeout=WAIT_S)
            assert await publisher.flush(WAIT_S)

            # Given the broker is stopped
            await proxy.cut()
            await asyncio.to_thread(broker.stop)
            # When 500 messages are recorded meanwhile
            for i in range(10, 510):
                await recorder.record(state(i))
            # Then they are all kept
            assert await store.outbox_count() == 500
            assert not publisher.connected

            # When the broker is back
            await asyncio.to_thread(broker.start)
            async with collect(broker.host, broker.port, topic) as after:
                await proxy.restore()
                await after.wait_until(has(500, topic), timeout=WAIT_S)
                assert await publisher.flush(WAIT_S)

    # Then every message arrived once, in order, with sequence numbers continuing without a gap
    received = payloads(after.messages, topic)
    assert [p["seq"] for p in received] == list(range(11, 511))
    assert [p["data"]["state"] for p in received] == [f"S{i}" for i in range(10, 510)]  # type: ignore[index]
    assert publisher.last_error is not None


async def test_birth_is_a_retained_online_status(broker: Mosquitto, store: Store, identity: Identity) -> None:
    publisher = publisher_for(store, identity, broker.host, broker.port)

    async with running(publisher):
        async with collect(broker.host, broker.port, status_topic(identity)) as c:
            await wait_online(c, identity)
        # A subscriber arriving later still gets it: it is retained
        async with collect(broker.host, broker.port, status_topic(identity)) as late:
            await late.wait_until(has(1, status_topic(identity)), timeout=WAIT_S)

    [birth] = late.on(status_topic(identity))
    body = json.loads(birth.payload)
    assert birth.retain
    assert (body["schema"], body["status"], body["client_id"]) == (
        "cellctl.status/1",
        "online",
        publisher.client_id,
    )
    assert publisher.client_id == f"cellctl-acme-test-a1-l1-{identity.cell}"
    # It carries the cell's metadata: who it is and where each stream goes
    assert body["cell"] == identity.model_dump()
    assert body["encoding"] == "uns-json"
    assert {s["stream"]: s["topic"] for s in body["streams"]}["health"] == f"{topic_root(identity)}/health/+"
    assert body["started_ts"] <= body["ts"]


async def test_a_lost_connection_leaves_a_retained_offline_will_then_birth_again(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    topic = status_topic(identity)
    async with TcpProxy(broker.host, broker.port) as proxy:
        publisher = publisher_for(store, identity, proxy.host, proxy.port)
        async with collect(broker.host, broker.port, topic) as c, running(publisher):
            await wait_online(c, identity)
            # When the link drops without a DISCONNECT
            await proxy.cut()
            await c.wait_until(is_status("offline", topic), timeout=WAIT_S)
            will = json.loads(c.on(topic)[-1].payload)
            assert will["reason"] == "connection lost"
            # Then it comes back online once the link is restored
            await proxy.restore()
            await c.wait_until(is_status("online", topic), timeout=WAIT_S)

    async with collect(broker.host, broker.port, topic) as late:
        await late.wait_until(has(1, topic), timeout=WAIT_S)
    assert late.on(topic)[0].retain


async def test_a_clean_stop_publishes_a_retained_offline_status(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    publisher = publisher_for(store, identity, broker.host, broker.port)
    topic = status_topic(identity)
    async with collect(broker.host, broker.port, topic) as c:
        async with running(publisher):
            await wait_online(c, identity)
        await c.wait_until(is_status("offline", topic), timeout=WAIT_S)

    body = json.loads(c.on(topic)[-1].payload)
    assert body["reason"] == "shutdown"
    assert not publisher.connected


async def test_flush_gives_up_after_its_timeout_when_the_broker_is_unreachable(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    async with TcpProxy(broker.host, broker.port) as proxy:
        await proxy.cut()
        publisher = publisher_for(store, identity, proxy.host, proxy.port)
        recorder = Recorder(store, identity)
        recorder.add_listener(publisher.notify)
        async with running(publisher):
            await recorder.record(state(1))
            drained = await publisher.flush(0.3)

    assert not drained
    assert await store.outbox_count() == 1
    assert not publisher.connected
    assert publisher.delivered == 0


async def test_flush_returns_at_once_when_nothing_is_queued(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    publisher = publisher_for(store, identity, broker.host, broker.port)

    assert await publisher.flush(0.0)


async def test_a_wake_event_shared_with_the_recorder_starts_delivery(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    wake = asyncio.Event()
    config = MqttConfig(host=broker.host, port=broker.port)
    publisher = OutboxPublisher(store, config, identity, wake=wake)
    recorder = Recorder(store, identity, wake=wake)
    topic = f"{topic_root(identity)}/state"

    async with collect(broker.host, broker.port, topic) as c, running(publisher):
        await recorder.record(state(1))
        await c.wait_until(has(1, topic), timeout=WAIT_S)

    assert payloads(c.messages, topic)[0]["seq"] == 1


async def test_a_registration_function_as_wake_subscribes_the_publisher(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    recorder = Recorder(store, identity)
    config = MqttConfig(host=broker.host, port=broker.port)
    publisher = OutboxPublisher(store, config, identity, wake=recorder.add_listener)
    topic = f"{topic_root(identity)}/state"

    async with collect(broker.host, broker.port, topic) as c, running(publisher):
        await recorder.record(state(1))
        await c.wait_until(has(1, topic), timeout=WAIT_S)
        assert await publisher.flush(WAIT_S)

    assert publisher.delivered == 1
