"""Store bench: what the outbox's bound costs, in parts per second through the real Recorder and Store.

``.venv/bin/python bench/store.py [--json] [--parts N] [--repeats R] [--max-rows M] [--synchronous S]
[--folder DIR]``

Each part is the example cell's PartProduced (three measurements) recorded as in production: its journal entry
and its telemetry rows (one part, three quality) in one transaction, committed with ``synchronous`` S
(default NORMAL, where the CPU cost of the check shows; FULL, the records' default, adds an fsync per part
that hides it). Three runs of N parts each, on a fresh file each, repeated R times in rotating order:

1. **unbounded**: the bound check switched off (the store's ``OutboxBound.make_room`` replaced by a no-op):
   the cost of the journal and the outbox alone.
2. **bounded, room**: the default bound (1,000,000 rows / 512 MiB), never reached: the per-insert check on
   the in-memory totals.
3. **unbounded, prefilled**: M state telemetry rows queued first, the bound check off: the baseline of (4),
   since a fuller file is slower to write whatever the bound does.
4. **bounded, at the bound**: ``max_rows`` M already filled with state telemetry; every part makes room by
   dropping the oldest telemetry rows (pruned 1 % of M at a time).

Reported: parts/s (median of R) and the ratios (2)/(1) and (4)/(3). ``--folder /dev/shm`` (tmpfs) takes the
disk's fsync noise out of the figures, leaving the CPU cost the bound adds; the default is a temp folder on
disk, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util

from cellctl.core.events import DeviceHealthChanged, Measurement, PartProduced, Verdict
from cellctl.schema.load import load_config
from cellctl.store import OutboxMessage, Store, StorePolicy
from cellctl.telemetry.recorder import Recorder

CONFIG = Path(__file__).resolve().parent.parent / "config"


def part(index: int) -> PartProduced:
    measurements = tuple(
        Measurement(
            characteristic=name,
            value=value,
            quality="good",
            units="mm",
            nominal=value,
            lsl=value - 1,
            usl=value + 1,
            verdict=Verdict.PASS,
        )
        for name, value in (("width_mm", 420.0), ("depth_mm", 400.0), ("staple_height_mm", 1.4))
    )
    return PartProduced(
        ts=time.time(),
        part=f"J1-{index:05d}",
        job="J1",
        variant="oslo",
        index=index,
        verdict=Verdict.PASS,
        measurements=measurements,
        cycle_s=1.0,
    )


async def one_run(folder: Path, mode: str, parts: int, max_rows: int, synchronous: str) -> float:
    """Parts per second of one run on a fresh file."""
    identity = load_config(CONFIG).cell.identity
    path = folder / f"{mode}-{time.monotonic_ns()}.db"
    policy = StorePolicy(
        max_rows=max_rows if mode == "at_bound" else StorePolicy().max_rows,
        records_synchronous=synchronous,
        telemetry_synchronous=synchronous,
    )
    store = await Store.open(path, policy=policy)
    try:
        if mode in ("unbounded", "prefilled"):
            # Measurement only: the same store with its bound check switched off.
            store._bound.make_room = lambda *_args: {}  # type: ignore[method-assign]
        if mode in ("prefilled", "at_bound"):
            filler = OutboxMessage(topic="a/b/state", stream="state", body={"state": "Execute"})
            health = DeviceHealthChanged(ts=time.time(), device="robot1", state="up")
            for _ in range(max_rows):
                await store.append(health, [filler])
            assert store.stats().rows >= max_rows
        recorder = Recorder(store, identity)
        began = time.perf_counter()
        for index in range(1, parts + 1):
            await recorder.record(part(index))
        elapsed = time.perf_counter() - began
        if mode == "at_bound":
            assert store.stats().rows <= max_rows and store.stats().dropped.get("state", 0) > 0
        return parts / elapsed
    finally:
        await store.close()


async def bench(
    parts: int, repeats: int, max_rows: int, synchronous: str, folder: Path | None = None
) -> dict[str, Any]:
    modes = ["unbounded", "bounded", "prefilled", "at_bound"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with _util.temp_folder(folder) as where:
        for r in range(repeats):
            order = modes[r % 4 :] + modes[: r % 4]  # rotate: no mode always runs first (cold cache)
            for mode in order:
                rates[mode].append(await one_run(where, mode, parts, max_rows, synchronous))
    median = {m: statistics.median(v) for m, v in rates.items()}
    return {
        "parts": parts,
        "synchronous": synchronous,
        "folder": str(folder) if folder is not None else "temp (disk)",
        "repeats": repeats,
        "max_rows_at_bound": max_rows,
        "parts_per_s": {m: round(v, 1) for m, v in median.items()},
        "runs": {m: [round(x, 1) for x in v] for m, v in rates.items()},
        "ratio_bounded_vs_unbounded": round(median["bounded"] / median["unbounded"], 3),
        "ratio_at_bound_vs_prefilled": round(median["at_bound"] / median["prefilled"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--parts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=20_000)
    parser.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL")
    parser.add_argument("--folder", type=Path, default=None, help="where the files go (e.g. /dev/shm)")
    args = parser.parse_args(argv)
    _util.quiet_logs()
    result = asyncio.run(bench(args.parts, args.repeats, args.max_rows, args.synchronous, args.folder))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rates = result["parts_per_s"]
        print(f"parts per second (median of {args.repeats}, {args.parts} parts each, {args.synchronous}):")
        print(f"  unbounded (no bound check)      {rates['unbounded']:>9.1f}")
        ratio = result["ratio_bounded_vs_unbounded"]
        print(f"  bounded, room                   {rates['bounded']:>9.1f}  ratio {ratio}")
        print(f"  unbounded, {args.max_rows} rows queued  {rates['prefilled']:>9.1f}")
        ratio = result["ratio_at_bound_vs_prefilled"]
        print(f"  bounded, at the bound ({args.max_rows}) {rates['at_bound']:>9.1f}  ratio {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
