"""Backlog replay against a private mosquitto: live rows are not starved, each stream stays in order."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from cellctl.core.events import DeviceHealthChanged
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.store import OutboxMessage, Store
from cellctl.telemetry.publisher import OutboxPublisher
from cellctl.telemetry.recorder import Recorder
from cellctl.telemetry.topics import topic_root
from tests.fixtures.backlog import check_stream, envelopes, fill_backlog
from tests.fixtures.broker import Mosquitto, Received, collect
from tests.fixtures.telemetry import running

pytestmark = pytest.mark.broker

WAIT_S = 30.0
SEED = 6


def publisher_for(store: Store, identity: Identity, broker: Mosquitto, **mqtt: object) -> OutboxPublisher:
    config = MqttConfig.model_validate({"host": broker.host, "port": broker.port, "keepalive_s": 5, **mqtt})
    return OutboxPublisher(store, config, identity, backoff_base_s=0.05, backoff_cap_s=0.5)


def count_on(stream: str, root: str, n: int) -> object:
    topic = f"{root}/{stream}"
    return lambda ms: sum(1 for m in ms if m.topic == topic) >= n


def health(i: int) -> DeviceHealthChanged:
    return DeviceHealthChanged(ts=time.time(), device=f"dev{i}", state="up")


async def test_live_messages_of_a_stream_without_backlog_overtake_a_10000_message_backlog(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    # Given 10,000 part and quality messages queued while no session was up
    root = topic_root(identity)
    backlog = await fill_backlog(store, root, {"part": 5000, "quality": 5000}, seed=SEED)
    publisher = publisher_for(store, identity, broker, window=50, replay_rate=2000)
    recorder = Recorder(store, identity)
    recorder.add_listener(publisher.notify)
    live = 50

    async with collect(broker.host, broker.port, f"{root}/#") as c, running(publisher):
        # When the replay has begun and health messages (a stream with no backlog) are recorded meanwhile
        await c.wait_until(count_on("part", root, 1), timeout=WAIT_S)
        for i in range(live):
            await recorder.record(health(i))
            await asyncio.sleep(0.01)  # a steady live rate of about 100 msg/s, not a wait on a condition
        await c.wait_until(lambda ms: len(ms) >= backlog + live + 1, timeout=WAIT_S)
        assert await publisher.flush(WAIT_S)

    # Then every health message went out, and arrived, before the backlog was done, with a short delay
    streams = envelopes(c.messages, root)
    replayed = [e for s in ("part", "quality") for e in streams[s]]
    live_msgs = streams["health"]
    assert len(live_msgs) == live and not any(e.historical for e in live_msgs)
    last_backlog = max(e.index for e in replayed)
    assert all(e.index < last_backlog for e in live_msgs), "a live message waited for the whole backlog"
    # Publisher side (recorded -> handed to the wire): what the scheduler decides. A generous bound.
    waits = sorted(e.publish_ts - e.event_ts for e in live_msgs)
    assert waits[-1] < 1.0, f"a live message waited {waits[-1]:.3f} s for the wire while the backlog drained"
    # And the backlog came whole, in order, marked historical
    for stream in ("part", "quality"):
        check_stream(stream, streams[stream], last_seq=5000, window=50, rewinds=0)
        assert all(e.historical for e in streams[stream])
        assert [e.data["n"] for e in streams[stream]] == list(range(5000))
    drain = max(e.publish_ts for e in replayed) - min(e.publish_ts for e in replayed)
    end_to_end = sorted(e.at - e.event_ts for e in live_msgs)
    print(
        f"\nreplay figures: {backlog} backlog sent in {drain:.2f} s ({backlog / drain:.0f} msg/s); "
        f"live recorded->wire p50 {statistics.median(waits) * 1000:.1f} ms max {waits[-1] * 1000:.1f} ms; "
        f"recorded->subscriber p50 {statistics.median(end_to_end) * 1000:.1f} ms "
        f"max {end_to_end[-1] * 1000:.1f} ms"
    )


async def test_a_live_message_of_a_stream_with_backlog_waits_behind_that_backlog(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    # Given 2,000 part messages queued while no session was up
    root = topic_root(identity)
    await fill_backlog(store, root, {"part": 2000}, seed=SEED)
    publisher = publisher_for(store, identity, broker, window=20, replay_rate=1000)
    async with collect(broker.host, broker.port, f"{root}/#") as c, running(publisher):
        await c.wait_until(count_on("part", root, 1), timeout=WAIT_S)
        # When a live part message is queued during the replay
        await store.append(
            DeviceHealthChanged(ts=time.time(), device="x", state="up"),
            [OutboxMessage(topic=f"{root}/part", stream="part", body={"n": 2000})],
        )
        publisher.notify()
        await c.wait_until(count_on("part", root, 2001), timeout=WAIT_S)

    # Then it comes after every backlog message of its stream, not historical, seq contiguous
    parts = envelopes(c.messages, root)["part"]
    check_stream("part", parts, last_seq=2001, window=20, rewinds=0)
    assert [e.data["n"] for e in parts] == list(range(2001))
    assert [e.historical for e in parts[-2:]] == [True, False]


async def test_backlog_is_replayed_no_faster_than_the_replay_rate(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    root = topic_root(identity)
    await fill_backlog(store, root, {"state": 600}, seed=SEED)
    publisher = publisher_for(store, identity, broker, replay_rate=1000)
    async with collect(broker.host, broker.port, f"{root}/#") as c, running(publisher):
        await c.wait_until(count_on("state", root, 600), timeout=WAIT_S)
    states: list[Received] = c.on(f"{root}/state")
    # 600 at 1,000/s with at most 50 ms of burst: a lower bound the limiter itself guarantees.
    assert states[-1].at - states[0].at >= 0.5
