"""A corpus of broken cell and recipe files: each is refused with the file, line and key path of its fault.

Each case is a cell file (``cell_*.yaml``, next to an empty ``recipes/`` folder) or a small cell folder with a
broken recipe (``recipe_*/``); the comment at the top of each file says what is broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cellctl.errors import ConfigError
from cellctl.schema.load import load_config

BAD = Path(__file__).resolve().parent / "bad_configs"


@dataclass(frozen=True)
class Expect:
    """An issue the loader must report: file (relative to the corpus), line, key path, part of the message."""

    file: str
    line: int | None
    path: str
    fragment: str


def cell(name: str, line: int | None, path: str, fragment: str) -> Expect:
    return Expect(f"{name}.yaml", line, path, fragment)


def recipe(case: str, line: int, path: str, fragment: str, file: str = "oslo.yaml") -> Expect:
    return Expect(f"{case}/recipes/{file}", line, path, fragment)


# (what to load, every issue it must give)
CASES: dict[str, tuple[str, list[Expect]]] = {
    # --- the cell file: models' own checks
    "store: unknown stream, retry backwards": (
        "cell_store_unknown_stream.yaml",
        [
            cell("cell_store_unknown_stream", 6, "store.streams.helth", "unknown stream 'helth'"),
            cell("cell_store_unknown_stream", 7, "store.retry.max_interval_s", "not be less than interval_s"),
        ],
    ),
    "unknown key (typo)": (
        "cell_unknown_key.yaml",
        [cell("cell_unknown_key", 9, "devices.gauge.tags.trigger.acess", "did you mean 'access'?")],
    ),
    "wrong type": (
        "cell_wrong_type.yaml",
        [cell("cell_wrong_type", 7, "devices.gauge.unit_id", "valid integer")],
    ),
    "missing required field": (
        "cell_missing_required.yaml",
        [cell("cell_missing_required", 4, "devices.gauge.profile", "required key 'profile' is missing")],
    ),
    "bad endpoint scheme": (
        "cell_bad_endpoint_scheme.yaml",
        [cell("cell_bad_endpoint_scheme", 6, "devices.gauge.endpoint", "must start with 'tcp://'")],
    ),
    "endpoint without port": (
        "cell_endpoint_without_port.yaml",
        [cell("cell_endpoint_without_port", 6, "devices.gauge.endpoint", "host:port")],
    ),
    "broker keepalive above 10 s and TLS verification switched off": (
        "cell_mqtt_broker_faults.yaml",
        [
            cell("cell_mqtt_broker_faults", 15, "mqtt.keepalive_s", "less than or equal to 10"),
            cell("cell_mqtt_broker_faults", 18, "mqtt.tls.insecure", "unknown key 'insecure'"),
        ],
    ),
    "broker password given inline and as a file": (
        "cell_mqtt_two_passwords.yaml",
        [cell("cell_mqtt_two_passwords", 16, "mqtt.password_file", "password or password_file, not both")],
    ),
    "malformed interlock condition and resume after a hold": (
        "cell_interlock_faults.yaml",
        [
            cell("cell_interlock_faults", 12, "interlocks.guard_door.when", "is not a condition"),
            cell("cell_interlock_faults", 13, "interlocks.air_low.resume_when", "only for action 'suspend'"),
        ],
    ),
    "interlock on an unknown tag": (
        "cell_interlock_unknown_tag.yaml",
        [
            cell(
                "cell_interlock_unknown_tag",
                11,
                "interlocks.guard_door.when",
                "device 'safety' has no tag 'door_closed'",
            )
        ],
    ),
    "interlock comparing a bool with a number": (
        "cell_interlock_mistyped.yaml",
        [
            cell(
                "cell_interlock_mistyped",
                11,
                "interlocks.guard_door.when",
                "safety.guard_closed is bool: it cannot be compared with 0",
            )
        ],
    ),
    "Modbus tag without address": (
        "cell_modbus_tag_without_address.yaml",
        [
            cell(
                "cell_modbus_tag_without_address",
                10,
                "devices.gauge.tags.ready.address",
                "a Modbus tag needs 'address'",
            )
        ],
    ),
    "OPC UA tag without node": (
        "cell_opcua_tag_without_node.yaml",
        [
            cell(
                "cell_opcua_tag_without_node",
                10,
                "devices.gauge.tags.ready.node",
                "an OPC UA tag needs 'node'",
            )
        ],
    ),
    "coil with non-bool datatype": (
        "cell_coil_not_bool.yaml",
        [cell("cell_coil_not_bool", 15, "devices.gauge.tags.lamp.datatype", "datatype must be bool")],
    ),
    "writable input register": (
        "cell_writable_input_register.yaml",
        [cell("cell_writable_input_register", 15, "devices.gauge.tags.width_mm.access", "read-only")],
    ),
    "string tag without length": (
        "cell_string_without_length.yaml",
        [cell("cell_string_without_length", 12, "devices.gauge.tags.serial.length", "needs 'length'")],
    ),
    "tools on a non-tool-changer": (
        "cell_tools_on_gauge.yaml",
        [cell("cell_tools_on_gauge", 8, "devices.gauge.tools", "only for a tool_changer")],
    ),
    "bad identity names ('/' and '+')": (
        "cell_bad_identity_names.yaml",
        [
            cell("cell_bad_identity_names", 6, "identity.line", "'line+1' is not a valid name"),
            cell("cell_bad_identity_names", 7, "identity.cell", "'cell/3' is not a valid name"),
        ],
    ),
    "bad device name": (
        "cell_bad_device_name.yaml",
        [cell("cell_bad_device_name", 4, "devices.gauge/1", "'gauge/1' is not a valid name")],
    ),
    "template cycle in changeover.steps.*.after": (
        "cell_template_cycle.yaml",
        [
            cell(
                "cell_template_cycle",
                17,
                "changeover.steps.fixture_unclamp.after",
                "cycle: fixture_unclamp -> fixture_clamp -> fixture_move -> fixture_unclamp",
            )
        ],
    ),
    "unknown step kind in after": (
        "cell_unknown_step_kind.yaml",
        [
            cell(
                "cell_unknown_step_kind", 17, "changeover.steps.fixture_clamp.after[1]", "got 'fixture_moove'"
            )
        ],
    ),
    # --- the cell file: YAML itself
    "duplicate key": (
        "cell_duplicate_key.yaml",
        [
            cell(
                "cell_duplicate_key",
                12,
                "devices.gauge.tags.ready",
                "duplicate key 'ready' (first on line 10)",
            )
        ],
    ),
    "YAML syntax error": (
        "cell_yaml_syntax.yaml",
        [cell("cell_yaml_syntax", 11, "", "YAML syntax error")],
    ),
    # --- the cell file: cross-checks
    "unbound profile slot": (
        "cell_unbound_slot.yaml",
        [cell("cell_unbound_slot", 8, "devices.gauge.tags.ready", "has no tag 'ready'")],
    ),
    "profile slot of the wrong type": (
        "cell_slot_wrong_type.yaml",
        [
            cell(
                "cell_slot_wrong_type",
                13,
                "devices.gauge.tags.ready.datatype",
                "needs a bool tag, not uint16",
            )
        ],
    ),
    "profile slot not writable": (
        "cell_slot_not_writable.yaml",
        [
            cell(
                "cell_slot_not_writable", 9, "devices.gauge.tags.trigger.access", "access must be 'w' or 'rw'"
            )
        ],
    ),
    "overlapping registers": (
        "cell_overlapping_registers.yaml",
        [
            cell(
                "cell_overlapping_registers",
                14,
                "devices.gauge.tags.depth_mm.address",
                "(input_register 1-2) overlaps tag 'width_mm' (input_register 0-1)",
            )
        ],
    ),
    "bit tag in a register a number uses": (
        "cell_bit_shares_register.yaml",
        [
            cell(
                "cell_bit_shares_register",
                15,
                "devices.gauge.tags.alarm.address",
                "overlaps tag 'mode' (holding_register 0)",
            )
        ],
    ),
    # --- recipes
    "recipe: unknown key": (
        "recipe_unknown_key",
        [recipe("recipe_unknown_key", 5, "qualtiy", "did you mean 'quality'?")],
    ),
    "recipe: unknown device": (
        "recipe_unknown_device",
        [recipe("recipe_unknown_device", 5, "setup.robot9", "unknown device 'robot9'")],
    ),
    "recipe: tool not in tools": (
        "recipe_tool_not_in_tools",
        [recipe("recipe_tool_not_in_tools", 6, "setup.toolchanger.tool", "'FOAM-XL' is not among the tools")],
    ),
    "recipe: tool on a non-tool-changer": (
        "recipe_tool_on_non_tool_changer",
        [recipe("recipe_tool_on_non_tool_changer", 5, "setup.stapler.tool", "'tool' is for a tool_changer")],
    ),
    "recipe: program on a non-robot": (
        "recipe_program_on_non_robot",
        [recipe("recipe_program_on_non_robot", 7, "setup.toolchanger.program", "'program' is for a robot")],
    ),
    "recipe: missing axis tags": (
        "recipe_missing_axis_tags",
        [
            recipe(
                "recipe_missing_axis_tags",
                8,
                "setup.fixture.positions.depth",
                "writable float tag 'depth_sp', which is missing; a readable float tag 'depth_act'",
            )
        ],
    ),
    "recipe: setpoint on a read-only tag": (
        "recipe_setpoint_read_only",
        [
            recipe(
                "recipe_setpoint_read_only",
                7,
                "setup.stapler.setpoints.force_act",
                "'force_act' is read-only",
            )
        ],
    ),
    "recipe: setpoint of the wrong type": (
        "recipe_setpoint_wrong_type",
        [recipe("recipe_setpoint_wrong_type", 6, "setup.stapler.setpoints.force_sp", "a float32 tag")],
    ),
    "recipe: parameter default out of range": (
        "recipe_parameter_out_of_range",
        [
            recipe(
                "recipe_parameter_out_of_range",
                8,
                "parameters.staple_pitch.default",
                "default 20.0 is outside [8.0, 16.0]",
            )
        ],
    ),
    "recipe: parameter target tag missing": (
        "recipe_parameter_target_missing",
        [
            recipe(
                "recipe_parameter_target_missing",
                11,
                "parameters.staple_pitch.target",
                "device 'stapler' has no tag 'pitch'",
            )
        ],
    ),
    "recipe: parameter without target": (
        "recipe_parameter_without_target",
        [
            recipe(
                "recipe_parameter_without_target",
                7,
                "parameters.staple_pitch.target",
                "required key 'target' is missing",
            )
        ],
    ),
    "recipe: quality lsl >= usl": (
        "recipe_quality_lsl_above_usl",
        [
            recipe(
                "recipe_quality_lsl_above_usl",
                8,
                "quality.seat_width.lsl",
                "lsl 421.2 must be below usl 418.8",
            )
        ],
    ),
    "recipe: nominal outside limits": (
        "recipe_nominal_outside_limits",
        [
            recipe(
                "recipe_nominal_outside_limits",
                7,
                "quality.seat_width.nominal",
                "nominal 425.0 is outside [418.8, 421.2]",
            )
        ],
    ),
    "recipe: quality source not on a gauge": (
        "recipe_quality_source_not_gauge",
        [recipe("recipe_quality_source_not_gauge", 7, "quality.press_force.source", "'stapler' is a press")],
    ),
    "recipe: spc holds on a rule it does not check": (
        "recipe_spc_hold_unchecked_rule",
        [
            recipe(
                "recipe_spc_hold_unchecked_rule",
                11,
                "quality.seat_width.spc.hold_on",
                "hold_on names rules [1] that 'rules' does not check",
            )
        ],
    ),
    "recipe: spc subgroup too large": (
        "recipe_spc_bad_subgroup",
        [
            recipe(
                "recipe_spc_bad_subgroup", 13, "quality.seat_width.spc.subgroup", "less than or equal to 10"
            )
        ],
    ),
    "recipe: duplicate variant": (
        "recipe_duplicate_variant",
        [
            recipe(
                "recipe_duplicate_variant",
                2,
                "variant",
                "variant 'oslo' is defined in ",
            )
        ],
    ),
}


@pytest.mark.parametrize(("target", "expected"), CASES.values(), ids=CASES.keys())
def test_broken_config_is_refused_with_file_line_and_path(target: str, expected: list[Expect]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(BAD / target)

    got = [(Path(i.file).resolve(), i.line, i.path) for i in caught.value.issues]
    assert got == [((BAD / e.file).resolve(), e.line, e.path) for e in expected]
    for issue, want in zip(caught.value.issues, expected, strict=True):
        assert want.fragment in issue.message


def test_a_duplicate_variant_names_both_files() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(BAD / "recipe_duplicate_variant")

    (issue,) = caught.value.issues
    assert Path(issue.file).name == "oslo.yaml"
    assert "recipe_duplicate_variant/recipes/bergen.yaml" in issue.message


def test_the_corpus_has_a_case_for_every_file_and_a_comment_on_top_of_each() -> None:
    used = {(BAD / target).resolve() for target, _ in CASES.values()}
    entries = {p.resolve() for p in BAD.iterdir() if p.name != "recipes"}
    assert entries == used
    assert len(used) >= 24

    for file in BAD.rglob("*.yaml"):
        assert file.read_text().startswith("# "), f"{file} says nothing about what it is"
