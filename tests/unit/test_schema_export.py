"""JSON Schemas for editors: one for cell files, one for recipe files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cellctl.schema.export import JSON_SCHEMA_DIALECT, json_schemas

JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def subschemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema object inside ``node`` (itself included)."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key in ("properties", "patternProperties", "$defs"):
                for sub in value.values():
                    yield from subschemas(sub)
            elif key in ("anyOf", "allOf", "oneOf", "prefixItems"):
                for sub in value:
                    yield from subschemas(sub)
            elif key in ("items", "additionalProperties", "propertyNames", "not"):
                yield from subschemas(value)


def test_there_is_a_schema_for_cells_and_one_for_recipes() -> None:
    assert set(json_schemas()) == {"cell", "recipe"}


@pytest.mark.parametrize("kind", ["cell", "recipe"])
def test_each_schema_is_a_json_schema_object(kind: str) -> None:
    schema = json_schemas()[kind]

    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("kind", ["cell", "recipe"])
def test_every_type_is_a_json_type_and_every_reference_resolves(kind: str) -> None:
    schema = json_schemas()[kind]
    defs = schema.get("$defs", {})

    for sub in subschemas(schema):
        types = sub.get("type", [])
        assert set(types if isinstance(types, list) else [types]) <= JSON_TYPES
        if "$ref" in sub:
            prefix, _, name = sub["$ref"].rpartition("/")
            assert prefix == "#/$defs" and name in defs


def test_the_cell_schema_describes_the_top_level_keys_of_a_cell_file() -> None:
    schema = json_schemas()["cell"]

    assert set(schema["properties"]) == {
        "schema_version",
        "identity",
        "devices",
        "mqtt",
        "store",
        "api",
        "recipes_dir",
        "changeover",
        "production",
        "oee",
        "interlocks",
        "estop",
    }
    assert set(schema["required"]) == {"identity", "devices"}


def test_the_recipe_schema_describes_the_top_level_keys_of_a_recipe_file() -> None:
    schema = json_schemas()["recipe"]

    assert set(schema["properties"]) == {
        "schema_version",
        "variant",
        "version",
        "description",
        "ideal_cycle_s",
        "setup",
        "parameters",
        "quality",
        "operator_steps",
        "first_article",
    }
    assert set(schema["required"]) == {"variant", "version", "setup"}


def test_the_recipe_schema_describes_operator_steps_and_their_evidence() -> None:
    defs = json_schemas()["recipe"]["$defs"]

    assert set(defs["OperatorStep"]["properties"]) == {
        "instruction",
        "evidence",
        "device",
        "smed",
        "after",
        "before",
        "expected_s",
        "timeout_s",
    }
    assert defs["OperatorStep"]["required"] == ["instruction"]
    assert set(defs["Evidence"]["required"]) == {"ask", "expect"}


def test_the_schemas_carry_the_models_constraints_for_editors() -> None:
    cell_defs = json_schemas()["cell"]["$defs"]

    assert cell_defs["TagConfig"]["required"] == ["datatype"]
    assert set(cell_defs["Datatype"]["enum"]) >= {"bool", "uint16", "float32"}
    assert cell_defs["DeviceConfig"]["properties"]["unit_id"]["maximum"] == 255
