"""``cellctl doctor``: check configuration, certificates, store, disk, clock, broker and devices, and print
what is wrong and how to fix it. Exit 0 when nothing failed (warnings are printed), 1 when a check failed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from typing import Any

from cellctl.runtime.doctor import DEFAULT_TIMEOUT_S, DoctorSeams, Finding, Status, diagnose, exit_code
from cellctl.runtime.logging import configure_logging

__all__ = ["add_parser", "render", "run_doctor", "run_doctor_async"]


def add_parser(sub: Any) -> None:
    """Register ``doctor``."""
    parser = sub.add_parser(
        "doctor",
        help="check configuration, certificates, store, disk, clock, broker and devices; say how to fix",
        description="Check what cellctl run needs on this box. Each check prints OK, WARN or FAIL with what "
        "is wrong and how to fix it. Exit 0 when nothing failed (warnings included), 1 when a check failed. "
        "Run it as the controller's user: sudo -u cellctl cellctl doctor --config /etc/cellctl",
    )
    parser.add_argument("--config", required=True, help="folder holding cell.yaml, or a cell file")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds the checks may take in all (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    """Run every check and print the findings; the exit code says whether any failed."""
    # Library log lines (a driver, the store) would interleave with the report: errors only.
    configure_logging("critical", "console")
    return asyncio.run(run_doctor_async(args))


async def run_doctor_async(args: argparse.Namespace, seams: DoctorSeams | None = None) -> int:
    """``run_doctor`` inside a running event loop (for tests, with seams for the host)."""
    if not args.timeout > 0:
        sys.stderr.write("cellctl doctor: --timeout must be > 0\n")
        return 2
    findings = await diagnose(args.config, timeout=args.timeout, seams=seams)
    code = exit_code(findings)
    if args.json:
        document = {"ok": code == 0, "findings": [asdict(f) for f in findings]}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render(findings))
    return code


def render(findings: list[Finding]) -> str:
    """One line per finding (status, check, what), the fix indented under any that is not OK, a summary."""
    width = max((len(f.check) for f in findings), default=0)
    lines: list[str] = []
    for f in findings:
        lines.append(f"{f.status.value:<4}  {f.check:<{width}}  {f.what}")
        if f.status is not Status.OK and f.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {f.fix}")
    failed = sum(f.status is Status.FAIL for f in findings)
    warned = sum(f.status is Status.WARN for f in findings)
    lines.append(f"{len(findings)} checks: {failed} failed, {warned} warnings")
    return "\n".join(lines) + "\n"
