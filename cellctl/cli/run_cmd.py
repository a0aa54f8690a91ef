"""``cellctl run``: the controller as a long-running service: stops cleanly on Ctrl-C and SIGTERM, reloads its
configuration on SIGHUP, on uvloop where it is installed."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
from collections.abc import Callable
from typing import Any, Literal

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
    run.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop: uvloop where it is installed (auto), or the one named",
    )
    run.set_defaults(handler=run_service)


def run_service(args: argparse.Namespace) -> int:
    """Load and validate the configuration, then run the controller."""
    configure_logging(args.log_level, args.log_format)
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{format_issues(exc)}; refusing to start.\n")
        return 2
    if args.loop == "uvloop" and not uvloop_available():
        sys.stderr.write("--loop uvloop: uvloop is not installed (pip install 'cellctl[uvloop]').\n")
        return 2
    name, factory = loop_factory(args.loop)
    app = CellApp(loaded, publish=False if args.no_mqtt else None)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(app, name))
    except CellctlError as exc:
        log.error("controller failed", error=str(exc))
        return 1
    return 0


LoopChoice = Literal["auto", "asyncio", "uvloop"]


def uvloop_available() -> bool:
    """True when uvloop can be imported."""
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: LoopChoice) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The loop's name and factory for ``choice`` (None: asyncio's default); auto: uvloop if installed."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_available()):
        return "asyncio", None
    import uvloop  # the optional extra: imported only when chosen

    return "uvloop", uvloop.new_event_loop


async def _serve(app: CellApp, loop_name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info(
        "event loop", loop=loop_name, implementation=f"{type(loop).__module__}.{type(loop).__qualname__}"
    )
    handlers = {signal.SIGINT: stop.set, signal.SIGTERM: stop.set, signal.SIGHUP: app.request_reload}
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        await app.run(stop)
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
