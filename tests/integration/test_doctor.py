"""`cellctl doctor`: each check says OK, WARN or FAIL with what is wrong and how to fix it; exit 1 on a FAIL.

Runs in-process against device_sims and a private mosquitto on 127.0.0.1. The host's disk and clock are
seams (DoctorSeams); certificates are made in the test.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cellctl.cli import build_parser
from cellctl.cli.doctor import run_doctor_async
from cellctl.runtime.doctor import DiskUsage, DoctorSeams, Finding, Status, diagnose
from cellctl.schema.cell import Timeouts
from cellctl.store.db import SCHEMA_VERSION, Store
from device_sims.harness import SimCell
from tests.fixtures.broker import MakeBroker, Mosquitto, write_password_file
from tests.fixtures.cellfolder import quiet_logging

pytestmark = pytest.mark.broker

CONFIG = Path(__file__).resolve().parents[2] / "config"
GIB = 1024**3


async def synchronised() -> bool | None:
    return True


def plenty(_path: Path) -> DiskUsage:
    return DiskUsage(total=100 * GIB, used=10 * GIB, free=90 * GIB)


HEALTHY = DoctorSeams(disk_usage=plenty, ntp_synchronised=synchronised)


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with quiet_logging():
        yield


def write_cell(folder: Path, sim_cell: SimCell, broker: Mosquitto, **mqtt: Any) -> Path:
    """A cell folder for the running sims and ``broker``, its store in the folder; ``mqtt`` keys added."""
    cell = sim_cell.cell_config()
    quick = Timeouts(connect_s=1.0, request_s=0.5)
    devices = {name: dev.model_copy(update={"timeouts": quick}) for name, dev in cell.devices.items()}
    data = cell.model_copy(update={"devices": devices}).model_dump(mode="json", exclude_defaults=True)
    data["mqtt"] = {"host": broker.host, "port": broker.port, **mqtt}
    data["store"] = {"path": "var/cellctl.db"}
    data["api"] = {"socket": "cellctl.sock"}
    data["recipes_dir"] = str(CONFIG / "recipes")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cell.yaml").write_text(json.dumps(data, indent=2))  # YAML reads JSON
    return folder


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.check, []).append(f)
    return out


def self_signed(folder: Path, name: str, *, days_left: float) -> tuple[Path, Path]:
    """A certificate (PEM) valid until ``days_left`` days from now (negative: expired), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    folder.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_a_healthy_cell_passes_every_check_and_exits_0(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell, broker)
    args = build_parser().parse_args(["doctor", "--config", str(folder), "--json"])

    code = await run_doctor_async(args, HEALTHY)

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["ok"] is True
    checks = {f["check"] for f in report["findings"]}
    assert {"configuration", "certificates", "store", "disk", "clock", "broker"} <= checks
    assert {f"device {name}" for name in sim_cell.cell.devices} <= checks
    # The simulators' robot runs without OPC UA security: `cellctl check` warns, and so does the doctor.
    not_ok = [f for f in report["findings"] if f["status"] != "OK"]
    assert all(f["check"] == "configuration" and "security policy None" in f["what"] for f in not_ok)


async def test_a_stopped_device_fails_naming_it_and_its_endpoint(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell, broker)
    endpoint = sim_cell.endpoint("robot1")
    await sim_cell.server_of("robot1").stop()
    args = build_parser().parse_args(["doctor", "--config", str(folder)])

    code = await run_doctor_async(args, HEALTHY)

    out = capsys.readouterr().out
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1
    assert "device robot1" in failed[0] and endpoint in failed[0]
    assert "cellctl probe robot1" in out
    assert out.splitlines()[-1].endswith("1 failed, 1 warnings")


async def test_an_expired_certificate_fails_and_one_expiring_soon_warns(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path
) -> None:
    expired, _ = self_signed(tmp_path / "pki", "old-ca", days_left=-1)
    soon, soon_key = self_signed(tmp_path / "pki", "client", days_left=10)
    folder = write_cell(
        tmp_path / "cell",
        sim_cell,
        broker,
        tls={"ca_file": str(expired), "cert_file": str(soon), "key_file": str(soon_key)},
    )

    findings = by_check(await diagnose(folder, seams=HEALTHY))

    (ca,) = findings["certificate mqtt.tls.ca_file"]
    assert ca.status is Status.FAIL
    assert "expired on" in ca.what and str(expired) in ca.what and "renew" in ca.fix
    (client,) = findings["certificate mqtt.tls.cert_file"]
    assert client.status is Status.WARN
    assert "expires in 9 days" in client.what or "expires in 10 days" in client.what


async def test_a_wrong_broker_password_fails_with_the_brokers_reason(
    sim_cell: SimCell, make_broker: MakeBroker, tmp_path: Path
) -> None:
    broker = make_broker(allow_anonymous=False)
    passwd = write_password_file(broker.folder / "passwd", {"cell": "right"})
    broker.configure([f"password_file {passwd}"], allow_anonymous=False)
    broker.start()
    folder = write_cell(tmp_path / "cell", sim_cell, broker, username="cell", password="wrong")

    findings = await diagnose(folder, seams=HEALTHY)

    (found,) = by_check(findings)["broker"]
    assert found.status is Status.FAIL
    assert "refused the login" in found.what and "authori" in found.what.lower()
    assert "password" in found.fix


async def test_a_store_written_by_a_newer_cellctl_fails(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell, broker)
    (folder / "var").mkdir()
    with sqlite3.connect(folder / "var" / "cellctl.db") as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.close()

    findings = by_check(await diagnose(folder, seams=HEALTHY))

    versions = [f for f in findings["store"] if "schema version" in f.what]
    assert [f.status for f in versions] == [Status.FAIL]
    assert f"schema version {SCHEMA_VERSION + 1}" in versions[0].what
    assert "backup" in versions[0].fix


@pytest.mark.parametrize(
    ("free", "total", "status"),
    [
        (50 * 1024**2, 100 * GIB, Status.FAIL),
        (500 * 1024**2, 2 * GIB, Status.WARN),
        (5 * GIB, 100 * GIB, Status.WARN),
        (50 * GIB, 100 * GIB, Status.OK),
    ],
)
async def test_disk_space_of_the_store_folder_warns_low_and_fails_nearly_full(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path, free: int, total: int, status: Status
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell, broker)
    asked: list[Path] = []

    def usage(path: Path) -> DiskUsage:
        asked.append(path)
        return DiskUsage(total=total, used=total - free, free=free)

    findings = by_check(
        await diagnose(folder, seams=DoctorSeams(disk_usage=usage, ntp_synchronised=synchronised))
    )

    (disk,) = findings["disk"]
    assert disk.status is status
    # The store's folder does not exist yet: its nearest existing parent is measured.
    assert asked == [folder]


async def test_a_clock_that_cannot_be_checked_warns_and_one_in_the_past_fails(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell, broker)

    async def unknown() -> bool | None:
        return None

    def in_1970() -> datetime.datetime:
        return datetime.datetime(1970, 1, 1, 0, 1, tzinfo=datetime.UTC)

    unsure = by_check(await diagnose(folder, seams=DoctorSeams(disk_usage=plenty, ntp_synchronised=unknown)))
    past = by_check(await diagnose(folder, seams=DoctorSeams(disk_usage=plenty, now=in_1970)))

    assert [f.status for f in unsure["clock"]] == [Status.WARN]
    assert "cannot tell" in unsure["clock"][0].what
    assert [f.status for f in past["clock"]] == [Status.FAIL]


async def test_a_store_of_this_version_is_checked_read_only_with_its_backlog(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell, broker)
    store = await Store.open(folder / "var" / "cellctl.db")
    await store.close()
    before = (folder / "var" / "cellctl.db").stat().st_mtime_ns

    findings = by_check(await diagnose(folder, seams=HEALTHY))

    assert [f.status for f in findings["store"]] == [Status.OK, Status.OK]
    assert f"schema version {SCHEMA_VERSION}" in findings["store"][0].what
    assert "outbox holds 0 messages" in findings["store"][1].what
    assert (folder / "var" / "cellctl.db").stat().st_mtime_ns == before


async def test_a_check_that_hangs_fails_at_the_overall_timeout_and_the_rest_still_report(
    sim_cell: SimCell, broker: Mosquitto, tmp_path: Path
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell, broker)
    never = asyncio.Event()

    async def hangs() -> bool | None:
        await never.wait()
        return True

    findings = by_check(
        await diagnose(folder, timeout=2.0, seams=DoctorSeams(disk_usage=plenty, ntp_synchronised=hangs))
    )

    (clock,) = findings["clock"]
    assert clock.status is Status.FAIL and "did not finish within 2 s" in clock.what
    assert all(f.status is Status.OK for f in findings["broker"] + findings["device robot1"])
