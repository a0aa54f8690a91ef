"""``cellctl run``: the controller as a long-running service that stops cleanly on Ctrl-C and SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import structlog

from cellctl.errors import CellctlError, ConfigError
from cellctl.runtime.app import CellApp
from cellctl.runtime.logging import configure_logging
from cellctl.schema.load import format_issues, load_config

log = structlog.get_logger("cellctl.run")


def add_parser(sub: Any) -> None:
    """Register ``run``."""
    run = sub.add_parser("run", help="run the controller until Ctrl-C or SIGTERM")
    run.add_argument("--config", required=True, help="folder holding cell.yaml, or a cell file")
    run.add_argument("--log-level", default="info")
    run.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    run.add_argument("--no-mqtt", action="store_true", help="keep telemetry in the outbox; do not connect")
    run.set_defaults(handler=run_service)


def run_service(args: argparse.Namespace) -> int:
    """Load and validate the configuration, then run the controller."""
    configure_logging(args.log_level, args.log_format)
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{format_issues(exc)}; refusing to start.\n")
        return 2
    app = CellApp(loaded, publish=False if args.no_mqtt else None)
    try:
        asyncio.run(_serve(app))
    except CellctlError as exc:
        log.error("controller failed", error=str(exc))
        return 1
    return 0


async def _serve(app: CellApp) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
