"""Device-layer benchmark: Modbus scan throughput, OPC UA change latency, link-fault detection and recovery.

Usage: ``.venv/bin/python bench/devices.py [--json] [--quick]`` (about 2 minutes; ``--quick`` about 20 s).
Loopback only (127.0.0.1). Every figure is measured in this one run, each against its own baseline in the
same run, since Python paths drift 30-40 % between runs (shared/PERF.md). Progress goes to stderr; stdout
gets the table, or with ``--json`` one JSON document.

1. Modbus, 1,000 tags over 10 units (100 tags each, all four tables, every datatype, gaps; two device_sims
   endpoints of five units, in a child process): requests per scan and tags read per second
   (a) through ``ModbusDriver.run()`` with its coalesced blocks, polling back to back; a scan is counted
       each time the unit's ``scan_count`` register, which the simulator bumps on every read of it, reaches
       a watch callback: the driver's real poll path, observed through its public watch API;
   (b) one request per tag through the driver's public ``read(tag)``;
   (c) raw pymodbus reads of exactly the blocks the driver reads (``driver.blocks``), one client per unit;
   (d) the same raw reads, each tag then decoded by pymodbus' own ``convert_from_registers`` (the floor for
       reads that yield values, where (c) yields registers).
   Each with the default asyncio loop and with uvloop; (a), (c) and (d) alternate over several rounds. Wall
   time per scan (the target: (a) <= 1.1 x (c)) and this process's CPU per scan; the simulator's and other
   processes' CPU share in each window, since two cores are shared by client, simulator and neighbours.
   Plus the in-process CPU of the codec calls a poll makes (``ReadBlock.slice``, ``ReadBlock.decode``).
2. OPC UA value change -> Reading latency through ``OpcUaDriver.watch`` against a raw asyncua subscription
   (iterator mode) on the same simulated robot, same publishing and sampling intervals. The simulator (own
   process) sets a float64 tag to ``time.monotonic()`` when it makes the change; the receiver subtracts it
   from its own ``time.monotonic()`` (one clock for every process of the machine).
3. Link faults on the example cell's simulators: one Modbus device (gauge) and the OPC UA robot, for a
   dropped link (connections aborted; server stopped) and a blackholed link (accepts, never answers): time
   from the fault to health DOWN, and from the fault cleared to health UP and to the first fresh GOOD value.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent
from asyncua.ua.uatypes import Double
from pymodbus.client import AsyncModbusTcpClient

from cellctl.core.clock import SystemClock
from cellctl.core.ports import Health, LinkState
from cellctl.core.tags import Quality, Reading
from cellctl.drivers import ModbusDriver, OpcUaDriver, build_driver
from cellctl.schema.cell import Access, CellConfig, DeviceConfig

uvloop: Any
try:
    import uvloop
except ImportError:  # the .venv has it; a plain install may not
    uvloop = None

TARGET_RATIO = 1.1
STAMP_TAG = "bench_stamp"
STAMP_NODE = "ns=2;s=Robot1.BenchStamp"
STAMP_EVERY_S = 0.01
BACK_TO_BACK_S = 1e-6
"""Poll interval of (a): shorter than any scan, so the driver polls back to back."""
BUSY_MACHINE = 0.2
"""Share of a core used by other processes above which the wall-time figures of a window are suspect."""
IDLE_POLL_S = 60.0
"""Poll interval of (b): the driver's own poll stays out of the way of the per-tag reads."""


@dataclass(frozen=True)
class Plan:
    """How long and how often each part measures."""

    modbus_window_s: float
    modbus_warmup_s: float
    modbus_rounds: int
    opcua_changes: int
    opcua_rounds: int
    opcua_intervals_ms: tuple[float, ...]
    fault_kinds: tuple[str, ...]
    fault_repeats: int
    fault_hold_s: float = 0.5


FULL = Plan(1.0, 0.3, 5, 300, 2, (0.0, 20.0), ("drop", "stop", "blackhole"), 3)
QUICK = Plan(0.5, 0.2, 1, 100, 1, (0.0,), ("stop", "blackhole"), 1)


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def loop_kinds() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]]:
    """The event loops to measure with: asyncio's default, then uvloop when importable."""
    kinds: list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]] = [("asyncio", None)]
    if uvloop is not None:
        kinds.append(("uvloop", uvloop.new_event_loop))
    return kinds


def run_in(factory: Callable[[], asyncio.AbstractEventLoop] | None, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on a fresh loop made by ``factory`` (asyncio's default when None)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def host_port(endpoint: str) -> tuple[str, int]:
    """Host and port of ``tcp://host:port`` or ``opc.tcp://host:port/path``."""
    rest = endpoint.split("://", 1)[1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)


async def wait_until(predicate: Callable[[], bool], changed: asyncio.Event, timeout: float) -> bool:
    """Wait (bounded) until ``predicate()`` holds, re-checked whenever ``changed`` is set; False if it never
    does within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        return False
    return True


# =========================================================================================== 1. Modbus


@dataclass
class ScanSample:
    """One measurement window of one way of reading the 1,000 tags."""

    window_s: float
    requests_per_scan: int
    tags_per_scan: int
    scans: list[int]
    """Complete scans per unit within the window."""
    reads: int = 0
    """Single-tag reads within the window (per-tag mode)."""
    client_cpu_s: float = math.nan
    server_cpu_s: float = math.nan
    other_cpu_s: float = math.nan
    """CPU other processes of the machine used during the window."""
    bad: int = 0
    """Readings or replies that were not GOOD (must stay 0)."""

    @property
    def tags_per_s(self) -> float:
        """Tags read per second, all units together."""
        if self.reads:
            return self.reads / self.window_s
        return sum(self.scans) * (self.tags_per_scan / len(self.scans)) / self.window_s

    @property
    def scan_ms(self) -> float:
        """Time to read all the tags once (ms), all units polling at the same time."""
        return 1000 * self.tags_per_scan / self.tags_per_s if self.tags_per_s else math.inf

    @property
    def requests_per_s(self) -> float:
        """Requests per second on the wire."""
        return self.tags_per_s / self.tags_per_scan * self.requests_per_scan

    @property
    def client_cpu_ms_per_scan(self) -> float:
        """CPU of this process (the client) per full scan, in ms."""
        return self.client_cpu_s * self.scan_ms / self.window_s

    @property
    def server_busy(self) -> float:
        """Share of one core the simulator process used."""
        return self.server_cpu_s / self.window_s

    @property
    def other_busy(self) -> float:
        """Share of one core other processes of the machine used."""
        return self.other_cpu_s / self.window_s

    def summary(self) -> dict[str, Any]:
        """Figures for the JSON document."""
        return {
            "window_s": round(self.window_s, 3),
            "requests_per_scan": self.requests_per_scan,
            "scans_per_unit": self.scans,
            "tag_reads": self.reads or None,
            "tags_per_s": round(self.tags_per_s, 1),
            "requests_per_s": round(self.requests_per_s, 1),
            "scan_ms": round(self.scan_ms, 3),
            "client_cpu_ms_per_scan": round(self.client_cpu_ms_per_scan, 3),
            "server_busy": round(self.server_busy, 3),
            "other_processes_busy": round(self.other_busy, 3),
            "not_good": self.bad,
        }


class Window:
    """The measured stretch of a run: a warm-up, then ``window_s`` with CPU counters taken at both ends."""

    def __init__(self, sims: _util.SimProcess, warmup_s: float, window_s: float) -> None:
        self.sims = sims
        self.warmup_s = warmup_s
        self.window_s = window_s
        self.start = self.end = math.inf
        self.cpu = self.server_cpu = self.other_cpu = math.nan

    async def run(self) -> None:
        """Sleep through warm-up and window, taking the counters."""
        await asyncio.sleep(self.warmup_s)
        cpu0, server0, all0 = time.process_time(), self.sims.cpu_s(), _util.system_busy_s()
        self.start = time.perf_counter()
        self.end = self.start + self.window_s
        await asyncio.sleep(self.window_s)
        self.end = time.perf_counter()
        self.cpu = time.process_time() - cpu0
        self.server_cpu = self.sims.cpu_s() - server0
        # Whatever else ran on the machine meanwhile (the clock ticks are coarse: a rough figure).
        self.other_cpu = max(0.0, _util.system_busy_s() - all0 - self.cpu - self.server_cpu)

    def inside(self, t: float) -> bool:
        """True for a moment within the window."""
        return self.start <= t <= self.end


class Others:
    """Share of a core the machine's other processes (not this one, not the simulator) used meanwhile."""

    def __init__(self, sims: _util.SimProcess) -> None:
        self.sims = sims
        self.busy = math.nan

    def __enter__(self) -> Others:
        self._start = (time.perf_counter(), time.process_time(), self.sims.cpu_s(), _util.system_busy_s())
        return self

    def __exit__(self, *_exc: object) -> None:
        wall0, mine0, sim0, all0 = self._start
        wall = time.perf_counter() - wall0
        mine = time.process_time() - mine0
        sim = self.sims.cpu_s() - sim0
        self.busy = round(max(0.0, _util.system_busy_s() - all0 - mine - sim) / wall, 3)


def with_poll(device: DeviceConfig, endpoint: str, poll_interval_s: float) -> DeviceConfig:
    """``device`` served at ``endpoint`` and polled every ``poll_interval_s``."""
    return device.model_copy(update={"endpoint": endpoint, "poll_interval_s": poll_interval_s})


async def _start_drivers(
    drivers: dict[str, ModbusDriver], group: asyncio.TaskGroup
) -> list[asyncio.Task[None]]:
    changed = asyncio.Event()
    for driver in drivers.values():
        driver.on_health(lambda _h: changed.set())
    tasks = [group.create_task(d.run(), name=f"driver:{n}") for n, d in drivers.items()]

    def all_up() -> bool:
        return all(d.health.state is LinkState.UP for d in drivers.values())

    if not await wait_until(all_up, changed, 10):
        raise RuntimeError("Modbus drivers not up within 10 s")
    return tasks


async def scan_through_driver(
    devices: dict[str, DeviceConfig], sims: _util.SimProcess, plan: Plan
) -> ScanSample:
    """(a) ``ModbusDriver.run()`` polling back to back; scans counted from the scan counter's callbacks."""
    clock = SystemClock()
    drivers: dict[str, ModbusDriver] = {}
    seen: dict[str, list[float]] = {}
    for name, device in devices.items():
        driver = build_driver(name, with_poll(device, sims.endpoints[name], BACK_TO_BACK_S), clock)
        assert isinstance(driver, ModbusDriver)
        drivers[name] = driver
        times = seen[name] = []

        def on_reading(tag: str, reading: Reading, times: list[float] = times) -> None:
            if tag == _util.COUNTER_TAG and reading.quality is Quality.GOOD:
                times.append(time.perf_counter())

        driver.watch(on_reading)
    window = Window(sims, plan.modbus_warmup_s, plan.modbus_window_s)
    async with asyncio.TaskGroup() as group:
        tasks = await _start_drivers(drivers, group)
        await window.run()
        bad = sum(
            d.last(tag).quality is not Quality.GOOD
            for d in drivers.values()
            for tag in d.config.tags
            if d.config.tags[tag].access is not Access.WRITE
        )
        for task in tasks:
            task.cancel()
    return ScanSample(
        window_s=window.end - window.start,
        requests_per_scan=sum(len(d.blocks) for d in drivers.values()),
        tags_per_scan=sum(len(d.config.tags) for d in drivers.values()),
        scans=[sum(1 for t in seen[n] if window.inside(t)) for n in drivers],
        client_cpu_s=window.cpu,
        server_cpu_s=window.server_cpu,
        other_cpu_s=window.other_cpu,
        bad=bad,
    )


async def scan_per_tag(devices: dict[str, DeviceConfig], sims: _util.SimProcess, plan: Plan) -> ScanSample:
    """(b) one request per tag: every tag in turn through the driver's public ``read(tag)``."""
    clock = SystemClock()
    drivers: dict[str, ModbusDriver] = {}
    for name, device in devices.items():
        driver = build_driver(name, with_poll(device, sims.endpoints[name], IDLE_POLL_S), clock)
        assert isinstance(driver, ModbusDriver)
        drivers[name] = driver
    window = Window(sims, plan.modbus_warmup_s, plan.modbus_window_s)
    reads = [0]
    bad = [0]

    async def reader(driver: ModbusDriver) -> None:
        tags = [t for t, c in driver.config.tags.items() if c.access is not Access.WRITE]
        deadline = time.perf_counter() + plan.modbus_warmup_s + plan.modbus_window_s + 5
        while time.perf_counter() < min(window.end, deadline):
            for tag in tags:
                reading = await driver.read(tag)
                if window.inside(time.perf_counter()):
                    reads[0] += 1
                    bad[0] += reading.quality is not Quality.GOOD

    async with asyncio.TaskGroup() as group:
        tasks = await _start_drivers(drivers, group)
        readers = [group.create_task(reader(d), name=f"bench:read:{n}") for n, d in drivers.items()]
        await window.run()
        await asyncio.wait(readers, timeout=5)
        for task in tasks:
            task.cancel()
    count = sum(len(d.config.tags) for d in drivers.values())
    return ScanSample(
        window_s=window.end - window.start,
        requests_per_scan=count,
        tags_per_scan=count,
        scans=[0] * len(drivers),
        reads=reads[0],
        client_cpu_s=window.cpu,
        server_cpu_s=window.server_cpu,
        other_cpu_s=window.other_cpu,
        bad=bad[0],
    )


_PYMODBUS_TYPES = {
    "int16": AsyncModbusTcpClient.DATATYPE.INT16,
    "uint16": AsyncModbusTcpClient.DATATYPE.UINT16,
    "int32": AsyncModbusTcpClient.DATATYPE.INT32,
    "uint32": AsyncModbusTcpClient.DATATYPE.UINT32,
    "float32": AsyncModbusTcpClient.DATATYPE.FLOAT32,
    "float64": AsyncModbusTcpClient.DATATYPE.FLOAT64,
    "string": AsyncModbusTcpClient.DATATYPE.STRING,
}
WordOrder = Literal["big", "little"]
Decoder = tuple[str, str, int, int, Any, WordOrder, int, float, float]
"""(tag, kind, first, end, pymodbus datatype, word order, bit, scale, offset) of one tag within a reply."""


def raw_decoders(device: DeviceConfig, table: str, start: int, count: int) -> list[Decoder]:
    """How (d) decodes each tag of one block with pymodbus' own ``convert_from_registers``."""
    out: list[Decoder] = []
    for name, tag in device.tags.items():
        if tag.table is None or tag.table.value != table or tag.address is None:
            continue
        if not start <= tag.address < start + count or tag.access is Access.WRITE:
            continue
        first = tag.address - start
        if table in ("coil", "discrete_input"):
            out.append((name, "bits", first, first + 1, None, "big", 0, 1.0, 0.0))
        elif tag.datatype.value == "bool":
            out.append((name, "bit", first, first + 1, None, "big", tag.bit or 0, 1.0, 0.0))
        else:
            if tag.byte_order.value != "big":
                raise ValueError(f"{name}: pymodbus' convert_from_registers has no byte order")
            kind = _PYMODBUS_TYPES[tag.datatype.value]
            end = first + (tag.length or 0 if tag.datatype.value == "string" else kind.value[1])
            order: WordOrder = "little" if tag.word_order.value == "little" else "big"
            out.append((name, "regs", first, end, kind, order, 0, tag.scale, tag.offset))
    return out


async def scan_raw(
    devices: dict[str, DeviceConfig],
    blocks: dict[str, list[tuple[str, int, int]]],
    sims: _util.SimProcess,
    plan: Plan,
    *,
    decode: bool = False,
) -> ScanSample:
    """(c) raw pymodbus, one client per unit (as the driver), reading the driver's blocks back to back;
    (d) with ``decode``, each tag's value also decoded by pymodbus' ``convert_from_registers``."""
    window = Window(sims, plan.modbus_warmup_s, plan.modbus_window_s)
    scans: dict[str, int] = dict.fromkeys(devices, 0)
    bad = [0]
    convert = AsyncModbusTcpClient.convert_from_registers

    async def unit(name: str, device: DeviceConfig) -> None:
        host, port = host_port(sims.endpoints[name])
        client = AsyncModbusTcpClient(host, port=port, timeout=2.0, retries=0, reconnect_delay=0)
        values: dict[str, Any] = {}
        try:
            if not await client.connect():
                raise RuntimeError(f"raw client cannot connect to {sims.endpoints[name]}")
            readers = {
                "coil": client.read_coils,
                "discrete_input": client.read_discrete_inputs,
                "holding_register": client.read_holding_registers,
                "input_register": client.read_input_registers,
            }
            plan_ = [
                (readers[table], start, count, raw_decoders(device, table, start, count) if decode else [])
                for table, start, count in blocks[name]
            ]
            unit_id = device.unit_id
            deadline = time.perf_counter() + plan.modbus_warmup_s + plan.modbus_window_s + 5
            while time.perf_counter() < min(window.end, deadline):
                for read, start, count, decoders in plan_:
                    reply = await read(start, count=count, device_id=unit_id)
                    bad[0] += reply.isError()
                    for tag, kind, first, end, dtype, word_order, bit, scale, offset in decoders:
                        if kind == "bits":
                            values[tag] = reply.bits[first]
                        elif kind == "bit":
                            values[tag] = bool(reply.registers[first] >> bit & 1)
                        else:
                            value = convert(reply.registers[first:end], dtype, word_order)
                            if scale != 1.0 or offset != 0.0:
                                value = value * scale + offset  # type: ignore[operator]
                            values[tag] = value
                if window.inside(time.perf_counter()):
                    scans[name] += 1
        finally:
            client.close()

    async with asyncio.TaskGroup() as group:
        for name, device in devices.items():
            group.create_task(unit(name, device), name=f"bench:raw:{name}")
        await window.run()
    return ScanSample(
        window_s=window.end - window.start,
        requests_per_scan=sum(len(b) for b in blocks.values()),
        tags_per_scan=sum(len(d.tags) for d in devices.values()),
        scans=list(scans.values()),
        client_cpu_s=window.cpu,
        server_cpu_s=window.server_cpu,
        other_cpu_s=window.other_cpu,
        bad=bad[0],
    )


async def _replies(
    drivers: dict[str, ModbusDriver], sims: _util.SimProcess
) -> dict[str, list[list[int] | list[bool]]]:
    """One real reply to each block of each unit, for timing the codec on real data."""
    out: dict[str, list[list[int] | list[bool]]] = {}
    for name, driver in drivers.items():
        host, port = host_port(sims.endpoints[name])
        client = AsyncModbusTcpClient(host, port=port, timeout=2.0, retries=0, reconnect_delay=0)
        try:
            await client.connect()
            replies: list[list[int] | list[bool]] = []
            for block in driver.blocks:
                read = {
                    "coil": client.read_coils,
                    "discrete_input": client.read_discrete_inputs,
                    "holding_register": client.read_holding_registers,
                    "input_register": client.read_input_registers,
                }[block.table.value]
                reply = await read(block.start, count=block.count, device_id=driver.config.unit_id)
                replies.append(list(reply.bits) if block.bits else list(reply.registers))
            out[name] = replies
        finally:
            client.close()
    return out


def codec_cost(drivers: dict[str, ModbusDriver], sims: _util.SimProcess, budget_s: float) -> dict[str, Any]:
    """CPU of the public codec calls one driver scan makes per 1,000 tags: ReadBlock.slice and .decode."""
    replies = run_in(None, _replies(drivers, sims))
    pairs = [(b, r) for n, d in drivers.items() for b, r in zip(d.blocks, replies[n], strict=True)]

    def timed(action: Callable[[], None]) -> float:
        runs, started = 0, time.process_time()
        while runs < 2000 and (runs < 5 or time.process_time() - started < budget_s):
            action()
            runs += 1
        return 1000 * (time.process_time() - started) / runs

    def slice_all() -> None:
        for block, raw in pairs:
            block.slice(raw)

    def decode_all() -> None:
        for block, raw in pairs:
            block.decode(raw)

    return {
        "what": "in-process CPU per 1,000-tag scan of the cellctl.drivers.modbus_codec calls a poll makes",
        "slice_ms": round(timed(slice_all), 3),
        "decode_ms": round(timed(decode_all), 3),
    }


def modbus_section(plan: Plan) -> dict[str, Any]:
    """Part 1: the three ways of reading 1,000 tags, with each event loop."""
    cell_data, sims_data = _util.synthetic_modbus_cell()
    cell = CellConfig.model_validate(cell_data)
    devices = dict(cell.devices)
    blocks: dict[str, list[tuple[str, int, int]]] = {}
    drivers: dict[str, ModbusDriver] = {}
    for name, device in devices.items():
        driver = build_driver(name, device, SystemClock())
        assert isinstance(driver, ModbusDriver)
        drivers[name] = driver
        blocks[name] = [(b.table.value, b.start, b.count) for b in driver.blocks]
    result: dict[str, Any] = {
        "units": len(devices),
        "tags": sum(len(d.tags) for d in devices.values()),
        "endpoints": 2,
        "server": "device_sims ModbusEndpointServer (pymodbus 3.16 server) in a child process",
        "scan_path": (
            "(a) ModbusDriver.run() with poll_interval_s=1e-6 (back to back), scans counted by watch "
            "callbacks of a scan_count register the simulator bumps on every read; "
            "(b) ModbusDriver.read(tag) for each tag in turn; (c) raw AsyncModbusTcpClient reads of "
            "driver.blocks; (d) the same plus pymodbus' convert_from_registers for each tag. "
            "10 units at once, one connection each."
        ),
        "loops": {},
    }
    with _util.temp_folder() as folder:
        _util.write_config(folder, cell_data, sims_data)
        with _util.SimProcess(folder, "--scan-counter", _util.COUNTER_TAG) as sims:
            for loop_name, factory in loop_kinds():
                log(f"modbus: {loop_name}")
                driver_runs: list[ScanSample] = []
                raw_runs: list[ScanSample] = []
                decode_runs: list[ScanSample] = []
                # Interleaved rounds, so a neighbour's load or a drift hits every mode alike.
                for _ in range(plan.modbus_rounds):
                    driver_runs.append(run_in(factory, scan_through_driver(devices, sims, plan)))
                    raw_runs.append(run_in(factory, scan_raw(devices, blocks, sims, plan)))
                    decode_runs.append(run_in(factory, scan_raw(devices, blocks, sims, plan, decode=True)))
                per_tag = run_in(factory, scan_per_tag(devices, sims, plan))
                result["loops"][loop_name] = _modbus_figures(driver_runs, raw_runs, decode_runs, per_tag)
            result["codec"] = codec_cost(drivers, sims, plan.modbus_window_s / 2)
    if uvloop is None:
        result["loops"]["uvloop"] = {"skipped": "uvloop is not importable"}
    return result


def _mode_figures(samples: list[ScanSample]) -> dict[str, Any]:
    def median(key: Callable[[ScanSample], float]) -> float:
        return statistics.median(key(s) for s in samples)

    return {
        "requests_per_scan": samples[0].requests_per_scan,
        "tags_per_s": round(median(lambda s: s.tags_per_s), 1),
        "scan_ms": round(median(lambda s: s.scan_ms), 3),
        "client_cpu_ms_per_scan": round(median(lambda s: s.client_cpu_ms_per_scan), 3),
        "server_busy": round(median(lambda s: s.server_busy), 3),
        "other_processes_busy": round(median(lambda s: s.other_busy), 3),
        "rounds": [s.summary() for s in samples],
    }


def _modbus_figures(
    driver_runs: list[ScanSample],
    raw_runs: list[ScanSample],
    decode_runs: list[ScanSample],
    per_tag: ScanSample,
) -> dict[str, Any]:
    a, c, d = _mode_figures(driver_runs), _mode_figures(raw_runs), _mode_figures(decode_runs)
    ratio = a["scan_ms"] / c["scan_ms"]
    return {
        "coalesced_driver": a,
        "per_tag_driver": _mode_figures([per_tag]),
        "raw_pymodbus_blocks": c,
        "raw_pymodbus_blocks_decoded": d,
        "ratio_scan_time": round(ratio, 3),
        "ratio_scan_time_rounds": [
            round(x.scan_ms / y.scan_ms, 3) for x, y in zip(driver_runs, raw_runs, strict=True)
        ],
        "ratio_client_cpu": round(a["client_cpu_ms_per_scan"] / c["client_cpu_ms_per_scan"], 3),
        "ratio_scan_time_vs_decoded": round(a["scan_ms"] / d["scan_ms"], 3),
        "ratio_client_cpu_vs_decoded": round(a["client_cpu_ms_per_scan"] / d["client_cpu_ms_per_scan"], 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
        "not_good": sum(s.bad for s in [*driver_runs, *raw_runs, *decode_runs, per_tag]),
    }


# ========================================================================================== 2. OPC UA


async def latency_driver(device: DeviceConfig, changes: int) -> list[float]:
    """Change-to-Reading latencies (s) of the stamp tag through ``OpcUaDriver.watch``."""
    driver = build_driver("robot1", device, SystemClock())
    assert isinstance(driver, OpcUaDriver)
    latencies: list[float] = []
    skip = [3]  # the seed read and a change or two in flight while subscribing are not value changes
    done = asyncio.Event()

    def on_reading(tag: str, reading: Reading) -> None:
        now = time.monotonic()
        if tag != STAMP_TAG or reading.quality is not Quality.GOOD or driver.health.state is not LinkState.UP:
            return
        if skip[0] > 0:
            skip[0] -= 1
            return
        assert isinstance(reading.value, float)
        latencies.append(now - reading.value)
        if len(latencies) >= changes:
            done.set()

    driver.watch(on_reading)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(driver.run(), name="driver:robot1")
        try:
            async with asyncio.timeout(10 + changes * STAMP_EVERY_S * 4):
                await done.wait()
        finally:
            task.cancel()
    return latencies


async def latency_raw(device: DeviceConfig, changes: int) -> list[float]:
    """The same through a raw asyncua subscription (iterator mode) on the same nodes and intervals."""
    client = Client(device.endpoint, timeout=device.timeouts.request_s)
    latencies: list[float] = []
    stamp_node = client.get_node(STAMP_NODE)
    nodes = [client.get_node(str(t.node)) for t in device.tags.values() if t.access is not Access.WRITE]
    interval = device.publishing_interval_ms
    async with client:
        subscription = await client.create_subscription(interval, handler=None)
        await subscription.subscribe_data_change(nodes, sampling_interval=Double(interval))
        skip = 3
        async with asyncio.timeout(10 + changes * STAMP_EVERY_S * 4):
            async for event in subscription:
                now = time.monotonic()
                if not isinstance(event, DataChangeEvent) or event.node.nodeid != stamp_node.nodeid:
                    continue
                if skip > 0:
                    skip -= 1
                    continue
                latencies.append(now - float(event.value))
                if len(latencies) >= changes:
                    break
        await subscription.delete()
    return latencies


def _latency_figures(samples: list[float]) -> dict[str, float | int]:
    return {
        "n": len(samples),
        "p50_ms": round(1000 * _util.percentile(samples, 50), 3),
        "p99_ms": round(1000 * _util.percentile(samples, 99), 3),
        "max_ms": round(1000 * max(samples), 3) if samples else math.nan,
    }


def opcua_section(plan: Plan) -> dict[str, Any]:
    """Part 2: change -> Reading latency, driver against raw asyncua, per publishing interval."""
    cell_data = _util.robot_stamp_cell(STAMP_TAG, STAMP_NODE)
    robot = CellConfig.model_validate(cell_data).devices["robot1"]
    result: dict[str, Any] = {
        "server": "device_sims OpcUaDeviceServer (asyncua 2.1 server) in a child process",
        "change_every_s": STAMP_EVERY_S,
        "method": (
            "the simulator sets a float64 tag to time.monotonic() at each change (every 5-15 ms); latency = "
            "receiver's time.monotonic() at OpcUaDriver's watch callback / at the raw asyncua iterator's "
            "DataChangeEvent minus that value. Driver and raw runs alternate, one at a time, default loop."
        ),
        "intervals": {},
    }
    with _util.temp_folder() as folder:
        _util.write_config(folder, cell_data)
        stamp = ["--stamp", f"robot1.{STAMP_TAG}", "--every", str(STAMP_EVERY_S)]
        with _util.SimProcess(folder, *stamp) as sims:
            for interval in plan.opcua_intervals_ms:
                log(f"opcua: publishing interval {interval:g} ms")
                device = robot.model_copy(
                    update={"endpoint": sims.endpoints["robot1"], "publishing_interval_ms": interval}
                )
                changes = plan.opcua_changes if interval == 0 else max(50, plan.opcua_changes // 3)
                driver: list[float] = []
                raw: list[float] = []
                rounds: list[dict[str, Any]] = []
                for _ in range(plan.opcua_rounds):
                    with Others(sims) as d_load:
                        d = run_in(None, latency_driver(device, changes))
                    with Others(sims) as r_load:
                        r = run_in(None, latency_raw(device, changes))
                    driver += d
                    raw += r
                    rounds.append(
                        {
                            "driver": {**_latency_figures(d), "other_processes_busy": d_load.busy},
                            "raw": {**_latency_figures(r), "other_processes_busy": r_load.busy},
                        }
                    )
                d_fig, r_fig = _latency_figures(driver), _latency_figures(raw)
                result["intervals"][f"{interval:g}"] = {
                    "publishing_interval_ms": interval,
                    "driver": d_fig,
                    "raw_asyncua": r_fig,
                    "ratio_p50": round(d_fig["p50_ms"] / r_fig["p50_ms"], 3),
                    "ratio_p99": round(d_fig["p99_ms"] / r_fig["p99_ms"], 3),
                    "other_processes_busy_max": max(
                        max(r["driver"]["other_processes_busy"], r["raw"]["other_processes_busy"])
                        for r in rounds
                    ),
                    "rounds": rounds,
                }
    return result


# ========================================================================================== 3. faults


class Monitor:
    """Health changes and GOOD readings of one driver, with their times."""

    def __init__(self, driver: ModbusDriver | OpcUaDriver) -> None:
        self.driver = driver
        self.changed = asyncio.Event()
        self.health: list[tuple[float, LinkState]] = []
        self.good: list[float] = []
        driver.on_health(self._on_health)
        driver.watch(self._on_reading)

    def _on_health(self, health: Health) -> None:
        self.health.append((time.monotonic(), health.state))
        self.changed.set()

    def _on_reading(self, _tag: str, reading: Reading) -> None:
        if reading.quality is Quality.GOOD:
            self.good.append(time.monotonic())
            self.changed.set()

    def state_since(self, state: LinkState, since: float) -> float | None:
        """When the driver first reported ``state`` at or after ``since``."""
        return next((t for t, s in self.health if t >= since and s is state), None)

    def good_since(self, since: float) -> float | None:
        """When the first GOOD reading came at or after ``since``."""
        return next((t for t in self.good if t >= since), None)


@dataclass
class Trial:
    """One fault: when it came, when it was noticed, when it was cleared, when values were back."""

    device: str
    kind: str
    detect_s: float | None = None
    up_s: float | None = None
    good_s: float | None = None
    notes: list[str] = field(default_factory=list)


async def fault_trial(sim: Any, monitor: Monitor, device: str, kind: str, hold_s: float) -> Trial:
    """Inject ``kind`` on ``device``'s server, hold it ``hold_s`` after DOWN, clear it, time everything."""
    trial = Trial(device, kind)
    driver = monitor.driver
    ready = await wait_until(
        lambda: driver.health.state is LinkState.UP and driver.last(_probe_tag(driver)).usable,
        monitor.changed,
        15,
    )
    if not ready:
        trial.notes.append("not UP with a GOOD value before the fault")
        return trial
    faults = sim.faults
    fault_at = time.monotonic()
    handle = None
    if kind == "drop":
        faults.drop_connections(device)
    elif kind == "stop":
        handle = await faults.refuse_connections(device)
    else:
        handle = faults.blackhole(device)
    if await wait_until(
        lambda: monitor.state_since(LinkState.DOWN, fault_at) is not None, monitor.changed, 10
    ):
        down_at = monitor.state_since(LinkState.DOWN, fault_at)
        assert down_at is not None
        trial.detect_s = down_at - fault_at
    else:
        trial.notes.append("no DOWN within 10 s")
    if handle is not None:
        await asyncio.sleep(hold_s)
        cleared_at = time.monotonic()
        await handle.clear()
    else:
        cleared_at = fault_at  # dropped connections: the server keeps listening, the fault is over at once
    back = await wait_until(
        lambda: (
            monitor.state_since(LinkState.UP, cleared_at) is not None
            and monitor.good_since(cleared_at) is not None
        ),
        monitor.changed,
        15,
    )
    if not back:
        trial.notes.append("not UP with a fresh GOOD value within 15 s of the clear")
    up_at, good_at = monitor.state_since(LinkState.UP, cleared_at), monitor.good_since(cleared_at)
    trial.up_s = None if up_at is None else up_at - cleared_at
    trial.good_s = None if good_at is None else good_at - cleared_at
    return trial


def _probe_tag(driver: ModbusDriver | OpcUaDriver) -> str:
    return next(t for t, c in driver.config.tags.items() if c.access is not Access.WRITE)


async def _faults(plan: Plan) -> list[Trial]:
    from device_sims.harness import SimCell

    async with SimCell.from_config_dir(_util.REPO / "config", ephemeral_ports=True) as sim:
        cell = sim.cell_config()
        clock = SystemClock()
        targets = {"gauge": "gauge", "robot1": "robot1"}
        drivers = {name: build_driver(name, cell.devices[name], clock) for name in targets}
        monitors = {name: Monitor(d) for name, d in drivers.items()}  # type: ignore[arg-type]
        trials: list[Trial] = []

        async def series(name: str) -> None:
            for kind in plan.fault_kinds:
                for _ in range(plan.fault_repeats):
                    trials.append(await fault_trial(sim, monitors[name], name, kind, plan.fault_hold_s))

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(d.run(), name=f"driver:{n}") for n, d in drivers.items()]
            # The two devices sit on different servers: their trials run side by side.
            await asyncio.gather(*(series(name) for name in targets))
            for task in tasks:
                task.cancel()
        return trials


def _both(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(a, b)


def faults_section(plan: Plan) -> dict[str, Any]:
    """Part 3: detection and recovery for each device and fault kind, min/median/max over the repeats."""
    log("faults: " + ", ".join(plan.fault_kinds))
    trials: list[Trial] = run_in(None, _faults(plan))
    out: dict[str, Any] = {
        "cell": "config/cell.yaml on device_sims in this process; drivers with default timeouts and backoff",
        "hold_after_down_s": plan.fault_hold_s,
        "kinds": {
            "drop": "every client connection aborted, the server keeps listening (cleared at once)",
            "stop": "server stopped (sessions lost, connects refused), restarted after the hold",
            "blackhole": "requests accepted and never answered, released after the hold",
        },
        "results": {},
    }
    for device in ("gauge", "robot1"):
        for kind in plan.fault_kinds:
            mine = [t for t in trials if t.device == device and t.kind == kind]

            def figures(values: Sequence[float | None]) -> dict[str, float | int]:
                got = [v for v in values if v is not None]
                return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in _util.spread(got).items()}

            out["results"][f"{device}/{kind}"] = {
                "detect_s": figures([t.detect_s for t in mine]),
                "up_s": figures([t.up_s for t in mine]),
                "good_s": figures([t.good_s for t in mine]),
                "fresh_s": figures([_both(t.up_s, t.good_s) for t in mine]),
                "notes": sorted({n for t in mine for n in t.notes}),
            }
    return out


# =========================================================================================== output


def render(doc: dict[str, Any]) -> str:
    """The readable table."""
    lines: list[str] = []
    env = doc["environment"]
    lines.append(
        f"cellctl device bench ({doc['mode']}) - Python {env['python']}, "
        f"asyncua {env['packages']['asyncua']}, pymodbus {env['packages']['pymodbus']}, "
        f"uvloop {env['packages']['uvloop']}, {env['cpus']} CPUs, commit {env['commit']}, "
        f"load average at start {env['load_average_at_start'][0]:.2f}"
    )
    mb = doc["modbus"]
    lines += ["", f"1. Modbus: {mb['tags']} tags over {mb['units']} units, {mb['endpoints']} endpoints"]
    lines.append(f"   {mb['scan_path']}")
    header = (
        f"   {'loop':8} {'mode':34} {'req/scan':>8} {'tags/s':>9} {'scan ms':>8} {'cpu ms/scan':>11} "
        f"{'sim busy':>8} {'others':>6}"
    )
    lines.append(header)
    labels = {
        "coalesced_driver": "(a) driver, coalesced",
        "per_tag_driver": "(b) driver, 1 request per tag",
        "raw_pymodbus_blocks": "(c) raw pymodbus, same blocks",
        "raw_pymodbus_blocks_decoded": "(d) = (c) + pymodbus decode/tag",
    }
    for loop_name, fig in mb["loops"].items():
        if "skipped" in fig:
            lines.append(f"   {loop_name:8} skipped: {fig['skipped']}")
            continue
        for key, label in labels.items():
            f = fig[key]
            lines.append(
                f"   {loop_name:8} {label:34} {f['requests_per_scan']:>8} {f['tags_per_s']:>9.0f} "
                f"{f['scan_ms']:>8.2f} {f['client_cpu_ms_per_scan']:>11.2f} {f['server_busy']:>8.0%} "
                f"{f['other_processes_busy']:>6.0%}"
            )
        verdict = "met" if fig["target_met"] else "MISSED"
        lines.append(
            f"   {loop_name:8} (a)/(c) scan time {fig['ratio_scan_time']:.3f} "
            f"(rounds {', '.join(f'{r:.3f}' for r in fig['ratio_scan_time_rounds'])}; target <= "
            f"{fig['target_ratio']}: {verdict}); client CPU per scan {fig['ratio_client_cpu']:.3f}"
        )
        lines.append(
            f"   {loop_name:8} (a)/(d) scan time {fig['ratio_scan_time_vs_decoded']:.3f}, client CPU per "
            f"scan {fig['ratio_client_cpu_vs_decoded']:.3f}; values or replies not GOOD: {fig['not_good']}"
        )
    codec = mb["codec"]
    lines.append(
        f"   codec CPU per 1,000-tag scan (in process): ReadBlock.slice {codec['slice_ms']:.2f} ms, "
        f"ReadBlock.decode {codec['decode_ms']:.2f} ms"
    )
    busiest = max(
        (f[k]["other_processes_busy"] for f in mb["loops"].values() if "skipped" not in f for k in labels),
        default=0.0,
    )
    if busiest > BUSY_MACHINE:
        lines.append(
            f"   NOTE: other processes used up to {busiest:.0%} of a core during a window: the scan-time "
            "ratios are unreliable in this run; the CPU-per-scan ratios hold better."
        )
    op = doc["opcua"]
    lines += ["", "2. OPC UA value change -> Reading latency (ms)", f"   {op['method']}"]
    lines.append(f"   {'interval':>8} {'path':22} {'n':>5} {'p50':>8} {'p99':>8} {'max':>8}")
    for fig in op["intervals"].values():
        for key, label in (("driver", "OpcUaDriver.watch"), ("raw_asyncua", "raw asyncua iterator")):
            f = fig[key]
            lines.append(
                f"   {fig['publishing_interval_ms']:>6g}ms {label:22} {f['n']:>5} {f['p50_ms']:>8.2f} "
                f"{f['p99_ms']:>8.2f} {f['max_ms']:>8.2f}"
            )
        lines.append(
            f"   {'':8} ratio driver/raw: p50 {fig['ratio_p50']:.3f}, p99 {fig['ratio_p99']:.3f}; other "
            f"processes used up to {fig['other_processes_busy_max']:.0%} of a core meanwhile"
        )
    fa = doc["faults"]
    lines += ["", f"3. Link faults (s; min / median / max; hold {fa['hold_after_down_s']:g} s after DOWN)"]
    lines.append(f"   {fa['cell']}")
    lines.append(
        f"   {'device/fault':18} {'n':>2}  {'fault -> DOWN':>20}  {'clear -> UP':>20}  "
        f"{'clear -> fresh GOOD':>20}"
    )

    def cell(f: dict[str, Any]) -> str:
        if not f["n"]:
            return f"{'-':>20}"
        return f"{f['min']:>6.2f} {f['median']:>6.2f} {f['max']:>6.2f}"

    for key, fig in fa["results"].items():
        lines.append(
            f"   {key:18} {fig['detect_s']['n']:>2}  {cell(fig['detect_s'])}  {cell(fig['up_s'])}  "
            f"{cell(fig['fresh_s'])}" + (f"  ({'; '.join(fig['notes'])})" if fig["notes"] else "")
        )
    for kind, text in fa["kinds"].items():
        if any(k.endswith("/" + kind) for k in fa["results"]):
            lines.append(f"   {kind}: {text}")
    lines.append(f"\nTotal {doc['elapsed_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the three parts and print the table (or the JSON document)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer repeats (~20 s)")
    args = parser.parse_args(argv)
    _util.quiet_logs()
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    doc: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "environment": _util.environment([name for name, _ in loop_kinds()]),
        "plan": plan.__dict__,
    }
    for key, section in (("modbus", modbus_section), ("opcua", opcua_section), ("faults", faults_section)):
        section_started = time.monotonic()
        doc[key] = section(plan)
        doc[key]["elapsed_s"] = round(time.monotonic() - section_started, 1)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    if uvloop is None:
        log("uvloop is not importable: measured with the default asyncio loop only")
    print(json.dumps(doc, indent=2, default=str) if args.json else render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
