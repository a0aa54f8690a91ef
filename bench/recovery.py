"""Cost of reading the journal for crash recovery at start-up, against the journal's length.

Fills a store file with a synthetic history (finished jobs, each with its changeover, steps and parts) through
plain SQL in bulk, adds one interrupted changeover and a few unfinished jobs, then times ``read_recovery``
(median of several runs) for several history lengths. Prints a table, or one JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cellctl.engine.recovery import read_recovery
from cellctl.store import Store

SIZES = (1_000, 10_000, 100_000)
"""Finished jobs in the history; each adds 20 journal rows (about 2 M rows at the largest)."""
REPEATS = 5


def _row(kind: str, stream: str, job: str | None, data: dict[str, Any]) -> tuple[Any, ...]:
    return (time.time(), kind, stream, job, json.dumps(data))


def _job(job: str, status: str, produced: int = 0) -> tuple[Any, ...]:
    data = {
        "job": job,
        "order_id": f"SO-{job}",
        "variant": "oslo",
        "recipe_version": 3,
        "recipe_hash": "h",
        "quantity": 4,
        "status": status,
        "produced": produced,
        "good": produced,
        "bad": 0,
        "invalid": 0,
        "parameters": {},
        "by": "mes",
        "reason": "",
        "priority": 0,
    }
    return _row("job", "job", job, data)


def _history(job: str, co: str) -> list[tuple[Any, ...]]:
    rows = [_job(job, "queued")]
    steps = ["toolchanger:tool_change", "robot1:robot_program", "fixture:fixture_move", "stapler:setpoints"]
    head = {"changeover": co, "job": job, "from_variant": None, "to_variant": "oslo", "steps": steps}
    rows.append(_row("changeover", "changeover", job, {**head, "status": "started"}))
    for step in steps:
        for status in ("started", "done"):
            rows.append(
                _row(
                    "step", "changeover", job, {"changeover": co, "job": job, "step": step, "status": status}
                )
            )
    rows.append(_row("changeover", "changeover", job, {**head, "status": "completed"}))
    rows.append(_job(job, "started"))
    for index in range(1, 5):
        rows.append(_row("part", "part", job, {"job": job, "index": index, "verdict": "pass"}))
    rows.append(_job(job, "completed", produced=4))
    rows.append(_row("state_changed", "state", None, {"state": "Execute"}))
    return rows


def _fill(path: Path, jobs: int) -> int:
    conn = sqlite3.connect(path)
    rows: list[tuple[Any, ...]] = []
    for n in range(jobs):
        rows.extend(_history(f"old{n}", f"co{n}"))
    tail = _history("J-open", "C-open")[:6]  # queued, changeover started, two steps: killed there
    rows.extend(tail)
    rows.extend(_job(f"J-q{n}", "queued") for n in range(3))
    with conn:
        conn.executemany("INSERT INTO journal (ts, kind, stream, job_id, data) VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()
    return len(rows)


async def _measure(jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        store = await Store.open(path)
        await store.close()
        rows = _fill(path, jobs)
        store = await Store.open(path)
        try:
            times = []
            for _ in range(REPEATS):
                began = time.perf_counter()
                recovery = await read_recovery(store)
                times.append(time.perf_counter() - began)
            assert recovery.changeover is not None and len(recovery.jobs) == 4
        finally:
            await store.close()
    return {"finished_jobs": jobs, "rows": rows, "median_ms": statistics.median(times) * 1000}


async def _main(as_json: bool) -> None:
    results = [await _measure(n) for n in SIZES]
    if as_json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'finished jobs':>14} {'journal rows':>13} {'read_recovery':>14}")
    for r in results:
        print(f"{r['finished_jobs']:>14,} {r['rows']:>13,} {r['median_ms']:>11.1f} ms")


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    asyncio.run(_main(parser.parse_args().json))


if __name__ == "__main__":
    main()
