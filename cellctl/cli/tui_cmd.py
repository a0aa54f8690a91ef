"""``cellctl tui``: the operator terminal UI, a client of a running controller's control socket.

Exit codes: 0 quit by the operator, 2 usage or configuration error. A controller that is not (yet) reachable
is not an error: the TUI says so and keeps trying.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, NoReturn, TextIO

import structlog

from cellctl.cli.ctl import EXIT_OK, EXIT_USAGE, UsageError, socket_path
from cellctl.errors import ConfigError


def add_parser(sub: Any) -> None:
    """Register ``tui`` on the main parser's subcommands."""
    tui = sub.add_parser(
        "tui",
        help="operator terminal UI (keyboard only; reconnects to the controller by itself)",
        description="Run the cell from a terminal: state, orders, changeover, quality, alarms, devices. "
        "Keys 1-6 switch tabs, q quits; every action's key is shown in the footer.",
    )
    where = tui.add_mutually_exclusive_group()
    # SUPPRESS: a --config given before ``tui`` (on the main parser) is not overwritten by our default.
    where.add_argument("--socket", default=argparse.SUPPRESS, help="path of the control socket")
    where.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="folder holding cell.yaml (or a cell file): its api.socket",
    )
    tui.set_defaults(handler=run)


def run(args: argparse.Namespace, *, err: TextIO | None = None) -> int:
    """Run the TUI until the operator quits; returns the exit code."""
    stderr = err or sys.stderr
    try:
        path = socket_path(args)
    except UsageError as exc:
        stderr.write(f"cellctl tui: {exc}\n")
        return EXIT_USAGE
    except ConfigError as exc:
        stderr.write(f"{exc}\ncellctl tui: configuration invalid\n")
        return EXIT_USAGE
    # Imported here: Textual loads only for the one command that draws.
    from cellctl.tui.app import CellApp
    from cellctl.tui.link import ControllerLink

    silence_logs()
    CellApp(ControllerLink(path)).run()
    return EXIT_OK


def silence_logs() -> None:
    """Nothing may print on the terminal the TUI draws on: whatever cellctl or a library logs is dropped."""
    structlog.configure(processors=[_drop])
    logging.getLogger().handlers.clear()
    logging.getLogger().addHandler(logging.NullHandler())


def _drop(_logger: Any, _method: str, _event: MutableMapping[str, Any]) -> NoReturn:
    """A structlog processor that drops every event."""
    raise structlog.DropEvent
