"""`cellctl probe DEVICE`: one device connected with its real driver, every tag read, a table or JSON out,
and an exit code that says which side is wrong (endpoint, unit id, tags, config).

Runs in-process against device_sims: the cell file written for each test points at the running sims.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from cellctl.cli import build_parser
from cellctl.cli.probe import (
    EXIT_NO_ANSWER,
    EXIT_NOT_GOOD,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    run_probe_async,
)
from cellctl.schema.cell import CellConfig, Timeouts
from device_sims.harness import SimCell, load_cell_config
from tests.fixtures.opcua_pki import Pki, make_pki
from tests.integration.test_opcua_security import robot_config, secured_robot

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Driver and simulator log lines off, so stdout holds only what probe prints (as `--log-level`)."""
    previous = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**previous)


def write_cell(folder: Path, cell: CellConfig, **device_updates: dict[str, Any]) -> Path:
    """A cell folder (cell.yaml + the example recipes) for ``cell``, with devices changed as given."""
    devices = dict(cell.devices)
    for name, update in device_updates.items():
        devices[name] = devices[name].model_copy(update=update)
    quick = Timeouts(connect_s=1.0, request_s=0.5)
    devices = {name: dev.model_copy(update={"timeouts": quick}) for name, dev in devices.items()}
    data = cell.model_copy(update={"devices": devices}).model_dump(mode="json", exclude_defaults=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cell.yaml").write_text(json.dumps(data, indent=2))  # YAML reads JSON, in this order
    (folder / "recipes").symlink_to(CONFIG / "recipes")
    return folder


async def probe(folder: Path, device: str, *extra: str) -> int:
    """Run `cellctl probe DEVICE --config FOLDER ...` in this event loop; the exit code."""
    args = build_parser().parse_args(["probe", device, "--config", str(folder), *extra])
    return await run_probe_async(args)


def rows(out: str) -> dict[str, list[str]]:
    """The table's lines by tag name, split on runs of two or more spaces."""
    lines = out.splitlines()[2:]
    parsed = [[cell for cell in line.split("  ") if cell.strip()] for line in lines]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in parsed if cells}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_modbus_device_is_read_tag_by_tag_into_a_table(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config())

    code = await probe(folder, "fixture")

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.splitlines()[0].startswith(f"fixture (modbus) {sim_cell.endpoint('fixture')}: link up in ")
    assert out.splitlines()[1].split() == [
        "tag",
        "value",
        "quality",
        "units",
        "address",
        "latency",
        "ms",
        "note",
    ]
    table = rows(out)
    assert set(table) == set(sim_cell.cell.devices["fixture"].tags)
    _tag, value, quality, units, address, latency = table["width_sp"]
    assert (value, quality, units, address) == (
        str(sim_cell.value("fixture.width_sp")),
        "good",
        "mm",
        "holding_register:0",
    )
    assert float(latency) >= 0
    assert table["clamped"][1:3] == [str(sim_cell.value("fixture.clamped")), "good"]


async def test_robot1_over_opc_ua_is_read_into_a_table(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config())

    code = await probe(folder, "robot1")

    out = capsys.readouterr().out
    assert code == EXIT_OK
    table = rows(out)
    robot = sim_cell.cell.devices["robot1"]
    assert set(table) == set(robot.tags)
    for tag, config in robot.tags.items():
        assert table[tag][2] == "good", table[tag]
        assert config.node in table[tag]
    assert table["cycle_count"][1] == str(sim_cell.value("robot1.cycle_count"))


async def test_json_output_carries_every_tag_with_value_quality_address_and_latency(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config())

    code = await probe(folder, "stapler", "--json")

    report = json.loads(capsys.readouterr().out)
    assert code == report["exit_code"] == EXIT_OK
    assert (report["device"], report["driver"], report["link"]) == ("stapler", "modbus", "up")
    by_tag = {row["tag"]: row for row in report["tags"]}
    assert by_tag["force_sp"]["value"] == pytest.approx(sim_cell.value("stapler.force_sp"))
    assert by_tag["force_sp"]["quality"] == "good"
    assert by_tag["force_sp"]["units"] == "N"
    assert by_tag["staples"]["address"] == "input_register:0"
    assert all(row["latency_ms"] >= 0 for row in report["tags"])


async def test_a_tag_the_device_refuses_is_shown_bad_with_its_reason(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config())

    async with sim_cell.faults.modbus_exception("gauge", "depth_mm", 2):
        code = await probe(folder, "gauge")

    captured = capsys.readouterr()
    table = rows(captured.out)
    assert code == EXIT_NOT_GOOD
    assert table["depth_mm"][1] == "bad"  # no value
    assert "exception code 2 (illegal data address)" in table["depth_mm"][-1]
    assert table["width_mm"][2] == "good"
    assert "1 tag(s) did not read good: depth_mm" in captured.err


async def test_an_unknown_device_is_a_usage_error_naming_the_devices(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config())

    code = await probe(folder, "press9")

    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "unknown device 'press9' (devices: robot1, toolchanger, fixture, stapler, gauge, safety)" in err


async def test_an_invalid_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cell.yaml").write_text("identity: {}\n")

    code = await probe(tmp_path, "gauge")

    assert code == EXIT_USAGE
    assert "nothing was probed" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["gauge", "robot1"])
async def test_an_endpoint_nobody_listens_on_is_unreachable(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    port = closed_port()
    endpoint = sim_cell.endpoint(device).replace(f":{sim_cell.server_of(device).port}", f":{port}")
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config(), **{device: {"endpoint": endpoint}})

    code = await probe(folder, device)

    err = capsys.readouterr().err
    assert code == EXIT_UNREACHABLE
    assert f"cannot reach 127.0.0.1:{port}: Connection refused; check the endpoint's host and port" in err


async def test_a_wrong_unit_id_is_a_device_that_does_not_answer(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config(), fixture={"unit_id": 9})

    code = await probe(folder, "fixture", "--json")

    report = json.loads(capsys.readouterr().out)
    assert code == report["exit_code"] == EXIT_NO_ANSWER
    assert report["link"] == "down"
    assert "exception code 11 (gateway target failed to respond)" in report["error"]
    assert "unit 9 does not" in report["problem"] and "check 'unit_id'" in report["problem"]
    assert report["tags"] == []


async def test_a_device_that_never_answers_is_reported_with_the_drivers_error(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_cell(tmp_path / "cell", sim_cell.cell_config())

    async with sim_cell.faults.blackhole("gauge"):
        code = await probe(folder, "gauge")

    captured = capsys.readouterr()
    assert code == EXIT_NO_ANSWER
    assert "link down: gauge: no reply to read" in captured.out
    assert "unit 1 does not answer" in captured.err


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_a_server_certificate_we_do_not_trust_is_a_refused_session(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = load_cell_config(CONFIG)
    async with secured_robot(cell, pki) as (server, _world):
        robot = robot_config(cell, server, pki, trust_dir=str(pki.other))
        update = {"endpoint": robot.endpoint, "security": robot.security}
        folder = write_cell(tmp_path / "cell", cell, robot1=update)

        code = await probe(folder, "robot1")

    captured = capsys.readouterr()
    assert code == EXIT_REFUSED
    assert "link down: robot1: server certificate" in captured.out
    assert "BadCertificateUntrusted" in captured.out
    assert "the server refused the session" in captured.err
