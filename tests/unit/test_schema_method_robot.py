"""Checks of a method-style robot in the cell file: its methods and tags, located at the device like the
signal style's slot checks. Each case edits config/examples/method-robot/cell.yaml and loads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cellctl.core.devices import Handshake, MethodSignature, ValueKind
from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.cell import DeviceConfig
from cellctl.schema.load import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "examples" / "method-robot"
NS = "nsu=urn:cellctl:sim:robot1;s="
START = f"""      start_cycle:
        object: "{NS}Robot1"
        method: "{NS}Robot1.StartCycle"
"""
START_METHOD = f'method: "{NS}Robot1.StartCycle"\n'
STATE = f'      state:          {{node: "{NS}Robot1.State",         datatype: uint16}}\n'


def cell_with(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    """The example cell with each (old, new) text edit made, written to ``tmp_path``."""
    text = (EXAMPLE / "cell.yaml").read_text()
    text = text.replace("recipes_dir: ../../recipes", f"recipes_dir: {REPO / 'config' / 'recipes'}")
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (tmp_path / "cell.yaml").write_text(text)
    return tmp_path


def line_of(folder: Path, fragment: str) -> int:
    """Line number (1-based) of the only line of the cell file holding ``fragment``."""
    lines = [
        n for n, line in enumerate((folder / "cell.yaml").read_text().splitlines(), 1) if fragment in line
    ]
    assert len(lines) == 1, fragment
    return lines[0]


def issues_of(folder: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(folder)
    return list(caught.value.issues)


def only_issue(folder: Path) -> ConfigIssue:
    issues = issues_of(folder)
    assert len(issues) == 1, issues
    return issues[0]


def test_the_example_method_robot_loads_with_its_methods() -> None:
    robot = load_config(EXAMPLE).cell.devices["robot1"]

    assert robot.handshake is Handshake.METHOD
    assert robot.method_signatures == {
        "load_program": MethodSignature((ValueKind.INT,)),
        "start_cycle": MethodSignature(),
    }


def test_a_robot_without_a_handshake_is_signal_style() -> None:
    assert load_config(REPO / "config").cell.devices["robot1"].handshake is Handshake.SIGNAL


def test_load_program_may_take_the_program_name_as_a_string(tmp_path: Path) -> None:
    folder = cell_with(tmp_path, ("inputs: [uint16]", "inputs: [string]"))

    robot = load_config(folder).cell.devices["robot1"]

    assert robot.method_signatures["load_program"].inputs == (ValueKind.STRING,)


def test_a_missing_method_is_reported_at_the_devices_methods(tmp_path: Path) -> None:
    folder = cell_with(tmp_path, (START, ""))

    issue = only_issue(folder)

    assert issue.path == "devices.robot1.methods.start_cycle"
    assert issue.line == line_of(folder, "methods:")
    assert "robot 'robot1' (method handshake) has no method 'start_cycle'" in issue.message
    assert "inputs []" in issue.message


def test_load_program_taking_a_float_is_refused_at_its_inputs(tmp_path: Path) -> None:
    folder = cell_with(tmp_path, ("inputs: [uint16]", "inputs: [float32]"))

    issue = only_issue(folder)

    assert issue.path == "devices.robot1.methods.load_program.inputs"
    assert issue.line == line_of(folder, "inputs: [float32]")
    assert "takes inputs [int] or [string], not [float]" in issue.message


def test_start_cycle_taking_an_argument_is_refused(tmp_path: Path) -> None:
    folder = cell_with(
        tmp_path,
        (START_METHOD, START_METHOD + "        inputs: [bool]\n"),
    )

    issue = only_issue(folder)

    assert issue.path == "devices.robot1.methods.start_cycle.inputs"
    assert (
        "method 'start_cycle' of robot 'robot1' (method handshake) takes inputs [], not [bool]"
        in issue.message
    )


def test_a_method_returning_outputs_the_handshake_does_not_read_is_refused(tmp_path: Path) -> None:
    folder = cell_with(
        tmp_path,
        (START_METHOD, START_METHOD + "        outputs: [uint16]\n"),
    )

    issue = only_issue(folder)

    assert issue.path == "devices.robot1.methods.start_cycle.outputs"
    assert "returns outputs [], not [int]" in issue.message


def test_a_missing_state_tag_is_reported_at_the_devices_tags(tmp_path: Path) -> None:
    folder = cell_with(tmp_path, (STATE, ""))

    issue = only_issue(folder)

    assert issue.path == "devices.robot1.tags.state"
    lines = (folder / "cell.yaml").read_text().splitlines()
    robot_tags = lines.index("    tags:", lines.index("  robot1:")) + 1
    assert issue.line == robot_tags
    assert "has no tag 'state'" in issue.message
    assert "0 idle, 1 running, 2 done, 3 fault" in issue.message


def test_a_state_tag_of_the_wrong_type_is_reported_at_its_datatype(tmp_path: Path) -> None:
    folder = cell_with(
        tmp_path, ('Robot1.State",         datatype: uint16', 'Robot1.State",         datatype: bool')
    )

    issue = only_issue(folder)

    assert issue.path == "devices.robot1.tags.state.datatype"
    assert issue.line == line_of(folder, "Robot1.State")
    assert "slot 'state' of robot 'robot1' (method handshake) needs a int tag, not bool" in issue.message


def test_a_signal_robot_switched_to_methods_without_them_gets_every_missing_slot(tmp_path: Path) -> None:
    text = (REPO / "config" / "cell.yaml").read_text()
    text = text.replace("recipes_dir: recipes", f"recipes_dir: {REPO / 'config' / 'recipes'}")
    text = text.replace("    profile: robot\n", "    profile: robot\n    handshake: method\n")
    (tmp_path / "cell.yaml").write_text(text)

    paths = {issue.path for issue in issues_of(tmp_path)}

    assert paths == {
        "devices.robot1.methods.load_program",
        "devices.robot1.methods.start_cycle",
        "devices.robot1.tags.state",
    }


def test_a_handshake_on_another_profile_is_refused_at_the_key(tmp_path: Path) -> None:
    folder = cell_with(
        tmp_path, ("    profile: tool_changer\n", "    profile: tool_changer\n    handshake: signal\n")
    )

    issue = only_issue(folder)

    assert issue.path == "devices.toolchanger.handshake"
    assert issue.line == line_of(folder, "handshake: signal")
    assert "'handshake' is only for a robot" in issue.message


def test_methods_on_a_modbus_device_are_refused_at_the_key(tmp_path: Path) -> None:
    folder = cell_with(
        tmp_path,
        (
            "    profile: gauge\n",
            '    profile: gauge\n    methods: {zero: {object: "ns=2;s=G", method: "ns=2;s=G.Zero"}}\n',
        ),
    )

    issue = only_issue(folder)

    assert issue.path == "devices.gauge.methods"
    assert "'methods' are only for OPC UA devices" in issue.message


def test_a_method_node_that_is_no_node_reference_is_refused_at_it(tmp_path: Path) -> None:
    folder = cell_with(tmp_path, (f'method: "{NS}Robot1.LoadProgram"', 'method: "Robot1.LoadProgram"'))

    issue = only_issue(folder)

    assert issue.path == "devices.robot1.methods.load_program.method"
    assert issue.line == line_of(folder, 'method: "Robot1.LoadProgram"')
    assert "is not a node reference" in issue.message


def test_the_method_handshake_needs_an_opc_ua_device() -> None:
    with pytest.raises(ValidationError, match="only OPC UA devices have"):
        DeviceConfig.model_validate(
            {
                "driver": "modbus",
                "endpoint": "tcp://127.0.0.1:502",
                "profile": "robot",
                "handshake": "method",
                "tags": {"state": {"table": "input_register", "address": 0, "datatype": "uint16"}},
            }
        )
