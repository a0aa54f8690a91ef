"""The checks of ``cellctl doctor``: configuration, certificates, store, disk, clock, broker and devices.

Each check says OK, WARN or FAIL, what is wrong and how to fix it. Nothing here writes: the store is opened
read-only, the broker gets one trial connection under its own client id, devices one TCP connection each.
Checks run concurrently, each bounded by the overall timeout; the caller (cli/doctor.py) prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

from cellctl.errors import ConfigError, StoreError
from cellctl.schema.cell import CellConfig, DeviceConfig
from cellctl.schema.load import LoadedConfig, format_issues, load_config
from cellctl.schema.load import warnings as config_warnings
from cellctl.store.db import SCHEMA_VERSION
from cellctl.store.readonly import read_only
from cellctl.telemetry.publisher import check_broker, default_client_id

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DiskUsage",
    "DoctorSeams",
    "Finding",
    "Status",
    "diagnose",
    "exit_code",
]

DEFAULT_TIMEOUT_S = 10.0
"""The whole doctor's deadline: a check still running then is a FAIL saying so."""
CERT_WARN_DAYS = 30
DISK_FAIL_BYTES = 100 * 1024 * 1024
DISK_WARN_BYTES = 1024 * 1024 * 1024
DISK_WARN_SHARE = 0.10
BACKLOG_WARN_SHARE = 0.5
"""An outbox holding more than this share of its bound is a broker link to look at before it fills."""
SANE_AFTER = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
"""A system clock before this is certainly wrong (a box without an RTC battery boots in 1970)."""


class Status(StrEnum):
    """How one check came out, best first."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the doctor's report: which check, its status, what it found and how to fix it."""

    check: str
    status: Status
    what: str
    fix: str = ""


class DiskUsage(NamedTuple):
    """Bytes of the file system holding a folder (the shape of ``shutil.disk_usage``)."""

    total: int
    used: int
    free: int


async def _timedatectl() -> bool | None:
    """True/False from ``timedatectl show -p NTPSynchronized``; None when it cannot tell."""
    if shutil.which("timedatectl") is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            "timedatectl",
            "show",
            "-p",
            "NTPSynchronized",
            "--value",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(3.0):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    answer = out.decode(errors="replace").strip()
    if proc.returncode != 0 or answer not in ("yes", "no"):
        return None
    return answer == "yes"


def _disk_usage(path: Path) -> DiskUsage:
    total, used, free = shutil.disk_usage(path)
    return DiskUsage(total, used, free)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class DoctorSeams:
    """What the doctor asks of the host, replaceable in tests (a full disk, an unsynchronised clock)."""

    disk_usage: Callable[[Path], DiskUsage] = _disk_usage
    now: Callable[[], datetime.datetime] = _now
    ntp_synchronised: Callable[[], Awaitable[bool | None]] = _timedatectl
    broker_client_suffix: str = "-doctor"


def exit_code(findings: list[Finding]) -> int:
    """1 when any check failed, else 0 (warnings included)."""
    return 1 if any(f.status is Status.FAIL for f in findings) else 0


async def diagnose(
    config: str | Path, *, timeout: float = DEFAULT_TIMEOUT_S, seams: DoctorSeams | None = None
) -> list[Finding]:
    """Every check's findings for the cell at ``config``, in a fixed order whatever finished first."""
    seams = seams or DoctorSeams()
    try:
        loaded = await asyncio.to_thread(load_config, config)
    except ConfigError as exc:
        return [
            Finding(
                "configuration",
                Status.FAIL,
                format_issues(exc),
                "fix the file at the line named (`cellctl check` prints the same); nothing else was checked",
            )
        ]
    cell = loaded.cell
    checks: list[tuple[str, Awaitable[list[Finding]]]] = [
        ("configuration", _configuration(loaded)),
        ("certificates", asyncio.to_thread(_certificates, loaded, seams.now())),
        ("store", asyncio.to_thread(_store, loaded)),
        ("disk", asyncio.to_thread(_disk, loaded, seams)),
        ("clock", _clock(seams)),
        ("broker", _broker(loaded, seams, timeout)),
        *((f"device {name}", _device(name, device)) for name, device in cell.devices.items()),
    ]
    results: list[list[Finding]] = [[] for _ in checks]
    async with asyncio.TaskGroup() as tg:
        for index, (name, check) in enumerate(checks):
            tg.create_task(_bounded(name, check, timeout, results, index), name=f"doctor:{name}")
    return [finding for found in results for finding in found]


async def _bounded(
    name: str, check: Awaitable[list[Finding]], timeout: float, results: list[list[Finding]], index: int
) -> None:
    try:
        async with asyncio.timeout(timeout):
            results[index] = await check
    except TimeoutError:
        results[index] = [
            Finding(name, Status.FAIL, f"did not finish within {timeout:g} s", "run again with --timeout")
        ]


# --- configuration ---------------------------------------------------------------------------------------


async def _configuration(loaded: LoadedConfig) -> list[Finding]:
    cell = loaded.cell
    found = [
        Finding(
            "configuration",
            Status.OK,
            f"{loaded.cell_file}: cell {cell.identity.cell} with {len(cell.devices)} devices and "
            f"{len(loaded.recipes)} recipes",
        )
    ]
    for warning in config_warnings(loaded):
        found.append(
            Finding(
                "configuration", Status.WARN, str(warning), "see docs/integrator.md for the secure setting"
            )
        )
    return found


# --- certificates ----------------------------------------------------------------------------------------


def _certificate_files(loaded: LoadedConfig) -> Iterator[tuple[str, Path]]:
    """(where in the config, file) of every certificate the cell names; trust folders file by file."""
    cell = loaded.cell
    for name, device in cell.devices.items():
        security = device.security
        if security is None:
            continue
        if security.certificate is not None:
            yield f"devices.{name}.security.certificate", loaded.resolve(security.certificate)
        if security.trust_dir is not None:
            folder = loaded.resolve(security.trust_dir)
            files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]
            for path in files:
                yield f"devices.{name}.security.trust_dir", path
    tls = cell.mqtt.tls
    if cell.mqtt.enabled and tls is not None:
        if tls.ca_file is not None:
            yield "mqtt.tls.ca_file", loaded.resolve(tls.ca_file)
        if tls.cert_file is not None:
            yield "mqtt.tls.cert_file", loaded.resolve(tls.cert_file)


def _key_files(loaded: LoadedConfig) -> Iterator[tuple[str, Path]]:
    cell = loaded.cell
    for name, device in cell.devices.items():
        if device.security is not None and device.security.private_key is not None:
            yield f"devices.{name}.security.private_key", loaded.resolve(device.security.private_key)
    tls = cell.mqtt.tls
    if cell.mqtt.enabled and tls is not None and tls.key_file is not None:
        yield "mqtt.tls.key_file", loaded.resolve(tls.key_file)


def _parse_certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _certificates(loaded: LoadedConfig, now: datetime.datetime) -> list[Finding]:
    found: list[Finding] = []
    for where, path in _certificate_files(loaded):
        check = f"certificate {where}"
        try:
            certs = _parse_certificates(path.read_bytes())
        except OSError as exc:
            found.append(
                Finding(check, Status.FAIL, f"{path}: cannot read: {exc.strerror or exc}", _READ_FIX)
            )
            continue
        except ValueError as exc:
            found.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"{path}: not a certificate (PEM or DER): {exc}",
                    "put the certificate file itself there, not a key or a request",
                )
            )
            continue
        found.extend(_expiry(check, path, cert, now) for cert in certs)
    for where, path in _key_files(loaded):
        if not os.access(path, os.R_OK):
            found.append(
                Finding(
                    f"key {where}", Status.FAIL, f"{path}: missing or not readable by this user", _READ_FIX
                )
            )
    if not found:
        found.append(Finding("certificates", Status.OK, "no certificates configured"))
    return found


_READ_FIX = (
    "check the path (relative paths are from cell.yaml) and run the doctor as the controller's user "
    "(sudo -u cellctl cellctl doctor ...); the file must be readable by that user"
)


def _expiry(check: str, path: Path, cert: x509.Certificate, now: datetime.datetime) -> Finding:
    subject = cert.subject.rfc4514_string() or "(no subject)"
    until = cert.not_valid_after_utc
    left = until - now
    what = f"{path}: {subject}"
    renew = f"renew the certificate and replace {path.name}; restart cellctl to load it"
    if cert.not_valid_before_utc > now:
        return Finding(
            check,
            Status.FAIL,
            f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "check the system clock (cellctl doctor's clock line), or use a certificate valid now",
        )
    if left <= datetime.timedelta(0):
        return Finding(check, Status.FAIL, f"{what} expired on {until:%Y-%m-%d %H:%M} UTC", renew)
    if left < datetime.timedelta(days=CERT_WARN_DAYS):
        return Finding(
            check, Status.WARN, f"{what} expires in {left.days} days ({until:%Y-%m-%d} UTC)", renew
        )
    return Finding(check, Status.OK, f"{what} valid until {until:%Y-%m-%d} UTC")


# --- store and disk --------------------------------------------------------------------------------------


def _store(loaded: LoadedConfig) -> list[Finding]:
    cell = loaded.cell
    path = loaded.resolve(cell.store.path)
    if not path.exists():
        folder = _existing_ancestor(path.parent)
        if os.access(folder, os.W_OK | os.X_OK):
            return [Finding("store", Status.OK, f"{path}: none yet; cellctl run creates it")]
        if folder != path.parent:
            # Under systemd the folder is the unit's StateDirectory, made (for the service's user) at start.
            return [
                Finding(
                    "store",
                    Status.WARN,
                    f"{path}: none yet, and neither is {path.parent}; this user could not create it",
                    "fine under the unit (StateDirectory=cellctl makes /var/lib/cellctl at start); "
                    "otherwise create the folder for the controller's user",
                )
            ]
        return [
            Finding(
                "store",
                Status.FAIL,
                f"{path}: none yet, and {folder} is not writable by this user",
                "give the controller's user write access to that folder (or point store.path elsewhere)",
            )
        ]
    try:
        version, check, backlog = read_only(path, "the store", _store_facts)
    except StoreError as exc:
        return [
            Finding(
                "store",
                Status.FAIL,
                str(exc),
                "run the doctor as the controller's user; if the file is damaged, restore the last backup",
            )
        ]
    found: list[Finding] = []
    if version > SCHEMA_VERSION:
        found.append(
            Finding(
                "store",
                Status.FAIL,
                f"{path}: written by a newer cellctl (schema version {version}; this one knows up to "
                f"{SCHEMA_VERSION}); cellctl run refuses it",
                "install the cellctl version that wrote it, or restore a backup made by this version",
            )
        )
    elif version < SCHEMA_VERSION:
        found.append(
            Finding(
                "store",
                Status.OK,
                f"{path}: schema version {version}; migrated to {SCHEMA_VERSION} at the next start",
            )
        )
    else:
        found.append(Finding("store", Status.OK, f"{path}: schema version {version}"))
    if check != "ok":
        found.append(
            Finding(
                "store",
                Status.FAIL,
                f"{path}: integrity check failed: {check}",
                "stop cellctl and restore the last backup (docs/install.md)",
            )
        )
    limit = cell.store.outbox.max_rows
    if backlog > BACKLOG_WARN_SHARE * limit:
        found.append(
            Finding(
                "store",
                Status.WARN,
                f"outbox holds {backlog} messages not yet delivered (bound {limit})",
                "check the broker line below: telemetry is not getting out",
            )
        )
    else:
        found.append(Finding("store", Status.OK, f"outbox holds {backlog} messages not yet delivered"))
    return found


def _store_facts(conn: sqlite3.Connection) -> tuple[int, str, int]:
    """(schema version, quick_check's verdict, outbox rows) of an open store."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    version = 0
    if "schema_version" in tables:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = int(row[0]) if row[0] is not None else 0
    check = "; ".join(str(row[0]) for row in conn.execute("PRAGMA quick_check(5)"))
    backlog = 0
    if "outbox" in tables:
        backlog = int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    return version, check, backlog


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk(loaded: LoadedConfig, seams: DoctorSeams) -> list[Finding]:
    folder = _existing_ancestor(loaded.resolve(loaded.cell.store.path).parent)
    try:
        usage = seams.disk_usage(folder)
    except OSError as exc:
        return [Finding("disk", Status.FAIL, f"{folder}: cannot tell the free space: {exc}")]
    share = usage.free / usage.total if usage.total else 0.0
    what = f"{folder}: {_size(usage.free)} free of {_size(usage.total)} ({share:.0%})"
    fix = "free space on that file system (old logs, backups) or give the store a bigger one"
    if usage.free < DISK_FAIL_BYTES:
        return [Finding("disk", Status.FAIL, f"{what}; the store cannot grow", fix)]
    if usage.free < DISK_WARN_BYTES or share < DISK_WARN_SHARE:
        return [Finding("disk", Status.WARN, f"{what}; running low", fix)]
    return [Finding("disk", Status.OK, what)]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# --- clock -----------------------------------------------------------------------------------------------


async def _clock(seams: DoctorSeams) -> list[Finding]:
    now = seams.now()
    if now < SANE_AFTER:
        return [
            Finding(
                "clock",
                Status.FAIL,
                f"the system time is {now:%Y-%m-%d %H:%M} UTC, which cannot be right",
                "set the time and enable NTP (timedatectl set-ntp true); journal times depend on it",
            )
        ]
    synchronised = await seams.ntp_synchronised()
    if synchronised is None:
        return [
            Finding(
                "clock",
                Status.WARN,
                f"{now:%Y-%m-%d %H:%M} UTC; cannot tell whether it is synchronised (no timedatectl answer)",
                "make sure an NTP client (systemd-timesyncd, chrony) keeps the clock right",
            )
        ]
    if not synchronised:
        return [
            Finding(
                "clock",
                Status.WARN,
                f"{now:%Y-%m-%d %H:%M} UTC; not synchronised by NTP",
                "timedatectl set-ntp true, and let the box reach an NTP server",
            )
        ]
    return [Finding("clock", Status.OK, f"{now:%Y-%m-%d %H:%M} UTC, synchronised by NTP")]


# --- broker and devices ----------------------------------------------------------------------------------


async def _broker(loaded: LoadedConfig, seams: DoctorSeams, timeout: float) -> list[Finding]:
    cell: CellConfig = loaded.cell
    mqtt = cell.mqtt
    if not mqtt.enabled:
        return [Finding("broker", Status.OK, "telemetry is disabled (mqtt.enabled: false)")]
    where = f"{mqtt.host}:{mqtt.port}"
    client_id = (mqtt.client_id or default_client_id(cell.identity)) + seams.broker_client_suffix
    try:
        result = await check_broker(mqtt, loaded.resolve, client_id, timeout)
    except ConfigError as exc:
        return [
            Finding("broker", Status.FAIL, format_issues(exc), "fix the file named; cellctl run would refuse")
        ]
    if result.connected:
        how = " over TLS" if mqtt.tls is not None else ""
        login = f" as {mqtt.username}" if mqtt.username else ""
        return [Finding("broker", Status.OK, f"{where}: connected{how}{login}")]
    if result.refused:
        return [
            Finding(
                "broker",
                Status.FAIL,
                f"{where}: {result.reason}",
                "check mqtt.username and the password (file), or the TLS files, against the broker's",
            )
        ]
    return [
        Finding(
            "broker",
            Status.FAIL,
            f"{where}: cannot connect: {result.reason}",
            "check that the broker runs and mqtt.host/port; a firewall between them",
        )
    ]


async def _device(name: str, device: DeviceConfig) -> list[Finding]:
    host, port = device.host_port
    check = f"device {name}"
    problem = await tcp_problem(host, port, device.timeouts.connect_s)
    if problem:
        return [
            Finding(
                check,
                Status.FAIL,
                f"{device.endpoint}: cannot reach {host}:{port}: {problem}",
                f"check the device is powered and networked and its endpoint in cell.yaml; "
                f"`cellctl probe {name}` tells more",
            )
        ]
    return [Finding(check, Status.OK, f"{device.endpoint}: reachable ({device.driver})")]


async def tcp_problem(host: str, port: int, timeout: float) -> str:
    """Why a TCP connection to host:port fails (empty when it opens), before any protocol is spoken."""
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"connection timed out after {timeout:g} s"
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ""
