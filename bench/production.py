"""Production bench: parts per second the engine sustains on zero-delay simulators, against the same part
cycle run without the engine and against the raw protocol round trips one part needs, measured in one run.

``.venv/bin/python bench/production.py [--json] [--parts N] [--repeats R] [--poll-s S] [--publish-ms P]
[--store | --no-store]``

The example cell (``config/``) on device_sims in this process at time scale 0 (every simulated action takes no
time; the gauge has no outliers), with the real drivers; Modbus devices poll every S seconds (default 0.002)
and the robot's OPC UA subscription publishes every P ms (default 0: as fast as the server can). A handshake
wait ends at the next poll or notification, so these intervals are a floor of the part cycle that no engine
can beat. Operator steps are left out of the recipes (nobody is there to confirm them).

1. **engine**: the real Engine (PackML, job queue, part cycle, counts, first-article gate, accept/reject
   output after the record) makes an order of N parts of one variant, after a warm-up order of that variant
   (changeover and first article out of the way). Measured from the job's start to its completion event.
   With ``--store`` (default) the events go to a real SQLite store (WAL, synchronous FULL) as in production;
   the in-memory run is always made too, so the journal's share is visible.
2. **part cycle**: ``PartCycle.run`` and ``PartCycle.sort`` N times on the same profiles, no engine: the
   devices' handshakes alone.
3. **raw round trips**: every driver read, write and call one part makes is counted (a counting wrapper
   around each driver); each kind is then timed alone on its device (median of M single requests), and
   their sum is the protocol floor of one part. Handshake waits (ready, done) are not round trips: they end
   on a poll or a subscription notification, which is why (2) sits above (3).

Engine overhead per part = (1) - (2); ratios (1)/(2) and (1)/(3). Simulators and client share one event
loop (and a core): the ratios, not the absolute rates, carry from machine to machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util

from cellctl.core.clock import SystemClock
from cellctl.core.events import Event, JobEvent, JobStatus
from cellctl.core.ports import Driver, LinkState
from cellctl.core.tags import Reading, ReadingCallback, TagBackend, TagValue
from cellctl.drivers import build_driver
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.engine import build_profiles
from cellctl.engine.jobs import JobQueue, PartCycle
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.store import Store
from cellctl.telemetry.recorder import Recorder
from device_sims.harness import SimCell
from device_sims.sims_config import load_sims_config

CONFIG = _util.REPO / "config"
VARIANT = "oslo"
LINK_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 120.0
ROUND_TRIPS = 50
"""Single requests timed per (device, kind) for the raw round-trip figure."""


class CountingBackend:
    """A TagBackend that counts the requests that go on the wire (read, write, call) and passes them on."""

    def __init__(self, inner: TagBackend, counts: Counter[tuple[str, str, str]]) -> None:
        self._inner = inner
        self._counts = counts

    @property
    def device(self) -> str:
        return self._inner.device

    async def read(self, tag: str) -> Reading:
        self._counts[(self._inner.device, "read", tag)] += 1
        return await self._inner.read(tag)

    async def write(self, tag: str, value: TagValue) -> None:
        self._counts[(self._inner.device, "write", tag)] += 1
        await self._inner.write(tag, value)

    def last(self, tag: str) -> Reading:
        return self._inner.last(tag)

    def watch(self, callback: ReadingCallback) -> Callable[[], None]:
        return self._inner.watch(callback)

    async def call(self, method: str, args: Sequence[TagValue]) -> tuple[TagValue, ...]:
        self._counts[(self._inner.device, "call", method)] += 1
        return await self._inner.call(method, args)


class TimedSink:
    """An EventSink that keeps events in memory (optionally also in a store) and stamps job events."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self._recorder = recorder
        self.count = 0
        self.stamps: dict[tuple[str, JobStatus], tuple[float, float]] = {}
        """(wall, this process's CPU) when each job event was recorded."""
        self._changed = asyncio.Event()

    async def record(self, event: Event) -> int:
        journal_id = await self._recorder.record(event) if self._recorder is not None else self.count + 1
        self.count += 1
        if isinstance(event, JobEvent):
            self.stamps[(event.job, event.status)] = (time.perf_counter(), time.process_time())
            self._changed.set()
            self._changed = asyncio.Event()
        return journal_id

    async def wait_job(self, job_id: str, status: JobStatus) -> tuple[float, float]:
        while (job_id, status) not in self.stamps:
            await self._changed.wait()
        return self.stamps[(job_id, status)]


def _bench_config(poll_s: float, publish_ms: float) -> LoadedConfig:
    loaded = load_config(CONFIG)
    recipes = {v: r.model_copy(update={"operator_steps": {}}) for v, r in loaded.recipes.items()}
    devices = {
        name: d.model_copy(
            update={"poll_interval_s": poll_s}
            if d.driver == "modbus"
            else {"publishing_interval_ms": publish_ms}
        )
        for name, d in loaded.cell.devices.items()
    }
    cell = loaded.cell.model_copy(update={"devices": devices})
    return dataclasses.replace(loaded, recipes=recipes).with_cell(cell)


async def _link_up(driver: Driver) -> None:
    up = asyncio.Event()
    unsubscribe = driver.on_health(lambda _h: up.set() if driver.health.state is LinkState.UP else None)
    try:
        async with asyncio.timeout(LINK_TIMEOUT_S):
            while driver.health.state is not LinkState.UP:
                await up.wait()
                up.clear()
    finally:
        unsubscribe()


async def _engine_run(
    live: LoadedConfig,
    devices: Mapping[str, TagBackend],
    counts: Counter[tuple[str, str, str]],
    parts: int,
    repeats: int,
    store_dir: Path | None,
) -> dict[str, Any]:
    store = await Store.open(store_dir / "bench.db") if store_dir is not None else None
    sink = TimedSink(Recorder(store, live.cell.identity, telemetry=False) if store is not None else None)
    engine = Engine(live, devices, sink, orders=store)
    walls: list[float] = []
    cpus: list[float] = []
    ops: list[int] = []
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S), asyncio.TaskGroup() as group:
            task = group.create_task(engine.run(), name="engine:run")
            try:
                await engine.wait_for(State.STOPPED, timeout=LINK_TIMEOUT_S)
                gate = live.recipes[VARIANT].first_article
                warm = await engine.submit(
                    OrderRequest("warm-up", VARIANT, (gate.parts if gate else 0) + 1), by="bench"
                )
                await engine.command("reset", by="bench")
                await engine.wait_for(State.IDLE, timeout=LINK_TIMEOUT_S)
                await engine.command("start", by="bench")
                await sink.wait_job(warm.job_id, JobStatus.COMPLETED)
                for k in range(repeats):
                    before = sum(counts.values())
                    job = await engine.submit(OrderRequest(f"bench-{k}", VARIANT, parts), by="bench")
                    began = await sink.wait_job(job.job_id, JobStatus.STARTED)
                    ended = await sink.wait_job(job.job_id, JobStatus.COMPLETED)
                    walls.append(ended[0] - began[0])
                    cpus.append(ended[1] - began[1])
                    ops.append(sum(counts.values()) - before)
                    if engine.job(job.job_id).good != parts:
                        raise RuntimeError(
                            f"bench job made {engine.job(job.job_id).good} good parts of {parts}"
                        )
            finally:
                task.cancel()
    finally:
        if store is not None:
            await store.close()
    per_part = [w / parts for w in walls]
    return {
        "sink": "store" if store_dir is not None else "memory",
        "walls_s": walls,
        "per_part_ms": _util.spread([p * 1e3 for p in per_part]),
        "cpu_per_part_ms": _util.spread([c / parts * 1e3 for c in cpus]),
        "parts_per_s": parts / statistics.median(walls),
        "requests_per_part": statistics.median(ops) / parts,
    }


async def _direct_run(
    live: LoadedConfig, devices: Mapping[str, TagBackend], parts: int, repeats: int
) -> dict[str, Any]:
    profiles = build_profiles(live, devices)
    cycle = PartCycle(profiles, live.cell, SystemClock())
    job, _new = JobQueue(live.recipes).submit(OrderRequest("direct", VARIANT, parts), by="bench", now=0.0)
    walls: list[float] = []
    cpus: list[float] = []
    async with asyncio.timeout(RUN_TIMEOUT_S):
        for _ in range(repeats):
            began, cpu = time.perf_counter(), time.process_time()
            for index in range(1, parts + 1):
                part = await cycle.run(job, index)
                await cycle.sort(part)
            walls.append(time.perf_counter() - began)
            cpus.append(time.process_time() - cpu)
    return {
        "walls_s": walls,
        "cpus_s": cpus,
        "per_part_ms": _util.spread([w / parts * 1e3 for w in walls]),
        "parts_per_s": parts / statistics.median(walls),
    }


def _merged(before: dict[str, Any], after: dict[str, Any], parts: int) -> dict[str, Any]:
    walls = [*before["walls_s"], *after["walls_s"]]
    cpus = [*before["cpus_s"], *after["cpus_s"]]
    return {
        "walls_s": walls,
        "cpus_s": cpus,
        "cpu_per_part_ms": _util.spread([c / parts * 1e3 for c in cpus]),
        "per_part_ms": _util.spread([w / parts * 1e3 for w in walls]),
        "parts_per_s": parts / statistics.median(walls),
    }


async def _round_trips(
    drivers: Mapping[str, Driver], per_part: Mapping[tuple[str, str, str], float]
) -> dict[str, Any]:
    """Median time of one request of each counted (device, kind, tag), and the sum one part needs."""
    rows: list[dict[str, Any]] = []
    floor_s = 0.0
    async with asyncio.timeout(RUN_TIMEOUT_S):
        for (device, kind, tag), count in sorted(per_part.items()):
            driver = drivers[device]
            times: list[float] = []
            value = driver.last(tag).value if kind != "call" else None
            for _ in range(ROUND_TRIPS):
                began = time.perf_counter()
                if kind == "read":
                    await driver.read(tag)
                elif kind == "write":
                    await driver.write(tag, value if value is not None else False)
                else:
                    break  # methods act on the device; the example cell calls none per part
                times.append(time.perf_counter() - began)
            if not times:
                continue
            median = statistics.median(times)
            floor_s += median * count
            rows.append(
                {"device": device, "kind": kind, "tag": tag, "per_part": count, "median_ms": median * 1e3}
            )
    return {"requests": rows, "floor_per_part_ms": floor_s * 1e3}


async def bench(
    parts: int, repeats: int, poll_s: float, publish_ms: float, with_store: bool
) -> dict[str, Any]:
    """Every figure of one run."""
    loaded = _bench_config(poll_s, publish_ms)
    sims = load_sims_config(CONFIG / "sims.yaml")
    sims = sims.model_copy(update={"gauge": sims.gauge.model_copy(update={"outlier_rate": 0.0})})
    clock = SystemClock()
    sim = SimCell(loaded.cell, sims, time_scale=0.0, ephemeral_ports=True)
    async with sim:
        live = loaded.with_cell(sim.cell_config())
        drivers: dict[str, Driver] = {
            name: build_driver(name, device, clock, resolve_path=live.resolve)
            for name, device in live.cell.devices.items()
        }
        counts: Counter[tuple[str, str, str]] = Counter()
        counting: dict[str, TagBackend] = {n: CountingBackend(d, counts) for n, d in drivers.items()}
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(d.run(), name=f"driver:{n}") for n, d in drivers.items()]
            try:
                await asyncio.gather(*(_link_up(d) for d in drivers.values()))
                # Engine and bare part cycle alternate (machine drift shows as spread, not as a ratio);
                # the first engine run also changes the cell over to the variant the part cycle needs.
                memory = await _engine_run(live, counting, counts, parts, repeats, None)
                counts.clear()
                before = await _direct_run(live, counting, parts, repeats)
                per_part = {k: v / (parts * repeats) for k, v in counts.items()}
                stored = None
                if with_store:
                    with tempfile.TemporaryDirectory(prefix="cellctl-bench-") as folder:
                        stored = await _engine_run(live, counting, counts, parts, repeats, Path(folder))
                after = await _direct_run(live, counting, parts, repeats)
                direct = _merged(before, after, parts)
                raw = await _round_trips(drivers, per_part)
            finally:
                for task in tasks:
                    task.cancel()
    direct_ms = direct["per_part_ms"]["median"]
    result: dict[str, Any] = {
        "variant": VARIANT,
        "parts": parts,
        "repeats": repeats,
        "time_scale": 0.0,
        "modbus_poll_interval_s": poll_s,
        "opcua_publishing_interval_ms": publish_ms,
        "engine_memory": memory,
        "engine_store": stored,
        "part_cycle": direct,
        "raw": raw,
        "requests_per_part": sum(per_part.values()),
    }
    for name, run in (("memory", memory), ("store", stored)):
        if run is None:
            continue
        engine_ms = run["per_part_ms"]["median"]
        result[f"overhead_{name}_ms_per_part"] = engine_ms - direct_ms
        result[f"cpu_overhead_{name}_ms_per_part"] = (
            run["cpu_per_part_ms"]["median"] - direct["cpu_per_part_ms"]["median"]
        )
        result[f"ratio_{name}_over_part_cycle"] = engine_ms / direct_ms
        result[f"ratio_{name}_over_raw"] = engine_ms / raw["floor_per_part_ms"]
    result["ratio_part_cycle_over_raw"] = direct_ms / raw["floor_per_part_ms"]
    result["environment"] = _util.environment(["asyncio"])
    return result


def _print(result: dict[str, Any]) -> None:
    print(
        f"production bench: {result['parts']} parts of {result['variant']} x {result['repeats']} repeats, "
        f"time scale 0, Modbus poll {result['modbus_poll_interval_s'] * 1e3:g} ms, "
        f"OPC UA publishing {result['opcua_publishing_interval_ms']:g} ms"
    )
    print(f"{'run':<28}{'parts/s':>10}{'ms/part':>10}{'x part cycle':>14}{'x raw':>8}{'CPU ms/part':>13}")
    direct = result["part_cycle"]
    raw_ms = result["raw"]["floor_per_part_ms"]
    rows = [
        ("engine, store (journal)", result["engine_store"]),
        ("engine, in-memory sink", result["engine_memory"]),
    ]
    for label, run in rows:
        if run is None:
            continue
        ms = run["per_part_ms"]["median"]
        print(
            f"{label:<28}{run['parts_per_s']:>10.1f}{ms:>10.2f}{ms / direct['per_part_ms']['median']:>14.2f}"
            f"{ms / raw_ms:>8.2f}{run['cpu_per_part_ms']['median']:>13.2f}"
        )
    ms = direct["per_part_ms"]["median"]
    label = "part cycle, no engine"
    cpu = direct["cpu_per_part_ms"]["median"]
    print(f"{label:<28}{direct['parts_per_s']:>10.1f}{ms:>10.2f}{1.0:>14.2f}{ms / raw_ms:>8.2f}{cpu:>13.2f}")
    print(f"{'raw round trips (floor)':<28}{1e3 / raw_ms:>10.1f}{raw_ms:>10.2f}")
    for name in ("store", "memory"):
        key = f"overhead_{name}_ms_per_part"
        if key in result:
            cpu_key = f"cpu_overhead_{name}_ms_per_part"
            print(
                f"engine overhead per part ({name}): {result[key]:+.2f} ms wall, "
                f"{result[cpu_key]:+.2f} ms CPU (compare with the spread in --json)"
            )
    print(f"requests per part: {result['requests_per_part']:.1f}")
    for row in result["raw"]["requests"]:
        print(
            f"  {row['device']:<12}{row['kind']:<6}{row['tag']:<18}x{row['per_part']:<5.2g}"
            f"{row['median_ms']:>8.3f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--parts", type=int, default=40, help="parts per measured order (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="measured orders per run (default 3)")
    parser.add_argument("--poll-s", type=float, default=0.002, help="Modbus poll interval (default 0.002)")
    parser.add_argument(
        "--publish-ms", type=float, default=0.0, help="OPC UA publishing interval, ms (default 0: fastest)"
    )
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=True, help="also journal")
    args = parser.parse_args(argv)
    if not 1 <= args.parts <= 10_000 or not 1 <= args.repeats <= 100 or not 0 < args.poll_s <= 1:
        parser.error("--parts 1..10000, --repeats 1..100, --poll-s in (0, 1]")
    _util.quiet_logs()
    result = asyncio.run(bench(args.parts, args.repeats, args.poll_s, args.publish_ms, args.store))
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
