"""``cellctl probe DEVICE``: connect one configured device, read every tag once and print what came back.

For an integrator bringing a device up: the table shows each tag's value, quality, units, address and read
latency, and a failure says which side is wrong. Exit codes:
0 every readable tag read GOOD; 1 the server refused the session (certificate, user, security);
2 bad arguments, an invalid configuration or an unknown device; 3 the endpoint cannot be reached (connection
refused or timed out: check host and port); 4 the endpoint accepts connections but the device does not
answer (a Modbus gateway error or no reply: check the unit id, or the OPC UA path);
5 connected, but at least one tag did not read GOOD.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from cellctl.core.clock import SystemClock
from cellctl.core.ports import Driver, Health, LinkState
from cellctl.core.tags import Quality, TagValue
from cellctl.drivers import build_driver
from cellctl.drivers.opcua_session import SessionRefused
from cellctl.errors import CommError, ConfigError, ModbusGatewayError
from cellctl.runtime.doctor import tcp_problem
from cellctl.runtime.logging import configure_logging
from cellctl.schema.cell import Access, DeviceConfig, TagConfig
from cellctl.schema.load import LoadedConfig, format_issues, load_config

__all__ = ["EXIT_CODES", "ProbeReport", "TagRow", "add_parser", "probe", "run_probe", "run_probe_async"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NO_ANSWER = 4
EXIT_NOT_GOOD = 5
EXIT_CODES = {
    EXIT_OK: "every tag read good",
    EXIT_REFUSED: "the server refused the session",
    EXIT_USAGE: "bad arguments, invalid configuration or unknown device",
    EXIT_UNREACHABLE: "the endpoint cannot be reached",
    EXIT_NO_ANSWER: "the device does not answer",
    EXIT_NOT_GOOD: "some tags did not read good",
}
DEFAULT_TIMEOUT_S = 10.0
"""How long to wait for the link by default (the device's own timeouts usually answer sooner)."""


@dataclass(frozen=True, slots=True)
class TagRow:
    """One line of the probe's table."""

    tag: str
    value: TagValue | None
    quality: str
    units: str
    address: str
    latency_ms: float | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What one probe found: the link, each tag, and the exit code that sums it up."""

    device: str
    driver: str
    endpoint: str
    link: str
    error: str
    problem: str
    exit_code: int
    link_ms: float | None
    tags: tuple[TagRow, ...]


def add_parser(sub: Any) -> None:
    """Register ``probe``."""
    codes = "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())
    parser = sub.add_parser(
        "probe",
        help="connect one configured device, read every tag, print value/quality/address/latency",
        description="Connect one device of the cell file with the driver cellctl runs, read each of its tags "
        f"once and print a table. Exit codes: {codes}.",
    )
    parser.add_argument("device", help="device name (a key of devices: in the cell file)")
    parser.add_argument("--config", required=True, help="folder holding cell.yaml, or a cell file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the link (default 10)"
    )
    parser.add_argument("--log-level", default="critical", help="driver log lines on stderr (default: none)")
    parser.set_defaults(handler=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    """Probe the device and print the report; the exit code says what went wrong, if anything."""
    configure_logging(args.log_level, "console")
    return asyncio.run(run_probe_async(args))


async def run_probe_async(args: argparse.Namespace) -> int:
    """``run_probe`` inside a running event loop (for tests and embedding)."""
    if not args.timeout > 0:
        sys.stderr.write("cellctl probe: --timeout must be > 0\n")
        return EXIT_USAGE
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{format_issues(exc)}; nothing was probed.\n")
        return EXIT_USAGE
    devices = loaded.cell.devices
    if args.device not in devices:
        known = ", ".join(devices) or "none"
        sys.stderr.write(f"cellctl probe: unknown device {args.device!r} (devices: {known})\n")
        return EXIT_USAGE
    report = await probe(loaded, args.device, timeout=args.timeout)
    if args.json:
        sys.stdout.write(json.dumps(asdict(report), indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
        if report.problem:
            sys.stderr.write(f"cellctl probe: {report.problem}\n")
    return report.exit_code


async def probe(loaded: LoadedConfig, name: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> ProbeReport:
    """Connect device ``name``, wait (at most ``timeout`` s) for the link, read every tag once."""
    device = loaded.cell.devices[name]
    host, port = device.host_port
    unreachable = await tcp_problem(host, port, device.timeouts.connect_s)
    if unreachable:
        problem = f"cannot reach {host}:{port}: {unreachable}; check the endpoint's host and port"
        return _failed(name, device, "down", unreachable, problem, EXIT_UNREACHABLE)
    driver = build_driver(name, device, SystemClock(), resolve_path=loaded.resolve)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(driver.run(), name=f"driver:{name}")
        try:
            started = time.perf_counter()
            health = await _wait_for_link(driver, timeout)
            link_ms = (time.perf_counter() - started) * 1000
            if health.state is not LinkState.UP:
                failure = getattr(driver, "last_failure", None)
                exit_code, problem = _diagnose(device, health, failure, timeout)
                return _failed(name, device, health.state.value, health.error, problem, exit_code)
            rows = [await _read_row(driver, tag, config) for tag, config in device.tags.items()]
        finally:
            task.cancel()
    bad = [row.tag for row in rows if row.quality not in (Quality.GOOD.value, "write-only")]
    problem = f"{len(bad)} tag(s) did not read good: {', '.join(bad)}" if bad else ""
    return ProbeReport(
        device=name,
        driver=device.driver,
        endpoint=device.endpoint,
        link=LinkState.UP.value,
        error="",
        problem=problem,
        exit_code=EXIT_NOT_GOOD if bad else EXIT_OK,
        link_ms=round(link_ms, 1),
        tags=tuple(rows),
    )


async def _wait_for_link(driver: Driver, timeout: float) -> Health:
    """The first UP, or the first DOWN once the driver has tried; the last health after ``timeout`` s."""
    tried = asyncio.Event()
    seen: list[Health] = []

    def on_health(health: Health) -> None:
        seen.append(health)
        if health.state is LinkState.UP or (
            health.state is LinkState.DOWN and any(h.state is LinkState.CONNECTING for h in seen)
        ):
            tried.set()

    unsubscribe = driver.on_health(on_health)
    try:
        async with asyncio.timeout(timeout):
            await tried.wait()
    except TimeoutError:
        pass
    finally:
        unsubscribe()
    return driver.health


def _diagnose(device: DeviceConfig, health: Health, failure: object, timeout: float) -> tuple[int, str]:
    """Exit code and advice for a link that did not come up although the endpoint accepts connections."""
    if isinstance(failure, SessionRefused):
        return EXIT_REFUSED, f"the server refused the session: {health.error}"
    if health.state is LinkState.CONNECTING:
        return EXIT_NO_ANSWER, f"no link within {timeout:g} s; the endpoint accepts connections"
    if isinstance(failure, ModbusGatewayError):
        return EXIT_NO_ANSWER, (
            f"the endpoint answers but unit {device.unit_id} does not ({health.error}); check 'unit_id'"
        )
    if device.driver == "modbus" and isinstance(failure, CommError):
        return EXIT_NO_ANSWER, (
            f"the endpoint accepts connections but unit {device.unit_id} does not answer ({health.error}); "
            "check 'unit_id'"
        )
    return EXIT_NO_ANSWER, f"the endpoint accepts connections but the device does not serve: {health.error}"


def _failed(
    name: str, device: DeviceConfig, link: str, error: str, problem: str, exit_code: int
) -> ProbeReport:
    return ProbeReport(
        device=name,
        driver=device.driver,
        endpoint=device.endpoint,
        link=link,
        error=error,
        problem=problem,
        exit_code=exit_code,
        link_ms=None,
        tags=(),
    )


async def _read_row(driver: Driver, tag: str, config: TagConfig) -> TagRow:
    address = _address(config)
    if config.access == Access.WRITE:
        return TagRow(tag, None, "write-only", config.units, address, None, "written, never read")
    started = time.perf_counter()
    reading = await driver.read(tag)
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return TagRow(
        tag, reading.value, reading.quality.value, config.units, address, latency_ms, reading.reason
    )


def _address(config: TagConfig) -> str:
    if config.node is not None:
        return config.node
    where = f"{config.table.value if config.table else '?'}:{config.address}"
    return f"{where}.{config.bit}" if config.bit is not None else where


def _cell(value: TagValue | None) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, str) else str(value)


def render(report: ProbeReport) -> str:
    """The report as text: a heading line, then one line per tag."""
    head = f"{report.device} ({report.driver}) {report.endpoint}: link {report.link}"
    if report.link_ms is not None:
        head += f" in {report.link_ms:g} ms"
    if report.error:
        head += f": {report.error}"
    if not report.tags:
        return head + "\n"
    header = ("tag", "value", "quality", "units", "address", "latency ms", "note")
    lines = [
        (
            row.tag,
            _cell(row.value),
            row.quality,
            row.units,
            row.address,
            "" if row.latency_ms is None else f"{row.latency_ms:.2f}",
            "" if row.quality == Quality.GOOD.value else row.reason,
        )
        for row in report.tags
    ]
    widths = [max(len(line[i]) for line in (header, *lines)) for i in range(len(header))]
    out = [head]
    for line in (header, *lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"
