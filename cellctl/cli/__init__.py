"""The ``cellctl`` command line: parses arguments and dispatches to one subcommand module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cellctl import __version__
from cellctl.cli import (
    browse,
    config_cmds,
    ctl,
    demo_cmd,
    doctor,
    plan,
    probe,
    report,
    run_cmd,
    store_cmds,
    tui_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="cellctl",
        description="Shop-floor cell controller: PackML, changeovers, quality, telemetry.",
    )
    parser.add_argument("--version", action="version", version=f"cellctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_cmds.add_parsers(sub)
    run_cmd.add_parser(sub)
    demo_cmd.add_parser(sub)
    ctl.add_parser(sub)
    tui_cmd.add_parser(sub)
    probe.add_parser(sub)
    doctor.add_parser(sub)
    browse.add_parser(sub)
    plan.add_parser(sub)
    report.add_parsers(sub)
    store_cmds.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellctl`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
