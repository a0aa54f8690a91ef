"""``cellctl check`` and ``cellctl schema``: validate configuration and export its JSON Schemas."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cellctl.errors import ConfigError
from cellctl.schema.export import json_schemas
from cellctl.schema.load import format_issues, load_config
from cellctl.schema.load import warnings as config_warnings


def add_parsers(sub: Any) -> None:
    """Register ``check`` and ``schema``."""
    check = sub.add_parser(
        "check", help="validate a cell folder (cell.yaml + recipes); exit 0 (warnings included) or 2"
    )
    check.add_argument("config", help="folder holding cell.yaml, or a cell file")
    check.set_defaults(handler=run_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of the cell and recipe files (for editors)")
    schema.add_argument("which", nargs="?", choices=["cell", "recipe", "all"], default="all")
    schema.set_defaults(handler=run_schema)


def run_check(args: argparse.Namespace) -> int:
    """Validate every file of a cell; print every problem as file:line: path: message, and every warning
    (valid but unsafe, e.g. OPC UA without security) as 'warning: ...' without failing."""
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{format_issues(exc)}; nothing was started.\n")
        return 2
    for warning in config_warnings(loaded):
        sys.stderr.write(f"warning: {warning}\n")
    cell = loaded.cell
    devices, recipes = ", ".join(cell.devices), ", ".join(sorted(loaded.recipes))
    sys.stdout.write(
        f"ok: {loaded.cell_file}: cell {cell.identity.cell} with {len(cell.devices)} devices ({devices}) "
        f"and {len(loaded.recipes)} recipes ({recipes})\n"
    )
    return 0


def run_schema(args: argparse.Namespace) -> int:
    """Print one or both JSON Schemas."""
    schemas = json_schemas()
    chosen: Any = schemas if args.which == "all" else schemas[args.which]
    sys.stdout.write(json.dumps(chosen, indent=2) + "\n")
    return 0
