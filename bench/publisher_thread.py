"""Would paho's own network thread lift the outbox path? A design experiment for issue 6's throughput target.

The product's publisher (``cellctl.telemetry.publisher``) drives paho through aiomqtt on the event loop, so
PUBACK parsing, publishing and the pump share one thread; raw paho, the target's baseline, reads in a thread
of its own. This bench measures, in one process against one private mosquitto, with the same window:

1. raw paho-mqtt (``loop_start``), the baseline;
2. the product's ``OutboxPublisher`` draining a pre-filled outbox (replay cap lifted, as telemetry.py a1);
3. a prototype that is NOT product code: the same outbox read in id order per batch, the same envelope, a
   window of ``--window`` in flight, deletes committed in acknowledged groups, but paho's network loop in
   its own thread (``loop_start``); PUBACKs come back to the loop through a deque, one wake-up per burst.

It prints each rate and its ratio to raw paho. Run: ``python bench/publisher_thread.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util
import paho.mqtt.client as paho
import telemetry as tb

from cellctl.schema.cell import MqttConfig
from cellctl.store import Store
from cellctl.telemetry.topics import envelope_json
from device_sims.broker import PrivateBroker

WAIT_S = 120.0


async def threaded_drain(broker: PrivateBroker, folder: Path, parts: int, window: int) -> dict[str, float]:
    """The prototype: an outbox drained through paho's own network thread; seconds and messages."""
    store = await Store.open(folder / f"thread-{uuid.uuid4().hex[:6]}.db")
    try:
        await tb.fill(store, tb.identity(), parts)
        total = await store.outbox_count()
        loop = asyncio.get_running_loop()
        acked: collections.deque[int] = collections.deque()
        wake = asyncio.Event()
        slots = asyncio.Semaphore(window)
        by_mid: dict[int, int] = {}
        connected = threading.Event()

        def on_publish(_c: Any, _u: Any, mid: int, *_rest: Any) -> None:
            # paho's thread: hand the row over; one wake-up per burst, not per message.
            was_empty = not acked
            acked.append(mid)
            if was_empty:
                loop.call_soon_threadsafe(wake.set)

        name = f"bench-thread-{uuid.uuid4().hex[:6]}"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name)
        client.max_inflight_messages_set(window)
        client.max_queued_messages_set(0)
        client.on_publish = on_publish
        client.on_connect = lambda *_a: connected.set()
        client.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(broker.host, broker.port, keepalive=10)
        client.loop_start()
        delivered = 0
        try:
            if not await asyncio.to_thread(connected.wait, 10):
                raise TimeoutError("prototype client did not connect")
            start = time.perf_counter()

            async def acker() -> None:
                nonlocal delivered
                while delivered < total:
                    await wake.wait()
                    wake.clear()
                    ids = []
                    while acked:
                        ids.append(by_mid.pop(acked.popleft()))
                        slots.release()
                    if ids:
                        await store.ack(ids)
                        delivered += len(ids)

            async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tg:
                tg.create_task(acker())
                after = 0
                while True:
                    rows = await store.outbox_batch(200, after_id=after)
                    if not rows:
                        break
                    for row in rows:
                        await slots.acquire()
                        info = client.publish(row.topic, envelope_json(row, time.time()), qos=1)
                        by_mid[info.mid] = row.id
                    after = rows[-1].id
            elapsed = time.perf_counter() - start
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        await store.close()
    return {"seconds": elapsed, "messages": delivered}


async def bench(messages: int, window: int, rounds: int) -> dict[str, Any]:
    broker = PrivateBroker()
    broker.start()
    parts = -(-messages // tb.MESSAGES_PER_PART)
    count = parts * tb.MESSAGES_PER_PART
    sample = tb.wire_sample(tb.identity())
    raw: list[float] = []
    product: list[float] = []
    prototype: list[float] = []
    try:
        with _util.temp_folder() as folder:
            for r in range(rounds):
                tb._progress(f"round {r + 1}/{rounds}: raw paho, product publisher, threaded prototype")
                raw.append(count / await asyncio.to_thread(tb.raw_paho, broker, sample, count, window))
                run = await tb.drain_run(broker, folder, parts, window, capped=False)
                product.append(run["messages"] / run["seconds"])
                run = await threaded_drain(broker, folder, parts, window)
                prototype.append(run["messages"] / run["seconds"])
    finally:
        broker.close()
    return {
        "messages": count,
        "window": window,
        "raw_paho_msg_s": raw,
        "product_msg_s": product,
        "prototype_msg_s": prototype,
        "product_ratio": [p / r for p, r in zip(product, raw, strict=True)],
        "prototype_ratio": [p / r for p, r in zip(prototype, raw, strict=True)],
        "environment": _util.environment(["asyncio"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=MqttConfig().window)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.window <= 1000 or not 1 <= args.messages <= 1_000_000:
        parser.error("--rounds 1..20, --window 1..1000, --messages 1..1000000")
    _util.quiet_logs()
    result = asyncio.run(bench(args.messages, args.window, args.rounds))
    env = result["environment"]
    print(
        f"publisher thread bench @ {env['commit'] or '?'}: window {result['window']}, "
        f"{result['messages']} messages per run"
    )
    print(f"{'round':<8}{'raw paho':>12}{'product':>12}{'x raw':>8}{'prototype':>12}{'x raw':>8}")
    for i, raw in enumerate(result["raw_paho_msg_s"]):
        print(
            f"{i + 1:<8}{raw:>12.0f}{result['product_msg_s'][i]:>12.0f}{result['product_ratio'][i]:>8.2f}"
            f"{result['prototype_msg_s'][i]:>12.0f}{result['prototype_ratio'][i]:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
