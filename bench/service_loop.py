"""Service event loop benchmark: a running controller's protocol round trips on asyncio's loop and uvloop.

Usage: ``.venv/bin/python bench/service_loop.py [--json] [--rounds N] [--requests N]`` (about 30 s).
Loopback only. The example cell's simulators run in a child process (their CPU off the measured loop); in
this process a whole controller (``CellApp``, MQTT off) runs on the loop under test, and on that same loop:
  (a) control-socket round trips: a ``ControlClient`` sends ``status`` requests one after the other (the TUI's
      and ``cellctl ctl``'s request; client and server share the loop, as the TUI's do not: both ends count);
  (b) Modbus read round trips: ``driver.read("width_mm")`` on the gauge, one after the other, while the
      controller's own drivers poll as they do in service.
The two loops alternate round by round (each round a fresh controller on a fresh loop, same store file), since
Python paths drift between runs; the figures are per request (median over rounds of each round's mean) and
the ratio asyncio / uvloop (above 1: uvloop is faster). Progress goes to stderr; stdout gets the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util

from cellctl.api.client import ControlClient
from cellctl.core.ports import LinkState
from cellctl.runtime.app import CellApp, Controller
from cellctl.schema.load import LoadedConfig, load_config

CONFIG = _util.REPO / "config"
GAUGE_TAG = "width_mm"
UP_TIMEOUT_S = 20.0

uvloop: Any
try:
    import uvloop
except ImportError:  # the test extra has it; a plain install may not
    uvloop = None


def loop_kinds() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]]:
    """asyncio's default loop, then uvloop when importable."""
    kinds: list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]] = [("asyncio", None)]
    if uvloop is not None:
        kinds.append(("uvloop", uvloop.new_event_loop))
    return kinds


def controller_config(folder: Path, endpoints: dict[str, str]) -> LoadedConfig:
    """The example cell on the simulators' endpoints, its store and socket in ``folder``, MQTT off."""
    loaded = load_config(CONFIG)
    cell = loaded.cell
    devices = {n: d.model_copy(update={"endpoint": endpoints[n]}) for n, d in cell.devices.items()}
    return loaded.with_cell(
        cell.model_copy(
            update={
                "devices": devices,
                "store": cell.store.model_copy(update={"path": str(folder / "bench.db")}),
                "api": cell.api.model_copy(update={"socket": str(folder / "bench.sock")}),
                "mqtt": cell.mqtt.model_copy(update={"enabled": False}),
            }
        )
    )


async def one_round(config: LoadedConfig, requests: int) -> dict[str, float]:
    """A controller on the running loop; mean seconds per control request and per Modbus read."""
    figures: dict[str, float] = {}
    stop = asyncio.Event()

    async def measure(controller: Controller) -> None:
        gauge = controller.drivers["gauge"]
        up = asyncio.Event()
        unsubscribe = gauge.on_health(lambda h: up.set() if h.state is LinkState.UP else None)
        try:
            if gauge.health.state is not LinkState.UP:
                async with asyncio.timeout(UP_TIMEOUT_S):
                    await up.wait()
        finally:
            unsubscribe()
        async with ControlClient(config.resolve(config.cell.api.socket)) as client:
            await client.request("status")  # warm up
            began = time.perf_counter()
            for _ in range(requests):
                await client.request("status")
            figures["control_s"] = (time.perf_counter() - began) / requests
        await gauge.read(GAUGE_TAG)
        began = time.perf_counter()
        for _ in range(requests):
            await gauge.read(GAUGE_TAG)
        figures["modbus_s"] = (time.perf_counter() - began) / requests
        stop.set()

    await CellApp(config, publish=False).run(stop, measure)
    return figures


def render(doc: dict[str, Any]) -> str:
    """The table."""
    lines = [
        f"service loop benchmark: {doc['rounds']} rounds x {doc['requests']} requests per loop, per request "
        "(median of the rounds' means)",
        f"{'':28}{'asyncio':>12}{'uvloop':>12}{'ratio':>9}",
    ]
    for key, label in (("control_s", "control socket status"), ("modbus_s", "modbus read (gauge)")):
        row = doc["figures"][key]
        uv = row.get("uvloop")
        ratio = row["asyncio"] / uv if uv else float("nan")
        uv_text = f"{uv * 1e6:9.0f} us" if uv else f"{'-':>12}"
        lines.append(f"{label:28}{row['asyncio'] * 1e6:9.0f} us{uv_text}{ratio:8.2f}x")
    if uvloop is None:
        lines.append("(uvloop is not importable: asyncio's loop only)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args(argv)
    _util.quiet_logs()
    kinds = loop_kinds()
    samples: dict[str, dict[str, list[float]]] = {"control_s": {}, "modbus_s": {}}
    with _util.temp_folder() as folder, _util.SimProcess(CONFIG) as sims:
        config = controller_config(folder, sims.endpoints)
        for r in range(args.rounds):
            for name, factory in kinds:
                log(f"round {r + 1}/{args.rounds}: {name}")
                figures = run_in(factory, one_round(config, args.requests))
                for key, value in figures.items():
                    samples[key].setdefault(name, []).append(value)
    doc = {
        "rounds": args.rounds,
        "requests": args.requests,
        "figures": {key: {n: statistics.median(v) for n, v in by.items()} for key, by in samples.items()},
        "samples": samples,
        "environment": _util.environment([n for n, _ in kinds]),
    }
    sys.stdout.write((json.dumps(doc, indent=1) if args.json else render(doc)) + "\n")
    return 0


def log(message: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(message + "\n")


def run_in(factory: Callable[[], asyncio.AbstractEventLoop] | None, coro: Any) -> dict[str, float]:
    """Run ``coro`` on a fresh loop made by ``factory`` (asyncio's default when None)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        result: dict[str, float] = runner.run(coro)
    return result


if __name__ == "__main__":
    sys.exit(main())
