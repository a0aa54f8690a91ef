"""The config commands of the CLI: `cellctl check`, `cellctl schema`, and `cellctl run` refusing bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellctl.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "config"
BROKEN = Path(__file__).resolve().parent / "bad_configs"


def test_check_accepts_the_shipped_cells(capsys: pytest.CaptureFixture[str]) -> None:
    """Given the example cell folders, `cellctl check` exits 0 and names the devices and recipes."""
    assert main(["check", str(CONFIG)]) == 0
    assert main(["check", str(CONFIG / "plant")]) == 0
    out = capsys.readouterr().out
    assert "cell cell3 with 6 devices" in out
    assert "3 recipes (bergen, oslo, tromso)" in out


def test_check_reports_every_problem_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given a cell file with two mistakes, `cellctl check` exits 2 and prints both as file:line: path."""
    text = (CONFIG / "cell.yaml").read_text()
    text = text.replace("unit_id: 2", "unit_id: 300").replace(
        "keepalive_s: 10", "keepalive_s: 10, colour: red"
    )
    (tmp_path / "cell.yaml").write_text(text)
    (tmp_path / "recipes").symlink_to(CONFIG / "recipes")
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    lines = text.splitlines()
    unit_line = next(i for i, line in enumerate(lines, 1) if "unit_id: 300" in line)
    mqtt_line = next(i for i, line in enumerate(lines, 1) if "colour: red" in line)
    assert f"{tmp_path / 'cell.yaml'}:{unit_line}: devices.fixture.unit_id:" in err
    assert f"{tmp_path / 'cell.yaml'}:{mqtt_line}: mqtt.colour:" in err
    assert "2 problems found; nothing was started." in err


def test_run_refuses_to_start_on_an_invalid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given an invalid cell, `cellctl run` exits 2 before touching anything (no store file is created)."""
    (tmp_path / "cell.yaml").write_text(
        (CONFIG / "cell.yaml").read_text().replace("profile: gauge", "profile: x")
    )
    (tmp_path / "recipes").symlink_to(CONFIG / "recipes")
    assert main(["run", "--config", str(tmp_path), "--log-format", "json"]) == 2
    assert "refusing to start" in capsys.readouterr().err
    assert not (tmp_path.parent / "var" / "sim" / "cellctl.db").exists(), "store path of the cell file"


def test_schema_prints_the_config_and_telemetry_json_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    """`cellctl schema` prints the cell and recipe JSON Schemas for editors and the telemetry ones."""
    assert main(["schema"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    assert set(schemas) == {"cell", "recipe", "telemetry"}
    assert "devices" in schemas["cell"]["properties"]
    assert "cellctl.state/1" in schemas["telemetry"]["schemas"]
    assert main(["schema", "recipe"]) == 0
    assert "quality" in json.loads(capsys.readouterr().out)["properties"]
