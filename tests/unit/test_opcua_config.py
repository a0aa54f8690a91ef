"""OPC UA in the cell file: node references (parsed, refused with a reason), the security block (checked, its
files found), and the warnings `cellctl check` prints about security None."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from cellctl.cli import main
from cellctl.core.clock import Clock
from cellctl.core.ports import Driver
from cellctl.drivers import SoftDriver
from cellctl.errors import ConfigError
from cellctl.runtime.app import CellApp, Controller
from cellctl.schema.load import LoadedConfig, load_config, warnings
from cellctl.schema.noderef import BrowseName, BrowsePathRef, NodeIdRef, NodeRefError, parse_node_ref

CONFIG = Path(__file__).resolve().parents[2] / "config"
SECURITY_LINE = "    security: {policy: None}\n"

# ------------------------------------------------------------------------------------ node references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ns=2;s=Robot1.Busy", NodeIdRef(2, "s=Robot1.Busy")),
        ("i=2253", NodeIdRef(0, "i=2253")),
        ("ns=3;i=1001", NodeIdRef(3, "i=1001")),
        ("nsu=urn:acme:robot;s=Robot1.Busy", NodeIdRef("urn:acme:robot", "s=Robot1.Busy")),
        ("nsu=http://acme.com/UA/;s=a;b=c", NodeIdRef("http://acme.com/UA/", "s=a;b=c")),
        (
            "ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
            NodeIdRef(2, "g=72962b91-fa75-4ae6-8d28-b404dc7daf63"),
        ),
        ("ns=2;b=AQID", NodeIdRef(2, "b=AQID")),
        (
            "/Objects/<urn:acme:robot>Robot1/2:Busy",
            BrowsePathRef((BrowseName("urn:acme:robot", "Robot1"), BrowseName(2, "Busy"))),
        ),
        (
            "/Objects/<http://acme.com/UA/Robotics/>Arm/Server",
            BrowsePathRef((BrowseName("http://acme.com/UA/Robotics/", "Arm"), BrowseName(0, "Server"))),
        ),
        ("/Objects/a&/b/&3:x", BrowsePathRef((BrowseName(0, "a/b"), BrowseName(0, "3:x")))),
    ],
)
def test_each_node_reference_form_parses_and_prints_back(text: str, expected: object) -> None:
    parsed = parse_node_ref(text)
    assert parsed == expected
    assert parse_node_ref(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Robot1.Busy", "is not a node reference"),
        ("ns=x;s=Busy", "write ns=<namespace index>"),
        ("nsu=;s=Busy", "write nsu=<namespace uri>"),
        ("ns=2;s=", "identifier after s= is empty"),
        ("i=-1", "whole number"),
        ("ns=2;g=nope", "GUID"),
        ("/Root/Objects/Busy", "starts at the Objects folder"),
        ("/Objects/", "names no node"),
        ("/Objects/a//b", "empty segment"),
        ("/Objects/<urn:acme", "no '>' closes"),
        ("/Objects/<>Busy", "needs '<namespace uri>'"),
        (" ns=2;s=Busy", "spaces"),
    ],
)
def test_a_malformed_node_reference_is_refused_saying_why(text: str, reason: str) -> None:
    with pytest.raises(NodeRefError, match=reason):
        parse_node_ref(text)


# ------------------------------------------------------------------------------------ cell files


def cell_folder(tmp_path: Path, security: str = SECURITY_LINE, **replace: str) -> Path:
    """The example cell in ``tmp_path`` with its robot's security line replaced (and other text)."""
    text = (CONFIG / "cell.yaml").read_text()
    assert SECURITY_LINE in text
    text = text.replace(SECURITY_LINE, security)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "cell.yaml").write_text(text)
    (tmp_path / "recipes").symlink_to(CONFIG / "recipes")
    return tmp_path


def line_of(folder: Path, fragment: str) -> int:
    lines = (folder / "cell.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if fragment in line)


def refused(folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(folder)
    return [str(issue) for issue in caught.value.issues]


def with_pki(folder: Path) -> None:
    (folder / "pki" / "trusted").mkdir(parents=True)
    (folder / "pki" / "cellctl.der").write_bytes(b"certificate")
    (folder / "pki" / "cellctl.pem").write_bytes(b"key")
    (folder / "pki" / "cellctl.pem").chmod(0o600)


SECURE = (
    "    security: {policy: Basic256Sha256, mode: Sign, certificate: pki/cellctl.der,\n"
    "               private_key: pki/cellctl.pem, trust_dir: pki/trusted}\n"
)


def test_a_bad_node_reference_is_refused_at_its_line(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path, **{'"nsu=urn:cellctl:sim:robot1;s=Robot1.Busy"': '"Robot1.Busy"'})
    (issue,) = refused(folder)
    assert issue.startswith(
        f"{folder / 'cell.yaml'}:{line_of(folder, 'Robot1.Busy')}: devices.robot1.tags.busy.node:"
    )
    assert "is not a node reference" in issue


@pytest.mark.parametrize(
    ("block", "path", "message"),
    [
        ("{policy: Basic256Sha256, mode: None}", "security.mode", "needs mode Sign or SignAndEncrypt"),
        ("{policy: None, mode: Sign}", "security.mode", "needs a policy other than None"),
        ("{policy: Basic256Sha256}", "security.certificate", "needs 'certificate'"),
        ("{policy: None, username: cellctl}", "security.password", "go together"),
        ("{policy: Basic128Rsa15}", "security.policy", "Basic256Sha256"),
    ],
)
def test_an_inconsistent_security_block_is_refused_at_its_key(
    tmp_path: Path, block: str, path: str, message: str
) -> None:
    folder = cell_folder(tmp_path, security=f"    security: {block}\n")
    (issue,) = refused(folder)
    assert f":{line_of(folder, 'security:')}: devices.robot1.{path}: " in issue
    assert message in issue


def test_security_on_a_modbus_device_is_refused(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path, **{"    unit_id: 2\n": "    unit_id: 2\n    security: {policy: None}\n"})
    (issue,) = refused(folder)
    assert "devices.fixture.security: 'security' is for OPC UA devices" in issue


def test_certificate_key_and_trust_folder_must_exist_beside_the_cell_file(tmp_path: Path) -> None:
    issues = refused(cell_folder(tmp_path, security=SECURE))
    assert [i.split(": ", 2)[1:] for i in issues] == [
        [
            "devices.robot1.security.certificate",
            f"certificate file {tmp_path / 'pki/cellctl.der'} does not exist",
        ],
        [
            "devices.robot1.security.private_key",
            f"private key file {tmp_path / 'pki/cellctl.pem'} does not exist",
        ],
        ["devices.robot1.security.trust_dir", f"trust folder {tmp_path / 'pki/trusted'} does not exist"],
    ]


def test_a_secured_device_loads_with_its_mode_and_paths_from_the_cell_folder(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path, security=SECURE)
    with_pki(folder)
    loaded = load_config(folder)
    security = loaded.cell.devices["robot1"].security
    assert security is not None and security.message_mode == "Sign"
    assert loaded.resolve(str(security.trust_dir)) == tmp_path / "pki" / "trusted"
    assert warnings(loaded) == []


def test_the_mode_defaults_to_sign_and_encrypt_with_a_policy(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path, security=SECURE.replace(" mode: Sign,", ""))
    with_pki(folder)
    security = load_config(folder).cell.devices["robot1"].security
    assert security is not None and security.message_mode == "SignAndEncrypt"


# ------------------------------------------------------------------------------------------ warnings


def only_warning(loaded: LoadedConfig) -> str:
    (warning,) = warnings(loaded)
    return str(warning)


def test_an_explicit_policy_none_is_warned_about_at_its_line(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path)
    warning = only_warning(load_config(folder))
    assert warning.startswith(
        f"{folder / 'cell.yaml'}:{line_of(folder, 'security:')}: devices.robot1.security.policy: "
    )
    assert "'robot1' connects with security policy None" in warning


def test_a_device_without_a_security_block_is_warned_about_as_policy_none(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path, security="")
    warning = only_warning(load_config(folder))
    assert f":{line_of(folder, 'robot1:')}: devices.robot1: " in warning
    assert "security policy None (it has no 'security' block)" in warning


def test_a_password_without_encryption_is_warned_about(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path, security="    security: {policy: None, username: op, password: pw}\n")
    found = [str(w) for w in warnings(load_config(folder))]
    assert len(found) == 2
    assert "devices.robot1.security.password: 'robot1' sends its password unencrypted" in found[1]


def test_a_private_key_others_can_read_is_warned_about(tmp_path: Path) -> None:
    folder = cell_folder(tmp_path, security=SECURE)
    with_pki(folder)
    (folder / "pki" / "cellctl.pem").chmod(0o644)
    warning = only_warning(load_config(folder))
    assert "devices.robot1.security.private_key: private key" in warning
    assert "(mode 644): chmod 600 it" in warning


def test_check_prints_the_policy_none_warning_and_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = cell_folder(tmp_path)
    assert main(["check", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: ")
    assert err.startswith(
        f"warning: {folder / 'cell.yaml'}:{line_of(folder, 'security:')}: devices.robot1.security"
    )
    assert err.count("\n") == 1


async def test_run_logs_the_policy_none_warning_at_start(tmp_path: Path) -> None:
    """Given a cell whose robot is on policy None, the controller logs the warning before it serves."""
    folder = cell_folder(
        tmp_path,
        **{
            "store: {path: ../var/sim/cellctl.db}": "store: {path: var/c.db}",
            "../var/sim/cellctl.sock": "var/c.sock",
        },
    )
    loaded = load_config(folder)

    def soft(name: str, config: LoadedConfig, clock: Clock) -> Driver:
        return SoftDriver(name, config.cell.devices[name].tags, clock=clock)

    app = CellApp(loaded, publish=False, driver_factory=soft)
    stop = asyncio.Event()

    async def stop_at_once(_controller: Controller) -> None:
        stop.set()

    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(10):
            await app.run(stop, on_ready=stop_at_once)
    events = [e["event"] for e in logs]
    warning = next(e for e in logs if e["event"] == "config warning")
    assert "devices.robot1.security.policy" in warning["warning"]
    assert events.index("config warning") < events.index("controller ready")
