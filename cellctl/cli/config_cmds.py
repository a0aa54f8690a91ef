"""``cellctl check`` and ``cellctl schema``: validate configuration and export the JSON Schemas of the
configuration files and of the MQTT messages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cellctl.api.mqtt_orders import ORDER_TOPIC, REPLY_SCHEMA, REPLY_TOPIC, OrderCommand, OrderReply
from cellctl.api.mqtt_orders import json_schemas as order_schemas
from cellctl.errors import ConfigError
from cellctl.schema.export import json_schemas
from cellctl.schema.load import format_issues, load_config
from cellctl.schema.load import warnings as config_warnings
from cellctl.telemetry.schemas import TELEMETRY_MESSAGES, MessageSchema, schema_document, schema_files

MQTT_MESSAGES: tuple[MessageSchema, ...] = (
    *TELEMETRY_MESSAGES,
    # Orders over MQTT: the command and reply models of cellctl/api are registered here (the telemetry
    # package may not import the api layer); their schemas come from the api, which knows each cmd's args.
    MessageSchema(
        "cellctl.cmd-order/1",
        OrderCommand,
        ORDER_TOPIC,
        direction="subscribe",
        generate=lambda: order_schemas()["cmd-order"],
    ),
    MessageSchema(REPLY_SCHEMA, OrderReply, REPLY_TOPIC, generate=lambda: order_schemas()["cmd-reply"]),
)
"""Every MQTT message kind ``cellctl schema telemetry`` exports (docs/telemetry holds generated copies)."""


def add_parsers(sub: Any) -> None:
    """Register ``check`` and ``schema``."""
    check = sub.add_parser(
        "check", help="validate a cell folder (cell.yaml + recipes); exit 0 (warnings included) or 2"
    )
    check.add_argument("config", help="folder holding cell.yaml, or a cell file")
    check.set_defaults(handler=run_check)

    schema = sub.add_parser(
        "schema",
        help="print the JSON Schemas of the cell and recipe files (for editors) and of the MQTT messages",
    )
    schema.add_argument("which", nargs="?", choices=["cell", "recipe", "telemetry", "all"], default="all")
    schema.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="write one <name>.schema.json file per schema into DIR (telemetry adds index.json) "
        "instead of printing",
    )
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
    """Print the chosen JSON Schemas, or write them into ``--out``; exit 2 if the folder cannot be written."""
    if args.out is not None:
        return _write_schemas(args.which, args.out)
    config = json_schemas()
    chosen: Any
    if args.which == "telemetry":
        chosen = schema_document(MQTT_MESSAGES)
    elif args.which == "all":
        chosen = {**config, "telemetry": schema_document(MQTT_MESSAGES)}
    else:
        chosen = config[args.which]
    sys.stdout.write(json.dumps(chosen, indent=2) + "\n")
    return 0


def schema_texts(which: str) -> dict[str, str]:
    """File name -> text of every file ``cellctl schema WHICH --out DIR`` writes."""
    files: dict[str, Any] = {}
    if which in ("cell", "recipe", "all"):
        config = json_schemas()
        files.update({f"{kind}.schema.json": config[kind] for kind in config if which in (kind, "all")})
    if which in ("telemetry", "all"):
        files.update(schema_files(MQTT_MESSAGES))
    return {name: json.dumps(document, indent=2) + "\n" for name, document in files.items()}


def _write_schemas(which: str, out: Path) -> int:
    texts = schema_texts(which)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (out / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"cellctl schema: cannot write into {out}: {exc}\n")
        return 2
    sys.stdout.write(f"wrote {len(texts)} files into {out}\n")
    return 0
