"""``cellctl plan``: the changeover plan printed offline between variants and live against the simulators."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cellctl.cli import main
from cellctl.cli.plan import node_id
from device_sims.harness import SimCell, free_port

CONFIG = Path(__file__).resolve().parents[2] / "config"
FIXTURE_KINDS = ("fixture_unclamp", "fixture_move", "fixture_clamp")
EVERY_KIND = ("tool_change", *FIXTURE_KINDS, "robot_program", "setpoints")


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", "--config", str(CONFIG), "--configured", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _json_plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, _err = _plan(capsys, *args, "--json")
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    return data


def _write_cell(folder: Path, endpoints: dict[str, str]) -> Path:
    """The shipped cell with its devices at ``endpoints``, its recipes from config/ and its own store."""
    yaml = YAML()
    data: Any = yaml.load((CONFIG / "cell.yaml").read_text())
    for name, endpoint in endpoints.items():
        data["devices"][name]["endpoint"] = endpoint
    data["store"] = {"path": str(folder / "cellctl.db")}
    data["recipes_dir"] = str(CONFIG / "recipes")
    with (folder / "cell.yaml").open("w") as fh:
        yaml.dump(data, fh)
    return folder


def _longest_path_s(steps: list[dict[str, Any]]) -> float:
    """The longest chain of expected durations, computed independently of the plan's own method."""
    by_id = {s["id"]: s for s in steps}
    memo: dict[str, float] = {}

    def finish(step_id: str) -> float:
        if step_id not in memo:
            step = by_id[step_id]
            memo[step_id] = step["expected_s"] + max((finish(a) for a in step["after"]), default=0.0)
        return memo[step_id]

    return max((finish(i) for i in by_id), default=0.0)


def test_oslo_to_bergen_table_lists_every_step_with_critical_path_and_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the example cell, when planning oslo -> bergen offline
    code, out, _err = _plan(capsys, "--from", "oslo", "--to", "bergen")

    # then every differing setting has its step, and the figures follow the table
    assert code == 0
    for step in (
        "toolchanger:tool_change",
        "fixture:fixture_unclamp",
        "fixture:fixture_move",
        "fixture:fixture_clamp",
        "robot1:robot_program",
        "stapler:setpoints",
        "toolchanger:setpoints",
    ):
        assert step in out
    assert "FOAM-S -> FOAM-L" in out
    critical = [line for line in out.splitlines() if line.startswith("*")]
    path = ["toolchanger:setpoints", "toolchanger:tool_change", "robot1:robot_program"]
    assert {line.split()[1] for line in critical} == set(path)
    assert f"critical path (*): {' -> '.join(path)} (4.6 s)" in out
    assert "predicted internal downtime: 4 s" in out
    assert "sum of all step durations: 7.5 s" in out
    assert "runs external: toolchanger:setpoints, stapler:setpoints, robot1:robot_program" in out


def test_table_lists_steps_in_dependency_order(capsys: pytest.CaptureFixture[str]) -> None:
    # Given oslo -> bergen, when printed as a table
    _code, out, _err = _plan(capsys, "--from", "oslo", "--to", "bergen")
    rows = [line.lstrip("* ").split(" ", 1)[0] for line in out.splitlines() if line.strip()]

    # then the fixture unclamps before it moves and moves before it clamps
    assert rows.index("fixture:fixture_unclamp") < rows.index("fixture:fixture_move")
    assert rows.index("fixture:fixture_move") < rows.index("fixture:fixture_clamp")
    assert rows.index("toolchanger:tool_change") < rows.index("robot1:robot_program")


def test_bergen_to_tromso_has_no_fixture_steps(capsys: pytest.CaptureFixture[str]) -> None:
    # Given two variants with the same fixture positions, when planned
    data = _json_plan(capsys, "--from", "bergen", "--to", "tromso")

    # then the fixture is not touched, but the tool, program and setpoints change, and a person loads the roll
    kinds = {s["kind"] for s in data["steps"]}
    assert kinds.isdisjoint(FIXTURE_KINDS)
    assert kinds == {"tool_change", "robot_program", "setpoints", "operator"}


def test_operator_steps_say_who_does_what_in_every_output(capsys: pytest.CaptureFixture[str]) -> None:
    # Given bergen -> tromso, whose fabric roll a person loads and scans
    data = _json_plan(capsys, "--from", "bergen", "--to", "tromso")
    (step,) = [s for s in data["steps"] if s["kind"] == "operator"]
    assert data["operator_steps"] == ["operator:load_fabric"]
    assert step["instruction"] == "Load the wide fabric roll on the stapler's cover feeder"
    assert step["evidence"] == "scan the roll label"
    assert "FAB-TROMSO" not in str(data)  # the expected id is never shown: a person scans it

    # the table lists them under their own heading with what to scan
    _code, out, _err = _plan(capsys, "--from", "bergen", "--to", "tromso")
    heading = out.index("operator steps (a person does them")
    assert "operator:load_fabric at stapler: Load the wide fabric roll" in out[heading:]
    assert "evidence: scan the roll label" in out[heading:]

    # and the graphs draw them as hexagons
    _code, mermaid, _err = _plan(capsys, "--from", "bergen", "--to", "tromso", "--mermaid")
    assert '  s_operator_load_fabric{{"operator:load_fabric<br/>' in mermaid
    assert "class s_operator_load_fabric operator" in mermaid
    _code, dot, _err = _plan(capsys, "--from", "bergen", "--to", "tromso", "--dot")
    assert "shape=hexagon" in dot and "OPERATOR, evidence: scan the roll label" in dot


def test_same_variant_says_no_changeover(capsys: pytest.CaptureFixture[str]) -> None:
    # Given the cell set up for oslo, when planning to oslo
    code, out, _err = _plan(capsys, "--from", "oslo", "--to", "oslo")

    # then there is nothing to do, and the plan says so
    assert code == 0
    assert "setups already match: no changeover" in out
    assert "tool_change" not in out


def test_json_parses_and_its_critical_path_is_the_longest_path(capsys: pytest.CaptureFixture[str]) -> None:
    # Given oslo -> bergen, when printed as JSON
    data = _json_plan(capsys, "--from", "oslo", "--to", "bergen")

    # then the critical path is a chain of dependencies whose duration is the longest path's
    by_id = {s["id"]: s for s in data["steps"]}
    path = data["critical_path"]
    for before, after in itertools.pairwise(path):
        assert before in by_id[after]["after"]
    assert sum(by_id[i]["expected_s"] for i in path) == pytest.approx(_longest_path_s(data["steps"]))
    assert data["planned_s"] == pytest.approx(_longest_path_s(data["steps"]))
    assert data["critical_path_s"] == data["planned_s"]
    assert data["internal_downtime_s"] == pytest.approx(4.0)
    assert data["total_s"] == pytest.approx(7.5)
    assert data["external_steps"] == ["toolchanger:setpoints", "stapler:setpoints", "robot1:robot_program"]
    assert data["parameters"] == {"staple_pitch": 10.0}  # bergen's default


@pytest.mark.parametrize("fmt", ["--mermaid", "--dot"])
def test_graph_exports_hold_every_step_and_edge(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    # Given the plan oslo -> bergen
    steps = _json_plan(capsys, "--from", "oslo", "--to", "bergen")["steps"]

    # when exported as a graph
    code, out, _err = _plan(capsys, "--from", "oslo", "--to", "bergen", fmt)

    # then every step is a node and every dependency an edge
    assert code == 0
    for step in steps:
        assert step["id"] in out
        for dep in step["after"]:
            edge = (
                f"{node_id(dep)} --> {node_id(step['id'])}"
                if fmt == "--mermaid"
                else f'"{dep}" -> "{step["id"]}"'
            )
            assert edge in out
    assert out.startswith("flowchart" if fmt == "--mermaid" else "digraph")
    assert ("critical" if fmt == "--mermaid" else "color=red") in out


def test_unknown_variant_is_refused_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a variant the cell has no recipe for, when planning to it
    code, out, err = _plan(capsys, "--from", "oslo", "--to", "lisbon")

    # then the request is refused with the known variants, and nothing is planned
    assert code == 2
    assert out == ""
    assert "unknown variant 'lisbon'" in err
    for known in ("bergen", "oslo", "tromso"):
        assert known in err


def test_parameter_out_of_range_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a staple pitch beyond the recipe's range, when planning
    code, out, err = _plan(capsys, "--from", "oslo", "--to", "bergen", "--param", "staple_pitch=30")

    # then the request is refused naming the parameter and its range
    assert code == 2
    assert out == ""
    assert "staple_pitch=30: out of range [8, 14] mm of recipe 'bergen'" in err


def test_plan_error_from_the_planner_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Given templates the loader accepts but that contradict a fixture's unclamp -> move -> clamp sequence
    yaml = YAML()
    cell: Any = yaml.load((CONFIG / "cell.yaml").read_text())
    steps = cell["changeover"]["steps"]
    del steps["fixture_move"]["after"]
    steps["fixture_unclamp"]["after"] = ["fixture_move"]
    cell["recipes_dir"] = str(CONFIG / "recipes")
    cell["store"] = {"path": str(tmp_path / "cellctl.db")}
    with (tmp_path / "cell.yaml").open("w") as fh:
        yaml.dump(cell, fh)

    # when planning a changeover that moves the fixture
    code = main(["plan", "--config", str(tmp_path), "--from", "oslo", "--to", "bergen"])
    out, err = capsys.readouterr()

    # then the planner's refusal is printed with the cycle named, and nothing is planned
    assert code == 2
    assert out == ""
    assert "invalid plan" in err
    assert "cycle" in err and "fixture_unclamp" in err


def test_invalid_configuration_is_refused_with_its_issues(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given a recipe that sets up a device the cell does not have
    yaml = YAML()
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for variant in ("oslo", "bergen"):
        data: Any = yaml.load((CONFIG / "recipes" / f"{variant}.yaml").read_text())
        if variant == "bergen":
            data["setup"]["labeller"] = {"program": 3}
        with (recipes / f"{variant}.yaml").open("w") as fh:
            yaml.dump(data, fh)
    cell: Any = yaml.load((CONFIG / "cell.yaml").read_text())
    cell["recipes_dir"] = str(recipes)
    cell["store"] = {"path": str(tmp_path / "cellctl.db")}
    with (tmp_path / "cell.yaml").open("w") as fh:
        yaml.dump(cell, fh)

    # when planning to it
    code = main(["plan", "--config", str(tmp_path), "--from", "oslo", "--to", "bergen"])
    out, err = capsys.readouterr()

    # then it is refused with the device named where it is written, and nothing is planned
    assert code == 2
    assert out == ""
    assert "bergen.yaml" in err and "labeller" in err


def test_from_is_required_without_live(capsys: pytest.CaptureFixture[str]) -> None:
    # Given no starting point, when planning offline
    code, _out, err = _plan(capsys, "--to", "bergen")

    # then the request is refused saying how to name one
    assert code == 2
    assert "--from VARIANT" in err and "--live" in err


async def test_live_plan_on_a_fresh_cell_holds_every_kind_of_step(
    sim_cell: SimCell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a fresh simulated cell (no tool mounted, no program loaded) and a config pointing at it
    endpoints = {name: dev.endpoint for name, dev in sim_cell.cell_config().devices.items()}
    config = _write_cell(tmp_path, endpoints)

    # when planning to oslo from the setup read back from the devices (main runs its own loop)
    code = await asyncio.to_thread(
        main, ["plan", "--config", str(config), "--to", "oslo", "--live", "--json", "--timeout", "10"]
    )
    out, err = capsys.readouterr()

    # then the plan holds every kind of step and nothing was commanded
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "live"
    assert {s["kind"] for s in data["steps"]} == set(EVERY_KIND)
    tool = next(s for s in data["steps"] if s["kind"] == "tool_change")
    assert "none -> FOAM-S" in tool["description"]
    assert sum(sim_cell.counters.values()) == 0


def test_live_plan_with_unreachable_devices_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a cell whose devices point at a closed port
    closed = free_port()
    yaml = YAML()
    data: Any = yaml.load((CONFIG / "cell.yaml").read_text())
    endpoints = {
        name: (f"opc.tcp://127.0.0.1:{closed}" if dev["driver"] == "opcua" else f"tcp://127.0.0.1:{closed}")
        for name, dev in data["devices"].items()
    }
    config = _write_cell(tmp_path, endpoints)

    # when planning live
    code = main(["plan", "--config", str(config), "--to", "oslo", "--live", "--timeout", "5"])
    out, err = capsys.readouterr()

    # then it says the devices cannot be read, and nothing is planned
    assert code == 3
    assert out == ""
    assert "cannot read the current setup" in err
