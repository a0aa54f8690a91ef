"""structlog set-up: JSON lines for journald in service mode, a readable console format in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO, cast

import structlog

LogFormat = Literal["json", "console", "auto"]


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written (it may be swapped after configuration)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Route structlog and stdlib logging to stderr, in JSON or console form, with contextvars merged in."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if fmt == "json"
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging. asyncua and pymodbus log every failed retry at error, while our
    # drivers log an outage once and report health: keep theirs for debugging sessions only.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s: %(message)s"
    )
    # asyncua's trust store logs a refused certificate with a traceback under "asyncuagds".
    for noisy in ("asyncua", "asyncuagds", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.WARNING if numeric <= logging.DEBUG else logging.CRITICAL)
