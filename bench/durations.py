"""Durations bench: loading measured step durations from a journal of 100,000 rows at controller start.

``.venv/bin/python bench/durations.py [--rows N] [--json]``

A store is filled with ``--rows`` journal rows (default 100,000): about three in four are step rows
(started, then done or, one in ten, failed) over 6 devices x 6 step kinds, the rest part and state rows.
Measured after one warm-up read, median and max of 5 runs each: what the runtime does at start
(``Store.step_durations`` over the bounded window of the newest 10,000 step rows, then
``StepDurations.from_samples``), what ``cellctl plan`` does (``steps.read_only``: open read-only, read,
close), and, as the baseline the window avoids, the same query over every step row of the journal. Also
printed: rows read, samples and keys kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cellctl.core.events import StepStatus  # noqa: E402
from cellctl.engine.durations import StepDurations  # noqa: E402
from cellctl.store import Store  # noqa: E402
from cellctl.store import steps as stored_steps  # noqa: E402

REPEATS = 5
DEVICES = ("robot1", "toolchanger", "fixture", "stapler", "press", "gauge")
KINDS = ("tool_change", "robot_program", "fixture_unclamp", "fixture_move", "fixture_clamp", "setpoints")


def _fill(path: Path, rows: int, seed: int) -> int:
    """Write ``rows`` journal rows straight into the store's table (one transaction); returns step rows."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    batch: list[tuple[float, str, str, str | None, str]] = []
    steps = 0
    ts = 1_800_000_000.0
    while len(batch) < rows:
        ts += 1.0
        if rng.random() < 0.6:
            device, kind = rng.choice(DEVICES), rng.choice(KINDS)
            base = {
                "changeover": "C",
                "job": "J",
                "step": f"{device}:{kind}",
                "step_kind": kind,
                "device": device,
                "detail": "",
            }
            batch.append((ts, "step", "changeover", "J", json.dumps({**base, "status": "started"})))
            status = StepStatus.FAILED if rng.random() < 0.1 else StepStatus.DONE
            seconds = rng.lognormvariate(1.0, 0.3) if status is StepStatus.DONE else None
            data = {**base, "status": status.value, "duration_s": seconds}
            batch.append((ts, "step", "changeover", "J", json.dumps(data)))
            steps += 2
        else:
            kind = rng.choice(("part", "state_changed"))
            batch.append((ts, kind, "part" if kind == "part" else "state", None, json.dumps({"x": 1})))
    batch = batch[:rows]
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO journal (ts, kind, stream, job_id, data) VALUES (?, ?, ?, ?, ?)", batch)
    conn.execute("COMMIT")
    conn.close()
    return sum(1 for row in batch if row[1] == "step")


async def _timed(work: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(REPEATS):
        began = time.perf_counter()
        result = await work()
        times.append(time.perf_counter() - began)
    return times, result


def _ms(times: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}


async def _bench(rows: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cellctl.db"
        store = await Store.open(path, synchronous="NORMAL")
        await store.close()
        step_rows = _fill(path, rows, seed)
        store = await Store.open(path, synchronous="NORMAL")
        try:

            async def at_start() -> tuple[StepDurations, int]:
                samples = await store.step_durations()
                return StepDurations.from_samples(samples), len(samples)

            async def everything() -> int:
                return len(await store.step_durations(window=rows + 1))

            async def cli() -> int:
                return len(await asyncio.to_thread(stored_steps.read_only, path))

            await cli()  # warm-up: the file's pages in the OS cache, as on a running controller
            start_times, (durations, start_samples) = await _timed(at_start)
            full_times, full_samples = await _timed(everything)
            cli_times, cli_samples = await _timed(cli)
        finally:
            await store.close()
    return {
        "rows": rows,
        "step_rows": step_rows,
        "window_rows": stored_steps.DEFAULT_WINDOW_ROWS,
        "runtime_start": {**_ms(start_times), "samples_read": start_samples, "keys": len(durations)},
        "plan_cli_read_only": {**_ms(cli_times), "samples_read": cli_samples},
        "unbounded_baseline": {**_ms(full_times), "samples_read": full_samples},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="journal rows (default 100,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    result = asyncio.run(_bench(args.rows, args.seed))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"journal: {result['rows']:,} rows, {result['step_rows']:,} step rows; "
        f"window: newest {result['window_rows']:,} step rows"
    )
    print(f"{'load':<44} {'median ms':>10} {'max ms':>8} {'samples':>8}")
    for key, label in (
        ("runtime_start", "runtime start (store + StepDurations)"),
        ("plan_cli_read_only", "cellctl plan (read-only open + read)"),
        ("unbounded_baseline", "baseline: every step row (no window)"),
    ):
        fig = result[key]
        print(f"{label:<44} {fig['median_ms']:>10.1f} {fig['max_ms']:>8.1f} {fig['samples_read']:>8,}")
    ratio = result["unbounded_baseline"]["median_ms"] / result["runtime_start"]["median_ms"]
    print(f"keys kept: {result['runtime_start']['keys']}; baseline / windowed load: {ratio:.1f}x")


if __name__ == "__main__":
    main()
