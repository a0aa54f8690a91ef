"""JSON Schemas of the files a person writes (cell and recipe), for editors' completion and checking."""

from __future__ import annotations

from typing import Any

from cellctl.schema.cell import CellConfig
from cellctl.schema.recipe import Recipe

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect pydantic generates."""


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of a cell file (``"cell"``) and of a recipe file (``"recipe"``)."""
    return {
        "cell": {"$schema": JSON_SCHEMA_DIALECT, **CellConfig.model_json_schema(mode="validation")},
        "recipe": {"$schema": JSON_SCHEMA_DIALECT, **Recipe.model_json_schema(mode="validation")},
    }
