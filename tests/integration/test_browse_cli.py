"""`cellctl browse` against the simulated robot: the node table an integrator writes a tag map from, and the
errors (exit 1 refused, 3 unreachable) for a closed port, an untrusted server certificate and a wrong user."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellctl.cli import main
from cellctl.schema.cell import CellConfig
from device_sims.harness import SimCell, free_port, load_cell_config
from tests.fixtures.opcua_pki import Pki, make_pki
from tests.integration.test_opcua_security import PASSWORD, USER, secured_robot

CONFIG = Path(__file__).resolve().parents[2] / "config"
SIM_NS = "urn:cellctl:sim:robot1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cell() -> CellConfig:
    return load_cell_config(CONFIG)


async def browse(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `cellctl browse ARGS` (in a thread: the command runs its own event loop); code, out, err (the
    simulators' log lines go to stdout too)."""
    code = await asyncio.to_thread(main, ["browse", *args])
    out, err = capsys.readouterr()
    return code, out, err


def secured_args(pki: Pki, trust_dir: Path, password: str = PASSWORD) -> list[str]:
    return [
        "--policy=Basic256Sha256",
        "--mode=SignAndEncrypt",
        f"--certificate={pki.client_certificate}",
        f"--private-key={pki.client_key}",
        f"--trust-dir={trust_dir}",
        f"--username={USER}",
        f"--password={password}",
    ]


def row(out: str, fragment: str) -> list[str]:
    """The columns of the first table line holding ``fragment``."""
    return next(line for line in out.splitlines() if fragment in line).split()


async def test_browse_lists_the_robots_nodes_with_their_references(
    sim_cell: SimCell, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await browse(capsys, sim_cell.endpoint("robot1"))
    assert (code, err) == (0, "")
    assert f"  2: {SIM_NS}" in out
    assert row(out, "s=Robot1.Program") == [
        "2:program",
        "Variable",
        "UInt16",
        "rw",
        "ns=2;s=Robot1.Program",
        f"nsu={SIM_NS};s=Robot1.Program",
    ]
    assert row(out, "s=Robot1.Busy")[2:4] == ["Boolean", "r"]
    assert row(out, "2:robot1")[1] == "Object"
    for tag in sim_cell.cell.devices["robot1"].tags.values():
        assert str(tag.node) in out  # every reference of the example cell, as browse prints it


async def test_browse_from_a_node_with_paths_prints_the_browse_paths(
    sim_cell: SimCell, capsys: pytest.CaptureFixture[str]
) -> None:
    start = f"/Objects/<{SIM_NS}>robot1"
    code, out, _ = await browse(capsys, sim_cell.endpoint("robot1"), "--node", start, "--depth=1", "--paths")
    assert code == 0
    assert row(out, "2:busy")[-1] == f"{start}/<{SIM_NS}>busy"
    assert out.endswith("7 nodes\n")


async def test_browse_from_a_node_that_does_not_resolve_is_refused(
    sim_cell: SimCell, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await browse(capsys, sim_cell.endpoint("robot1"), "--node", "nsu=urn:nowhere;i=1")
    assert code == 1
    assert "namespace 'urn:nowhere' is not in the server's NamespaceArray" in err


async def test_browse_of_a_closed_port_says_the_connection_was_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    code, out, err = await browse(capsys, endpoint)
    assert (code, out) == (3, "")
    assert (
        err == f"cellctl browse: cannot reach the server: connect to {endpoint} failed: connection refused\n"
    )


async def test_browse_refuses_an_untrusted_server_certificate_naming_it(
    cell: CellConfig, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        code, out, err = await browse(capsys, server.endpoint, *secured_args(pki, pki.other))
    assert (code, "BROWSE NAME" in out) == (1, False)
    subject = pki.server_subject
    # The in-process simulator's log lines (JSON, when an earlier test set logging up so) share stderr.
    said = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("{"))
    assert said.startswith(
        f"cellctl browse: refused: server certificate {subject!r} refused (BadCertificateUntrusted)"
    )
    assert "Traceback" not in err


async def test_browse_over_a_secured_session_with_a_trusted_server(
    cell: CellConfig, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        code, out, _ = await browse(capsys, server.endpoint, *secured_args(pki, pki.trusted))
    assert code == 0
    assert f"nsu={SIM_NS};s=Robot1.CycleCount" in out


async def test_browse_with_a_wrong_password_is_refused(
    cell: CellConfig, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        code, _, err = await browse(capsys, server.endpoint, *secured_args(pki, pki.trusted, password="nope"))
    assert code == 1
    assert "refused: the server refused user 'cellctl' (BadUserAccessDenied)" in err


def test_browse_refuses_inconsistent_security_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["browse", "opc.tcp://127.0.0.1:4840", "--policy=Basic256Sha256"]) == 2
    assert "--certificate: policy Basic256Sha256 needs 'certificate'" in capsys.readouterr().err
