"""A publisher process for the SIGKILL replay test: publishes a store file's outbox until it is empty.

``python -m tests.system.replay_child DB HOST PORT CELL WINDOW RATE``: prints ``up`` once the store is open,
runs an OutboxPublisher, and exits 0 once every row is acknowledged and deleted (or is SIGKILLed first).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import structlog

from cellctl.schema.cell import Identity, MqttConfig
from cellctl.store import Store
from cellctl.telemetry.publisher import OutboxPublisher

DRAIN_S = 60.0
"""Bound on the whole replay (s): a child that cannot drain exits non-zero instead of hanging."""


async def main(db: Path, host: str, port: int, cell: str, window: int, rate: float) -> int:
    store = await Store.open(db, synchronous="NORMAL")
    try:
        identity = Identity(enterprise="acme", site="test", area="a1", line="l1", cell=cell)
        mqtt = MqttConfig(host=host, port=port, keepalive_s=5, window=window, replay_rate=rate)
        publisher = OutboxPublisher(store, mqtt, identity, backoff_base_s=0.05, backoff_cap_s=0.5)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(publisher.run(), name="telemetry:publisher")
            print("up", flush=True)
            drained = await publisher.flush(DRAIN_S)
            task.cancel()
    finally:
        await store.close()
    print("drained" if drained else "not drained", flush=True)
    return 0 if drained else 1


if __name__ == "__main__":
    # Logs to stderr: stdout carries the lines the test reads.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    db, host, port, cell, window, rate = sys.argv[1:7]
    sys.exit(asyncio.run(main(Path(db), host, int(port), cell, int(window), float(rate))))
