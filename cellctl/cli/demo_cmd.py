"""``cellctl demo``: run the whole cell on simulated devices and print a summary."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from cellctl.errors import CellctlError, ConfigError
from cellctl.runtime.logging import configure_logging
from cellctl.schema.load import format_issues


def add_parser(sub: Any) -> None:
    """Register ``demo``."""
    demo = sub.add_parser("demo", help="run the example cell on simulated devices, with live progress")
    demo.add_argument("--config", default="config", help="cell folder (default: ./config)")
    demo.add_argument("--time-scale", type=float, default=0.2, help="factor on simulated durations")
    demo.add_argument("--no-broker", action="store_true", help="keep telemetry in the outbox")
    demo.add_argument("--log-level", default="warning")
    demo.add_argument(
        "--tui",
        action="store_true",
        help="run the order book yourself from the operator TUI (orders queued, nothing scripted; "
        "the controller's log is dropped while the TUI draws)",
    )
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every order completed."""
    # The demo module imports the simulators: load it only for this command.
    from cellctl.demo import ORDER_BOOK, render_summary, run_demo

    if args.tui:
        return _run_for_operator(args)
    configure_logging(args.log_level, "console")
    console = Console()
    try:
        summary = asyncio.run(
            run_demo(args.config, time_scale=args.time_scale, use_broker=not args.no_broker, console=console)
        )
    except ConfigError as exc:
        sys.stderr.write(f"{format_issues(exc)}; the demo did not start.\n")
        return 2
    except (CellctlError, TimeoutError) as exc:
        sys.stderr.write(f"demo failed: {exc}\n")
        return 1
    render_summary(summary, console)
    return 0 if summary.jobs_completed == len(ORDER_BOOK) else 1


def _run_for_operator(args: argparse.Namespace) -> int:
    """``demo --tui``: the simulated cell with the order book queued, run by a person from the TUI."""
    from cellctl.cli.tui_cmd import silence_logs
    from cellctl.demo import run_demo_for_operator
    from cellctl.tui.app import CellApp
    from cellctl.tui.link import ControllerLink

    silence_logs()

    async def tui(socket: Path) -> None:
        await CellApp(ControllerLink(socket)).run_async()

    try:
        asyncio.run(
            run_demo_for_operator(args.config, tui, time_scale=args.time_scale, use_broker=not args.no_broker)
        )
    except ConfigError as exc:
        sys.stderr.write(f"{format_issues(exc)}; the demo did not start.\n")
        return 2
    except CellctlError as exc:
        sys.stderr.write(f"demo failed: {exc}\n")
        return 1
    return 0
