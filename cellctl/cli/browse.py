"""``cellctl browse``: list an OPC UA server's nodes (NodeId, name, class, type, access, reference by
namespace URI) so an integrator can write the tag map of a cell file.

Exit codes: 0 listed, 1 the server (or our own security setup) refused the session or the start node, 2 bad
arguments, 3 the server cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cellctl.drivers.opcua_browse import BrowseResult, browse
from cellctl.drivers.opcua_session import SessionRefused, SessionSettings
from cellctl.errors import CommError
from cellctl.schema.cell import OpcUaSecurity, SecurityMode, SecurityPolicy

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

PASSWORD_ENV = "CELLCTL_OPCUA_PASSWORD"
"""Environment variable read for the password when ``--password`` is not given (keeps it out of ps)."""


def add_parser(sub: Any) -> None:
    """Register ``browse``."""
    parser = sub.add_parser(
        "browse",
        help="list an OPC UA server's nodes to write a tag map; exit 0, 1 refused, 3 unreachable",
        description="List the node tree of an OPC UA server below the Objects folder (or --node): NodeId, "
        "browse name, node class, data type, access, and the nsu= reference a cell file should use. "
        "Standard nodes (namespace 0) are listed but not descended into unless --all.",
    )
    parser.add_argument("endpoint", help="opc.tcp://host:port[/path]")
    parser.add_argument("--depth", type=int, default=3, help="levels below the start node (default 3)")
    parser.add_argument("--node", help="start at this node reference instead of the Objects folder")
    parser.add_argument("--all", action="store_true", help="descend into namespace 0 too")
    parser.add_argument("--paths", action="store_true", help="show browse paths instead of nsu= references")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to connect (default 5)")
    security = parser.add_argument_group("security (as a device's 'security' block)")
    security.add_argument("--policy", choices=[p.value for p in SecurityPolicy], default="None")
    security.add_argument("--mode", choices=[m.value for m in SecurityMode])
    security.add_argument("--certificate", help="cellctl's certificate (.der or .pem)")
    security.add_argument("--private-key", help="its private key")
    security.add_argument("--trust-dir", help="folder of trusted server certificates")
    security.add_argument("--username")
    security.add_argument("--password", help=f"default: ${PASSWORD_ENV}")
    parser.set_defaults(handler=run_browse)


def run_browse(args: argparse.Namespace) -> int:
    """Browse the server and print the node table; errors go to stderr with the exit codes above."""
    if args.depth < 1:
        sys.stderr.write("cellctl browse: --depth must be at least 1\n")
        return EXIT_USAGE
    password = args.password
    if password is None and args.username is not None:
        password = os.environ.get(PASSWORD_ENV)
    try:
        security = OpcUaSecurity(
            policy=args.policy,
            mode=args.mode,
            certificate=args.certificate,
            private_key=args.private_key,
            trust_dir=args.trust_dir,
            username=args.username,
            password=password,
        )
    except ValidationError as exc:
        for error in exc.errors():
            sys.stderr.write(f"cellctl browse: {_security_problem(error)}\n")
        return EXIT_USAGE
    if not args.endpoint.startswith("opc.tcp://"):
        sys.stderr.write(f"cellctl browse: {args.endpoint!r} is not an opc.tcp:// endpoint\n")
        return EXIT_USAGE
    settings = SessionSettings(
        name=args.endpoint,
        endpoint=args.endpoint,
        policy=security.policy,
        mode=security.message_mode,
        certificate=_path(security.certificate),
        private_key=_path(security.private_key),
        trust_dir=_path(security.trust_dir),
        username=security.username,
        password=security.password,
        connect_timeout_s=args.timeout,
        request_timeout_s=args.timeout,
    )
    # asyncua logs through stdlib logging (a refused certificate with a traceback); the error line says it.
    libraries = [logging.getLogger(name) for name in ("asyncua", "asyncuagds")]
    levels = [library.level for library in libraries]
    for library in libraries:
        library.setLevel(logging.CRITICAL)
    try:
        result = asyncio.run(browse(settings, depth=args.depth, start=args.node, all_namespaces=args.all))
    except SessionRefused as exc:
        sys.stderr.write(f"cellctl browse: refused: {_reason(exc)}\n")
        return EXIT_REFUSED
    except CommError as exc:
        sys.stderr.write(f"cellctl browse: cannot reach the server: {_reason(exc)}\n")
        return EXIT_UNREACHABLE
    finally:
        for library, level in zip(libraries, levels, strict=True):
            library.setLevel(level)
    sys.stdout.write(format_result(result, paths=args.paths))
    return EXIT_OK


def format_result(result: BrowseResult, *, paths: bool = False) -> str:
    """The namespace table, then one aligned line per node, indented by depth."""
    lines = ["namespaces:"]
    lines += [f"  {index}: {uri}" for index, uri in enumerate(result.namespaces)]
    header = ("BROWSE NAME", "CLASS", "TYPE", "ACCESS", "NODEID", "PATH" if paths else "REFERENCE")
    rows = [
        (
            "  " * (n.depth - 1) + n.browse_name,
            n.node_class,
            n.data_type,
            n.access,
            n.node_id,
            (n.path or "-") if paths else n.reference,
        )
        for n in result.nodes
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    count = len(result.nodes)
    more = " (stopped early: too many nodes)" if result.truncated else ""
    lines.append(f"{count} node{'' if count == 1 else 's'}{more}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _reason(exc: CommError) -> str:
    """The error without its device prefix (here the endpoint, which the message names already)."""
    return str(exc).removeprefix(f"{exc.device}: ")


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _security_problem(error: ErrorDetails) -> str:
    """A validation error of the security options, named by its option."""
    ctx = error.get("ctx") or {}
    where = ".".join(str(p) for p in (*error["loc"], *ctx.get("below", ())))
    option = f"--{where.replace('_', '-')}" if where else "security options"
    return f"{option}: {ctx.get('reason') or error['msg']}"
