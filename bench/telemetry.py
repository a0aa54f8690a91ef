"""Telemetry bench: outbox throughput against raw paho-mqtt, backlog drain with live data, memory.

Against a private mosquitto this bench starts (``device_sims.broker.PrivateBroker``: loopback, in memory,
``set_tcp_nodelay true``), in one run:

a. sustained messages per second through the outbox to mosquitto. Baseline: raw paho-mqtt publishing the same
   payloads to the same topics at QoS 1 with the same window (``max_inflight_messages``), PUBACKs counted in
   ``on_publish``. Rounds alternate; medians and ratios to the baseline are reported.
   (a1) outbox -> broker, the line the target (>= 0.5) applies to: ``OutboxPublisher`` moving a pre-filled
   outbox to mosquitto (read in order per stream, publish with the window in flight, delete in acknowledged
   groups) as fast as it can. Live rows are never rate-limited; pre-filled rows are backlog, so this run lifts
   the replay cap (``replay_rate`` 1,000,000 and ``replay_share`` 1) to treat them the same.
   (a2) the same drain at the configured replay cap (``mqtt.replay_rate``, default 5,000 msg/s;
   ``--replay-rate``).
   (a3) live, end to end in one process: ``Recorder -> Store (FULL) -> OutboxPublisher -> mosquitto``, parts
   recorded as fast as the store takes them while the publisher runs, until the outbox is empty; by one
   producer awaiting each durable record in turn, and by ``--producers`` concurrent producers (a cell records
   device health, parallel changeover steps, parts and states concurrently; the store commits what arrives
   together in one transaction).
b. the time to drain a 10,000-message backlog (filled while no publisher was connected) while live alarms
   keep being recorded at a fixed rate on a stream without backlog, and those live messages' latency
   (event_ts and publish_ts -> receipt by a subscriber in a child process).
c. RSS of this process while the backlog grows 10k -> 200k rows with the broker down and the publisher
   retrying: it must stay flat (slope in bytes per 1,000 rows).

Only the publisher's public API is used (``run``, ``flush``, ``connected``, ``delivered``, ``notify``), so the
bench measures whatever replay scheduling the publisher has.

Run as ``python bench/telemetry.py --subscriber HOST PORT TOPIC`` it is the child process of (b): it
subscribes at QoS 1, prints ``ready``, and on SIGTERM prints one JSON line per message received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import math
import resource
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util
import aiomqtt
import paho.mqtt.client as paho

from cellctl.core.events import AlarmEvent, Measurement, PartProduced, Severity, Verdict
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.store import OutboxRow, Store
from cellctl.telemetry.publisher import OutboxPublisher
from cellctl.telemetry.recorder import Recorder
from cellctl.telemetry.topics import envelope_json, messages_for, topic_root
from device_sims.broker import PrivateBroker

CHARACTERISTICS = ("width_mm", "depth_mm", "height_mm", "angle_deg")
MESSAGES_PER_PART = 1 + len(CHARACTERISTICS)
WAIT_S = 180.0
"""Upper bound of any one wait (a drain, a flush, a child's start)."""
RSS_POINTS = (10_000, 50_000, 100_000, 150_000, 200_000)


# ------------------------------------------------------------------------------------------------ helpers


def identity() -> Identity:
    """A cell of its own per measurement, so nothing retained or queued carries over."""
    return Identity(enterprise="bench", site="lab", area="a", line="l", cell=f"c{uuid.uuid4().hex[:8]}")


def part(i: int) -> PartProduced:
    """One part with four measurements: one part and four quality messages, in one transaction."""
    return PartProduced(
        ts=time.time(),
        part=f"J1-{i:06d}",
        job="J1",
        variant="oslo",
        index=i,
        verdict=Verdict.PASS,
        measurements=tuple(
            Measurement(
                characteristic=c,
                value=420.0 + 0.01 * (i % 7),
                quality="good",
                units="mm",
                nominal=420.0,
                lsl=419.0,
                usl=421.0,
                verdict=Verdict.PASS,
            )
            for c in CHARACTERISTICS
        ),
        parameters={"pitch_mm": 12.0},
        cycle_s=31.5,
    )


def alarm(i: int) -> AlarmEvent:
    return AlarmEvent(
        ts=time.time(),
        alarm=f"live{i}",
        severity=Severity.WARNING,
        active=True,
        message="live message during backlog replay",
        source="bench",
    )


def wire_sample(cell: Identity) -> list[tuple[str, bytes]]:
    """(topic, payload) of the messages one part becomes, exactly as the publisher puts them on the wire."""
    out = []
    for seq, m in enumerate(messages_for(part(1), cell), start=1):
        row = OutboxRow(
            seq, m.topic, m.stream, seq, str(uuid.uuid4()), time.time(), json.dumps(m.body), False, 1
        )
        out.append((m.topic, envelope_json(row, time.time())))
    return out


REPLAY_RATE = MqttConfig().replay_rate
"""``mqtt.replay_rate`` of every publisher here (``--replay-rate``): it caps the backlog drain (a2, b)."""


def mqtt_config(broker: PrivateBroker, window: int) -> MqttConfig:
    return MqttConfig(
        host=broker.host, port=broker.port, window=window, keepalive_s=10, replay_rate=REPLAY_RATE
    )


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return -1


@contextlib.asynccontextmanager
async def running(publisher: OutboxPublisher) -> AsyncIterator[asyncio.Task[None]]:
    """The publisher running in the background for the block; cancelled (its clean stop) at the end."""
    task = asyncio.create_task(publisher.run(), name="telemetry:publisher")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_connected(publisher: OutboxPublisher, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not publisher.connected:  # noqa: ASYNC110 - the public API has no event for this
            await asyncio.sleep(0.002)


async def fill(store: Store, cell: Identity, parts: int) -> None:
    """Record ``parts`` parts (five outbox rows each) with no publisher listening."""
    recorder = Recorder(store, cell)
    for i in range(parts):
        await recorder.record(part(i))


# --------------------------------------------------------------------------------------- a. throughput


def raw_paho(broker: PrivateBroker, sample: list[tuple[str, bytes]], count: int, window: int) -> float:
    """Seconds for raw paho-mqtt to get ``count`` PUBACKs at QoS 1 with ``window`` in flight."""
    done = threading.Event()
    acked = 0

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        acked += 1
        if acked >= count:
            done.set()

    connected = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise TimeoutError("raw paho client did not connect")
        start = time.perf_counter()
        for i in range(count):
            topic, payload = sample[i % len(sample)]
            client.publish(topic, payload, qos=1)
        if not done.wait(WAIT_S):
            raise TimeoutError(f"raw paho: {acked} of {count} PUBACKs within {WAIT_S} s")
        return time.perf_counter() - start
    finally:
        client.disconnect()
        client.loop_stop()


async def raw_aiomqtt(
    broker: PrivateBroker, sample: list[tuple[str, bytes]], count: int, window: int
) -> float:
    """Seconds for aiomqtt alone (the library the publisher wraps) to publish ``count`` messages at QoS 1 with
    ``window`` publishes awaited concurrently, TCP_NODELAY, no store: what the wrapper costs over paho."""
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"bench-aiomqtt-{uuid.uuid4().hex[:6]}",
        max_inflight_messages=window,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    client.pending_calls_threshold = window + 10
    slots = asyncio.Semaphore(window)

    async def one(topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1)
        finally:
            slots.release()

    async with client, asyncio.timeout(WAIT_S):
        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(count):
                await slots.acquire()
                tg.create_task(one(*sample[i % len(sample)]))
        return time.perf_counter() - start


async def live_run(
    broker: PrivateBroker, folder: Path, parts: int, window: int, producers: int
) -> dict[str, float]:
    """a3: ``producers`` tasks record ``parts`` parts in all, each awaiting its record in turn, with the
    publisher running; until all are acknowledged."""
    cell = identity()
    store = await Store.open(folder / f"live-{uuid.uuid4().hex[:6]}.db", synchronous="FULL")
    try:
        publisher = OutboxPublisher(store, mqtt_config(broker, window), cell)
        recorder = Recorder(store, cell)
        recorder.add_listener(publisher.notify)

        async def produce(first: int) -> None:
            for i in range(first, parts, producers):
                await recorder.record(part(i))

        async with running(publisher):
            await wait_connected(publisher)
            start = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for first in range(producers):
                    tg.create_task(produce(first))
            recorded = time.perf_counter() - start
            # How far the publisher lagged when recording ended: near 0 means recording was the bound.
            behind = await store.outbox_count()
            if not await publisher.flush(WAIT_S):
                raise TimeoutError("live run: outbox not empty in time")
            elapsed = time.perf_counter() - start
            delivered = publisher.delivered
    finally:
        await store.close()
    return {"seconds": elapsed, "record_seconds": recorded, "messages": delivered, "behind": behind}


async def drain_run(
    broker: PrivateBroker, folder: Path, parts: int, window: int, *, capped: bool
) -> dict[str, float]:
    """a1/a2: an outbox pre-filled with no publisher, then drained (publish only; counts the connect)."""
    cell = identity()
    store = await Store.open(folder / f"drain-{uuid.uuid4().hex[:6]}.db")
    try:
        await fill(store, cell, parts)
        config = mqtt_config(broker, window)
        if not capped:
            config = config.model_copy(update={"replay_rate": 1_000_000.0, "replay_share": 1.0})
        publisher = OutboxPublisher(store, config, cell)
        start = time.perf_counter()
        async with running(publisher):
            if not await publisher.flush(WAIT_S):
                raise TimeoutError("drain run: outbox not empty in time")
            elapsed = time.perf_counter() - start
            delivered = publisher.delivered
    finally:
        await store.close()
    return {"seconds": elapsed, "messages": delivered}


THROUGHPUT_LINES = (
    ("outbox_to_broker", "a1 outbox -> broker (the target's line)"),
    ("drain_capped", "a2 backlog drain at replay_rate"),
    ("live_1", "a3 live, 1 producer"),
    ("live_n", "a3 live, {producers} producers"),
)


async def throughput(
    broker: PrivateBroker, folder: Path, messages: int, window: int, rounds: int, producers: int
) -> dict[str, Any]:
    parts = math.ceil(messages / MESSAGES_PER_PART)
    count = parts * MESSAGES_PER_PART
    sample = wire_sample(identity())
    raw: list[float] = []
    raw_aio: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {key: [] for key, _ in THROUGHPUT_LINES}
    for r in range(rounds):
        _progress(f"a. round {r + 1}/{rounds}: raw paho, raw aiomqtt, outbox -> broker, capped drain, live")
        raw.append(count / await asyncio.to_thread(raw_paho, broker, sample, count, window))
        raw_aio.append(count / await raw_aiomqtt(broker, sample, count, window))
        runs["outbox_to_broker"].append(await drain_run(broker, folder, parts, window, capped=False))
        runs["drain_capped"].append(await drain_run(broker, folder, parts, window, capped=True))
        runs["live_1"].append(await live_run(broker, folder, parts, window, 1))
        runs["live_n"].append(await live_run(broker, folder, parts, window, producers))

    def rates(done: list[dict[str, float]]) -> list[float]:
        return [run["messages"] / run["seconds"] for run in done]

    raw_median = _util.spread(raw)["median"]
    result: dict[str, Any] = {
        "messages": count,
        "producers": producers,
        "payload_bytes": sorted({len(p) for _t, p in sample}),
        "raw_paho_msg_s": _util.spread(raw),
        "raw_aiomqtt_msg_s": _util.spread(raw_aio),
        "raw_aiomqtt_ratio": _util.spread([r / raw_median for r in raw_aio]),
        # Per round, each against that round's raw paho: the box's speed drifts between rounds.
        "outbox_to_broker_round_ratios": [
            round(run["messages"] / run["seconds"] / base, 3)
            for run, base in zip(runs["outbox_to_broker"], raw, strict=True)
        ],
    }
    for key, done in runs.items():
        result[f"{key}_msg_s"] = _util.spread(rates(done))
        result[f"{key}_ratio"] = _util.spread([r / raw_median for r in rates(done)])
    for key in ("live_1", "live_n"):
        result[f"{key}_record_msg_s"] = _util.spread([count / run["record_seconds"] for run in runs[key]])
        result[f"{key}_behind_at_record_end"] = _util.spread([run["behind"] for run in runs[key]])
    return result


# ---------------------------------------------------------------------------------- b. drain with live


class Subscriber:
    """This script as a child process subscribed to a topic filter; ``stop()`` returns what it received."""

    def __init__(self, broker: PrivateBroker, *topics: str) -> None:
        self._args = [sys.executable, str(Path(__file__).resolve()), "--subscriber"]
        self._args += [broker.host, str(broker.port), ",".join(topics)]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, cwd=_util.REPO)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 20.0)
        line = self._proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self._proc.kill()
            raise RuntimeError(f"subscriber did not start: {line!r}")

    def stop(self) -> list[list[Any]]:
        proc, self._proc = self._proc, None
        if proc is None:
            return []
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        return [json.loads(line) for line in out.splitlines() if line.strip()]


async def drain_with_live(
    broker: PrivateBroker, folder: Path, backlog: int, rate: float, window: int
) -> dict[str, Any]:
    cell = identity()
    root = topic_root(cell)
    store = await Store.open(folder / "backlog.db")
    # The live stream and the backlog's part messages (a fifth of it): a subscriber of everything falls
    # behind on this 2-core box and mosquitto drops past its 1,000 queued messages per client.
    subscriber = Subscriber(broker, f"{root}/alarm", f"{root}/part")
    try:
        _progress(f"b. filling a backlog of {backlog} messages with no publisher")
        await fill(store, cell, math.ceil(backlog / MESSAGES_PER_PART))
        backlog_last = await store.last_outbox_id()
        backlog_rows = await store.outbox_count()
        await asyncio.to_thread(subscriber.start)
        publisher = OutboxPublisher(store, mqtt_config(broker, window), cell)
        recorder = Recorder(store, cell)
        recorder.add_listener(publisher.notify)
        _progress(f"b. draining it while recording {rate:g} live alarms/s")
        t0 = time.time()
        async with running(publisher):
            await wait_connected(publisher)
            live_start = time.time()
            stop_live = asyncio.Event()
            live_task = asyncio.create_task(_live(recorder, rate, stop_live))
            try:
                async with asyncio.timeout(WAIT_S):
                    while True:
                        oldest = await store.outbox_batch(1)
                        if not oldest or oldest[0].id > backlog_last:
                            break
                        await asyncio.sleep(0.01)
                drained_at = time.time()
            finally:
                stop_live.set()
                live_sent = await live_task
            if not await publisher.flush(WAIT_S):
                raise TimeoutError("live messages not delivered in time")
        # Acknowledged by the broker is not yet received by the subscriber: give it a moment.
        await asyncio.sleep(1.0)
        received = await asyncio.to_thread(subscriber.stop)
    finally:
        await asyncio.to_thread(subscriber.stop)
        await store.close()
    backlog_rx = [m for m in received if m[0] != "alarm"]
    live_rx = [m for m in received if m[0] == "alarm"]
    event_lat = [(m[4] - m[2]) * 1e3 for m in live_rx]
    publish_lat = [(m[4] - m[3]) * 1e3 for m in live_rx]
    seqs = sorted(m[1] for m in live_rx)
    return {
        "backlog_messages": backlog_rows,
        "live_rate_per_s": rate,
        "drain_s": drained_at - t0,
        "last_backlog_received_s": (max(m[4] for m in backlog_rx) - t0) if backlog_rx else math.nan,
        "backlog_part_messages_received": len({m[1] for m in backlog_rx}),
        "backlog_part_messages_sent": math.ceil(backlog / MESSAGES_PER_PART),
        "backlog_historical": sum(1 for m in backlog_rx if m[5]),
        "live_sent": live_sent,
        "live_received": len(set(seqs)),
        "live_contiguous": seqs == list(range(1, len(seqs) + 1)),
        "live_window_s": drained_at - live_start,
        "event_to_receive_ms": _latency(event_lat),
        "publish_to_receive_ms": _latency(publish_lat),
    }


async def _live(recorder: Recorder, rate: float, stop: asyncio.Event) -> int:
    """Record one alarm every 1/rate s on an absolute schedule until ``stop``; returns how many."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while not stop.is_set() and sent < rate * WAIT_S:
        delay = start + sent / rate - loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            continue
        await recorder.record(alarm(sent))
        sent += 1
    return sent


def _latency(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "p50": _util.percentile(values, 50),
        "p99": _util.percentile(values, 99),
        "max": max(values, default=math.nan),
    }


# ---------------------------------------------------------------------------------- c. memory


async def memory_with_backlog(broker: PrivateBroker, folder: Path, window: int) -> dict[str, Any]:
    cell = identity()
    store = await Store.open(folder / "memory.db", synchronous="NORMAL")
    broker.stop()
    points: list[tuple[int, int]] = []
    try:
        publisher = OutboxPublisher(
            store, mqtt_config(broker, window), cell, backoff_base_s=0.05, backoff_cap_s=0.5
        )
        recorder = Recorder(store, cell)
        recorder.add_listener(publisher.notify)
        async with running(publisher):
            i = 0
            for target in RSS_POINTS:
                _progress(f"c. backlog growing to {target} rows, broker down")
                while await store.outbox_count() < target:
                    for _ in range(200):
                        await recorder.record(part(i))
                        i += 1
                gc.collect()
                points.append((await store.outbox_count(), rss_bytes()))
            retrying = not publisher.connected and publisher.last_error is not None
    finally:
        await store.close()
        broker.start()
    rows = [p[0] for p in points]
    rss = [p[1] for p in points]
    return {
        "points": [{"rows": r, "rss_mb": m / 2**20} for r, m in points],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "slope_bytes_per_1000_rows": _slope(rows, rss) * 1000,
        "growth_mb": (rss[-1] - rss[0]) / 2**20,
        "publisher_retrying": retrying,
    }


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else math.nan


# ----------------------------------------------------------------------------------------------- run


async def bench(
    messages: int, window: int, rounds: int, producers: int, backlog: int, rate: float, memory: bool
) -> dict[str, Any]:
    broker = PrivateBroker()
    broker.start()
    try:
        with _util.temp_folder() as folder:
            result: dict[str, Any] = {"window": window, "rounds": rounds, "replay_rate": REPLAY_RATE}
            result["throughput"] = await throughput(broker, folder, messages, window, rounds, producers)
            result["drain_with_live"] = await drain_with_live(broker, folder, backlog, rate, window)
            result["memory"] = await memory_with_backlog(broker, folder, window) if memory else None
    finally:
        broker.close()
    result["environment"] = _environment(broker)
    return result


def _environment(broker: PrivateBroker) -> dict[str, Any]:
    env = _util.environment(["asyncio"])
    for package in ("paho-mqtt", "aiomqtt", "pydantic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env["packages"][package] = importlib.metadata.version(package)
    try:
        out = subprocess.run([broker.binary, "-h"], capture_output=True, text=True, timeout=5).stdout
        env["mosquitto"] = out.splitlines()[0] if out else ""
    except (OSError, subprocess.SubprocessError):
        env["mosquitto"] = ""
    env["sqlite"] = sqlite3.sqlite_version
    return env


def _print(result: dict[str, Any]) -> None:
    env = result["environment"]
    t = result["throughput"]
    pkgs = env["packages"]
    print(
        f"telemetry bench @ {env['commit'] or '?'}: Python {env['python']}, "
        f"paho-mqtt {pkgs.get('paho-mqtt')}, aiomqtt {pkgs.get('aiomqtt')}, {env['mosquitto']}, "
        f"SQLite {env['sqlite']}, "
        f"load {env['load_average_at_start']}"
    )
    print(
        f"window {result['window']} in flight, QoS 1, replay_rate {result['replay_rate']:g} msg/s, "
        f"{t['messages']} messages per run "
        f"(payloads {t['payload_bytes']} bytes), {result['rounds']} rounds, medians"
    )
    print(f"{'a. throughput':<44}{'msg/s':>10}{'min':>9}{'max':>9}{'x raw':>8}")
    raw = t["raw_paho_msg_s"]
    label = "raw paho-mqtt, same window"
    print(f"{label:<44}{raw['median']:>10.0f}{raw['min']:>9.0f}{raw['max']:>9.0f}{1.0:>8.2f}")
    rows = [("raw aiomqtt, same window (no store)", "raw_aiomqtt")]
    rows += [(label.format(producers=t["producers"]), key) for key, label in THROUGHPUT_LINES]
    for label, key in rows:
        s = t[f"{key}_msg_s"]
        print(
            f"{label:<44}{s['median']:>10.0f}{s['min']:>9.0f}{s['max']:>9.0f}{t[f'{key}_ratio']['median']:>8.2f}"
        )
    for label, key in (("1 producer", "live_1"), (f"{t['producers']} producers", "live_n")):
        recorded, behind = t[f"{key}_record_msg_s"]["median"], t[f"{key}_behind_at_record_end"]["median"]
        print(
            f"  (live, {label}: recorded into the outbox at {recorded:.0f} msg/s; "
            f"{behind:.0f} rows not yet acknowledged when recording ended)"
        )
    ratio = t["outbox_to_broker_ratio"]["median"]
    print(
        f"target: outbox -> broker / raw paho >= 0.5: {ratio:.2f} "
        f"({'met' if ratio >= 0.5 else 'NOT met'}; per round {t['outbox_to_broker_round_ratios']})"
    )
    b = result["drain_with_live"]
    print(
        f"b. {b['backlog_messages']} backlog messages drained in {b['drain_s']:.2f} s "
        f"(last backlog part at the subscriber after {b['last_backlog_received_s']:.2f} s; "
        f"{b['backlog_part_messages_received']} of {b['backlog_part_messages_sent']} part messages received, "
        f"{b['backlog_historical']} marked historical) "
        f"with {b['live_rate_per_s']:g} live msg/s"
    )
    for label, key in (
        ("event -> receive", "event_to_receive_ms"),
        ("publish -> receive", "publish_to_receive_ms"),
    ):
        lat = b[key]
        print(
            f"   live latency {label:<18} p50 {lat['p50']:8.1f} ms  p99 {lat['p99']:8.1f} ms  "
            f"max {lat['max']:8.1f} ms  (n={lat['n']})"
        )
    print(
        f"   live: {b['live_sent']} recorded in {b['live_window_s']:.2f} s, {b['live_received']} received, "
        f"sequence contiguous: {b['live_contiguous']}"
    )
    m = result["memory"]
    if m is None:
        print("c. memory: skipped (--no-memory)")
        return
    points = ", ".join(f"{p['rows'] // 1000}k: {p['rss_mb']:.1f} MB" for p in m["points"])
    print(f"c. RSS with the broker down, publisher retrying ({m['publisher_retrying']}): {points}")
    print(f"   (peak RSS of the whole run: {m['peak_rss_mb']:.1f} MB)")
    print(
        f"   slope {m['slope_bytes_per_1000_rows']:.0f} bytes per 1,000 rows, "
        f"growth {m['growth_mb']:+.1f} MB from {m['points'][0]['rows']} to {m['points'][-1]['rows']} rows"
    )


def _progress(text: str) -> None:
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------ the child subscriber


def subscriber_main(host: str, port: int, topic: str) -> int:
    """Subscribe at QoS 1, say ``ready``, gather until SIGTERM (at most 10 min), print one line each."""
    got: list[tuple[str, int, float, float, float, bool]] = []
    subscribed = threading.Event()
    stop = threading.Event()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        now = time.time()
        try:
            body = json.loads(message.payload)
            got.append(
                (body["stream"], body["seq"], body["event_ts"], body["publish_ts"], now, body["historical"])
            )
        except (ValueError, KeyError):
            pass  # the status birth and will: no stream

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex[:6]}")
    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe([(t, 1) for t in topic.split(",")])
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            return 1
        print("ready", flush=True)
        stop.wait(600)
    finally:
        client.disconnect()
        client.loop_stop()
    sys.stdout.write("".join(json.dumps(g) + "\n" for g in got))
    return 0


def main(argv: list[str] | None = None) -> int:
    global REPLAY_RATE  # one setting for every publisher of the run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per throughput run (>= 20000)")
    parser.add_argument("--window", type=int, default=MqttConfig().window, help="messages in flight")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds (default 3)")
    parser.add_argument(
        "--producers", type=int, default=8, help="concurrent producers of the live line (default 8)"
    )
    parser.add_argument("--backlog", type=int, default=10_000, help="backlog to drain in b (default 10000)")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="live messages per second in b (default 200)"
    )
    parser.add_argument(
        "--replay-rate",
        type=float,
        default=REPLAY_RATE,
        help=f"mqtt.replay_rate of a2 and b (default {REPLAY_RATE:g}: that drain cannot go faster)",
    )
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="run c")
    parser.add_argument("--subscriber", nargs=3, metavar=("HOST", "PORT", "TOPIC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.subscriber:
        host, port, topic = args.subscriber
        return subscriber_main(host, int(port), topic)
    if not 1 <= args.window <= 1000 or not 1 <= args.rounds <= 20 or not 0 < args.rate <= 5000:
        parser.error("--window 1..1000, --rounds 1..20, --rate in (0, 5000]")
    if not 1 <= args.producers <= 64:
        parser.error("--producers 1..64")
    if not 1 <= args.messages <= 1_000_000 or not 1 <= args.backlog <= 1_000_000:
        parser.error("--messages and --backlog in 1..1000000")
    if not 0 < args.replay_rate <= 1_000_000:
        parser.error("--replay-rate in (0, 1000000]")
    REPLAY_RATE = args.replay_rate
    _util.quiet_logs()
    result = asyncio.run(
        bench(args.messages, args.window, args.rounds, args.producers, args.backlog, args.rate, args.memory)
    )
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
