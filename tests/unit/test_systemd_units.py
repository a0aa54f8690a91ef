"""The systemd units: the directives their sandbox rests on, systemd-analyze's exposure score, a clean verify.

The score and verify tests need ``systemd-analyze`` (systemd 252 or later) and skip without it; .ci/run runs
the same two checks. ``systemd-analyze verify`` checks that ExecStart's binary exists and resolves the unit's
default dependencies (sysinit.target ...), so it runs with ``--root`` on a scratch tree holding the units,
an executable stub at each ExecStart path and empty stand-ins of the targets, plus ``--man=no
--generators=no`` so nothing from the host (man pages, generators) decides the result. It exits 0 on an
unknown or mistyped directive (it only warns), so "clean" here means exit 0 and nothing printed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cellctl.runtime.app import FLUSH_DEADLINE_S, SHUTDOWN_MARGIN_S, STOP_DEADLINE_S
from cellctl.schema.load import load_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
CONTROLLER = UNITS / "cellctl.service"
SIMS = UNITS / "cellctl-sims.service"
IP_ALLOW_LIST = UNITS / "cellctl.service.d" / "ip-allow-list.conf.example"

MAX_EXPOSURE = 2.0
"""The highest `systemd-analyze security` exposure level either unit may have (issue 8)."""

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed here")

# Targets the units name or get as default dependencies; `verify --root` fails without them in the tree.
_TARGETS = ("sysinit.target", "basic.target", "shutdown.target", "network-online.target", "multi-user.target")
_EXPOSURE = re.compile(r"Overall exposure level for (?P<unit>\S+): (?P<score>\d+\.\d+)")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Section -> key -> every value assigned, in order (systemd keys may repeat; an empty one resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"directive outside a section: {line}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def service(path: Path) -> dict[str, list[str]]:
    """The [Service] section of the unit file at ``path``."""
    return parse_unit(path.read_text())["Service"]


def one(section: dict[str, list[str]], key: str) -> str:
    """The value of a key the unit sets exactly once."""
    values = section.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def exposure(*args: str) -> float:
    """The overall exposure level `systemd-analyze security --offline=true` gives, with ``args`` appended."""
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = _EXPOSURE.search(done.stdout)
    assert found is not None, f"no exposure line in:\n{done.stdout}\n{done.stderr}"
    return float(found["score"])


def fake_root(tmp_path: Path, units: list[Path], drop_ins: dict[str, Path] | None = None) -> Path:
    """A tree for `--root`: the units in etc/systemd/system, a stub at each ExecStart and ExecReload program,
    stand-in targets."""
    root = tmp_path / "root"
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    for target in _TARGETS:
        (system / target).write_text(f"[Unit]\nDescription=stand-in for {target}\n")
    for unit in units:
        shutil.copy(unit, system / unit.name)
        settings = service(unit)
        for command in (*settings["ExecStart"], *settings.get("ExecReload", [])):
            binary = root / command.split()[0].lstrip("/")
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_text("#!/bin/sh\nexit 0\n")
            binary.chmod(0o755)
    for name, source in (drop_ins or {}).items():
        unit_name, _, conf = name.partition("/")
        (system / f"{unit_name}.d").mkdir(exist_ok=True)
        shutil.copy(source, system / f"{unit_name}.d" / conf)
    return root


def verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on the named units of a fake root."""
    assert ANALYZE is not None
    system = root / "etc" / "systemd" / "system"
    paths = [str(system / name) for name in names]
    return subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "--man=no", "--generators=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_controller_is_a_notify_service_with_a_watchdog_a_stop_budget_and_a_reload() -> None:
    """Given cellctl.service, it is Type=notify with a watchdog; SIGTERM stops it within a timeout longer
    than PackML Stop + flush + the rest of the stop (the runtime's own figures); ExecReload sends SIGHUP."""
    svc = service(CONTROLLER)
    assert one(svc, "Type") == "notify"
    assert one(svc, "NotifyAccess") == "main"
    assert int(one(svc, "WatchdogSec")) > 0
    assert one(svc, "KillSignal") == "SIGTERM"
    assert int(one(svc, "TimeoutStopSec")) > STOP_DEADLINE_S + FLUSH_DEADLINE_S + SHUTDOWN_MARGIN_S
    assert one(svc, "ExecReload") == "/bin/kill -HUP $MAINPID"


@pytest.mark.parametrize("path", [CONTROLLER, SIMS], ids=lambda p: p.name)
def test_unit_has_the_sandbox_issue_8_names(path: Path) -> None:
    """Given either unit, it runs as its own user with no capabilities, a read-only OS, private /tmp and
    devices, local and IP sockets only and a system-call allow-list."""
    svc = service(path)
    assert one(svc, "User") == "cellctl"
    assert one(svc, "ConfigurationDirectory") == "cellctl"
    assert one(svc, "NoNewPrivileges") == "yes"
    assert one(svc, "ProtectSystem") == "strict"
    for key in ("PrivateTmp", "PrivateDevices", "ProtectHome", "PrivateMounts", "ProtectKernelTunables"):
        assert one(svc, key) == "yes", key
    for key in ("ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock"):
        assert one(svc, key) == "yes", key
    for key in ("ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID", "RemoveIPC", "LockPersonality"):
        assert one(svc, key) == "yes", key
    assert one(svc, "MemoryDenyWriteExecute") == "yes"
    assert one(svc, "ProtectProc") == "invisible"
    assert one(svc, "ProcSubset") == "pid"
    assert one(svc, "CapabilityBoundingSet") == ""
    assert one(svc, "AmbientCapabilities") == ""
    assert set(one(svc, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    filters = svc["SystemCallFilter"]
    # An allow-list first (a deny-list first would allow everything it does not name), then what it takes out.
    assert filters[0] == "@system-service"
    assert "~@privileged @resources" in filters
    assert one(svc, "SystemCallArchitectures") == "native"


def test_controller_writes_only_where_the_plant_cell_keeps_its_store_and_socket() -> None:
    """Given config/plant (the file copied to /etc/cellctl), its store is in StateDirectory and its control
    socket in RuntimeDirectory, the only places ProtectSystem=strict leaves writable."""
    svc = service(CONTROLLER)
    cell = load_config(ROOT / "config" / "plant").cell
    assert Path(cell.store.path).parent == Path("/var/lib") / one(svc, "StateDirectory")
    assert Path(cell.api.socket).parent == Path("/run") / one(svc, "RuntimeDirectory")
    assert "--config /etc/" + one(svc, "ConfigurationDirectory") in one(svc, "ExecStart")
    # Operators in api.group need not be in the controller's group: they must still reach the socket.
    assert int(one(svc, "RuntimeDirectoryMode"), 8) & 0o001


def test_controller_keeps_the_host_users_so_peer_credentials_name_the_operators() -> None:
    """Given cellctl.service, it has no user namespace of its own: there SO_PEERCRED would give every
    operator uid 65534 (a viewer) and chown to the operators' group would fail."""
    svc = service(CONTROLLER)
    assert svc.get("PrivateUsers", ["no"]) == ["no"]
    assert svc.get("DynamicUser", ["no"]) == ["no"]
    assert "@chown" in svc["SystemCallFilter"]


@needs_analyze
@pytest.mark.parametrize("path", [CONTROLLER, SIMS], ids=lambda p: p.name)
def test_unit_exposure_is_at_most_two(path: Path) -> None:
    """Given either unit, `systemd-analyze security --offline` scores it at most 2.0."""
    assert exposure(str(path)) <= MAX_EXPOSURE


@needs_analyze
def test_controller_with_the_ip_allow_list_drop_in_scores_lower(tmp_path: Path) -> None:
    """Given the example IP allow-list drop-in installed beside cellctl.service, the score drops, and the
    pair still verifies clean."""
    root = fake_root(tmp_path, [CONTROLLER], {"cellctl.service/ip-allow-list.conf": IP_ALLOW_LIST})
    with_list = exposure(f"--root={root}", "cellctl.service")
    assert with_list < exposure(str(CONTROLLER))
    done = verify(root, CONTROLLER.name)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_units_verify_clean(tmp_path: Path) -> None:
    """Given both units in a root where their binaries exist, `systemd-analyze verify` exits 0, silent."""
    done = verify(fake_root(tmp_path, [CONTROLLER, SIMS]), CONTROLLER.name, SIMS.name)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_verify_reports_a_mistyped_directive(tmp_path: Path) -> None:
    """Given a unit with a misspelt sandbox directive, verify prints it (so "nothing printed" has teeth)."""
    typo = tmp_path / "cellctl.service"
    typo.write_text(CONTROLLER.read_text().replace("ProtectClock=", "ProtectClok="))
    done = verify(fake_root(tmp_path, [typo]), typo.name)
    assert "Unknown key 'ProtectClok'" in done.stdout + done.stderr
