"""Bench helpers: synthetic cells, simulator servers in a child process, statistics and environment facts.

Run as a script it is the child process: ``python bench/_util.py DIR [--scan-counter TAG]
[--stamp DEVICE.TAG --every S]`` serves every device of ``DIR/cell.yaml`` with device_sims on free loopback
ports, prints ``listening <endpoint> <device,...>`` lines and ``ready``, and runs until SIGTERM, until its
parent goes away, or for at most ``--max-s`` seconds. Keeping the simulators in their own process keeps
their CPU off the event loop being measured (the machine has two cores: one each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
COUNTER_TAG = "scan_count"
"""Input register each synthetic unit's server increments on every read of it: one change per poll scan."""


# ------------------------------------------------------------------------------------------ synthetic cell


def _unit_tags() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """100 tags of one synthetic Modbus unit (all four tables, every datatype, gaps) and their values."""
    tags: dict[str, dict[str, Any]] = {}
    values: dict[str, Any] = {}

    def add(name: str, value: Any, **spec: Any) -> None:
        tags[name] = spec
        values[name] = value

    for i in range(16):
        add(f"c{i:02d}", i % 3 == 0, table="coil", address=i, datatype="bool")
    # 28 unused inputs between the two groups: more than the coalescer bridges, so two requests.
    for i in range(12):
        add(f"di{i:02d}", i % 2 == 0, table="discrete_input", address=i, datatype="bool")
    for i in range(4):
        add(f"di{12 + i:02d}", True, table="discrete_input", address=40 + i, datatype="bool")
    for i in range(10):
        add(f"ir_u16_{i}", 100 + i, table="input_register", address=i, datatype="uint16")
    for i in range(10):
        add(f"ir_f32_{i}", 1.5 * i, table="input_register", address=10 + 2 * i, datatype="float32")
    # A 4-register gap, bridged.
    for i in range(9):
        add(f"ir_i32_{i}", -70000 * i, table="input_register", address=34 + 2 * i, datatype="int32")
    add(COUNTER_TAG, 0, table="input_register", address=52, datatype="uint16")
    for i in range(8):
        add(f"hr_i16_{i}", -i, table="holding_register", address=i, datatype="int16", access="rw")
    for i in range(4):
        add(f"hr_bit_{i}", i % 2 == 1, table="holding_register", address=8, bit=i, datatype="bool")
    for i in range(8):
        add(f"hr_u32_{i}", 70000 + i, table="holding_register", address=9 + 2 * i, datatype="uint32")
    for i in range(8):
        add(
            f"hr_f64_{i}",
            0.25 * i,
            table="holding_register",
            address=30 + 4 * i,
            datatype="float64",
            scale=0.1,
            access="rw",
        )
    add("hr_label", "UNIT", table="holding_register", address=62, datatype="string", length=8)
    # Far away: a second holding-register request, in little-endian word order as many PLCs use.
    for i in range(9):
        add(
            f"hr_le_{i}",
            2.5 * i,
            table="holding_register",
            address=200 + 2 * i,
            datatype="float32",
            word_order="little",
        )
    return tags, values


def synthetic_modbus_cell(units: int = 10, per_endpoint: int = 5) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cell and sims data (YAML-ready) of ``units`` Modbus units of 100 tags, ``per_endpoint`` per server."""
    tags, values = _unit_tags()
    devices: dict[str, Any] = {}
    initial: dict[str, Any] = {}
    for n in range(units):
        name = f"unit{n + 1:02d}"
        devices[name] = {
            "driver": "modbus",
            "endpoint": f"tcp://{HOST}:{15100 + n // per_endpoint}",
            "unit_id": n % per_endpoint + 1,
            "profile": "press",
            "tags": tags,
        }
        initial[name] = {"initial": values}
    cell = {
        "schema_version": 1,
        "identity": {"enterprise": "bench", "site": "lab", "area": "a", "line": "l", "cell": "synthetic"},
        "devices": devices,
    }
    return cell, {"devices": initial}


def robot_stamp_cell(stamp_tag: str, node: str) -> dict[str, Any]:
    """The example cell's robot alone, with one float64 tag more the server stamps with its clock."""
    from ruamel.yaml import YAML

    cell = YAML(typ="safe", pure=True).load((REPO / "config" / "cell.yaml").read_text(encoding="utf-8"))
    robot = cell["devices"]["robot1"]
    robot["tags"][stamp_tag] = {"node": node, "datatype": "float64"}
    return {"schema_version": 1, "identity": cell["identity"], "devices": {"robot1": robot}}


def write_config(folder: Path, cell: dict[str, Any], sims: dict[str, Any] | None = None) -> Path:
    """Write ``cell.yaml`` (and ``sims.yaml``) into ``folder`` as JSON, which is YAML; returns the folder."""
    (folder / "cell.yaml").write_text(json.dumps(cell, indent=1), encoding="utf-8")
    if sims is not None:
        (folder / "sims.yaml").write_text(json.dumps(sims, indent=1), encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------- child-process server


class SimProcess:
    """device_sims serving a config folder in a child process; a context manager, usable across event loops.

    ``endpoints`` maps each device to the endpoint it is served at once the child says ``ready``.
    """

    def __init__(
        self, folder: Path, *extra: str, start_timeout_s: float = 60.0, max_s: float = 600.0
    ) -> None:
        self.folder = folder
        self.args = [
            sys.executable,
            str(Path(__file__).resolve()),
            str(folder),
            "--max-s",
            str(max_s),
            *extra,
        ]
        self.start_timeout_s = start_timeout_s
        self.endpoints: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Process id of the child."""
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> SimProcess:
        self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        assert self._proc.stdout is not None
        out = self._proc.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout_s
        pending = b""
        while True:
            # Raw reads of the pipe: a buffered readline would hide lines already read from select().
            left = deadline - time.monotonic()
            ready, _, _ = select.select([out], [], [], max(0.0, left))
            if not ready:
                self.__exit__(None, None, None)
                raise TimeoutError(f"simulator not ready within {self.start_timeout_s:g} s")
            chunk = os.read(out, 65536)
            if not chunk:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self.__exit__(None, None, None)
                raise RuntimeError(f"simulator exited before it was ready:\n{err}")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                words = line.decode().split()
                if words[:1] == ["ready"]:
                    return self
                if words[:1] == ["listening"] and len(words) == 3:
                    for device in words[2].split(","):
                        self.endpoints[device] = words[1]

    def __exit__(self, *_exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the child has used so far."""
        return process_cpu_s(self.pid)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` from /proc (NaN where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def system_busy_s() -> float:
    """CPU seconds all processes of the machine have run since boot, from /proc/stat (NaN without)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return math.nan
    user, nice, system = (int(f) for f in fields[:3])
    # Process time only (user, nice, system): interrupts and a hypervisor's steal are nobody's process.
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def temp_folder(under: Path | None = None) -> Iterator[Path]:
    """A temporary folder (in ``under`` when given), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="cellctl-bench-", dir=under) as name:
        yield Path(name)


# ------------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """min, median and max (and how many) of ``values``."""
    if not values:
        return {"n": 0, "min": math.nan, "median": math.nan, "max": math.nan}
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def environment(loops: Sequence[str]) -> dict[str, Any]:
    """Python, library versions, machine and git commit of this run."""

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": {p: version(p) for p in ("asyncua", "pymodbus", "uvloop", "cellctl")},
        "loops": list(loops),
        "commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def quiet_logs() -> None:
    """Drivers and libraries log only errors, to stderr, so the table stays readable."""
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    for noisy in ("asyncua", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


# -------------------------------------------------------------------------------------- the child process


async def _serve(args: argparse.Namespace) -> None:
    from device_sims.harness import SimCell

    cell = SimCell.from_config_dir(args.folder, ephemeral_ports=True, host=HOST)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with cell:
        if args.scan_counter:
            for server in cell.servers:
                if server.protocol == "modbus":
                    server.gate.add_rule(_counter_rule(cell.device_sim, args.scan_counter))
        for server in cell.servers:
            print(f"listening {server.endpoint} {','.join(server.devices)}", flush=True)
        print("ready", flush=True)
        async with asyncio.TaskGroup() as group:
            helpers = [group.create_task(_watch_parent(stop, args.max_s), name="watch_parent")]
            if args.stamp:
                device, _, tag = args.stamp.partition(".")
                force = cell.device_sim(device).force
                helpers.append(group.create_task(_stamp(force, tag, args.every), name="stamp"))
            await stop.wait()
            for task in helpers:
                task.cancel()


def _counter_rule(device_sim: Callable[[str], Any], tag: str) -> Callable[[Any], int | None]:
    """A gate rule that bumps ``tag`` of the device on every read touching it (the reply carries the bump)."""
    counts: dict[str, int] = {}

    def rule(request: Any) -> int | None:
        if not request.write and tag in request.tags:
            count = counts[request.device] = (counts.get(request.device, 0) + 1) % 65536
            device_sim(request.device).force(tag, count)
        return None

    return rule


async def _stamp(force: Callable[[str, float], None], tag: str, every: float) -> None:
    """Change ``tag`` to the monotonic clock (shared by every process of the machine) about every ``every``
    s; the spacing is drawn in [0.5, 1.5] x ``every`` so that changes do not lock to a publishing cycle."""
    rng = random.Random(0)
    while True:
        await asyncio.sleep(every * rng.uniform(0.5, 1.5))
        force(tag, time.monotonic())


async def _watch_parent(stop: asyncio.Event, max_s: float) -> None:
    """End the child when its parent is gone or after ``max_s`` seconds, whatever happens to the parent."""
    parent = os.getppid()
    deadline = time.monotonic() + max_s
    while os.getppid() == parent and time.monotonic() < deadline:  # noqa: ASYNC110 - no event for this
        await asyncio.sleep(0.5)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    """Serve a config folder with device_sims until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--scan-counter", default="", help="tag bumped on every read of it (Modbus)")
    parser.add_argument("--stamp", default="", help="DEVICE.TAG set to time.monotonic() every --every s")
    parser.add_argument("--every", type=float, default=0.01, help="mean seconds between two stamps")
    parser.add_argument("--max-s", type=float, default=600.0, help="stop after this long in any case")
    args = parser.parse_args(argv)
    quiet_logs()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
