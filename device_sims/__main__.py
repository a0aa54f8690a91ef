"""Command line: run every simulator of a cell until SIGINT/SIGTERM (`python -m device_sims CONFIG_DIR`).

Prints one line per listening server (``listening <endpoint> <device,...>``), then ``ready``. With
``--control`` it reads fault commands from stdin, one per line (``help`` lists them), and answers each with
one line starting ``ok`` or ``error``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from cellctl.errors import ConfigError
from cellctl.schema.cell import CellConfig
from device_sims.console import FaultConsole
from device_sims.harness import SimCell, load_cell_config
from device_sims.opcua_robot import endpoint_with
from device_sims.sims_config import SimsConfig, load_sims_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m device_sims", description=__doc__.splitlines()[0])
    parser.add_argument(
        "config_dir", type=Path, help="folder holding cell.yaml (and sims.yaml), or a cell file"
    )
    parser.add_argument(
        "--sims", type=Path, default=None, help="simulator behaviour file (default: sims.yaml)"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="factor on every duration (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gauge noise and rejects (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument("--ephemeral", action="store_true", help="listen on free ports instead of the file's")
    ports.add_argument("--port-offset", type=int, default=0, help="add this to every port of the cell file")
    parser.add_argument("--control", action="store_true", help="read fault commands from stdin")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command the simulators take")
    return parser


def shift_ports(cell: CellConfig, offset: int) -> CellConfig:
    """The cell with ``offset`` added to every device's port."""
    if offset == 0:
        return cell
    devices = {}
    for name, dev in cell.devices.items():
        host, port = dev.host_port
        if not 0 < port + offset < 65536:
            raise SystemExit(f"error: port {port} + offset {offset} is out of range for {name}")
        devices[name] = dev.model_copy(update={"endpoint": endpoint_with(dev.endpoint, host, port + offset)})
    return cell.model_copy(update={"devices": devices})


def build(args: argparse.Namespace) -> SimCell:
    """The SimCell the command line asks for; ConfigError when the files are invalid."""
    folder: Path = args.config_dir
    cell_file = folder / "cell.yaml" if folder.is_dir() else folder
    cell = shift_ports(load_cell_config(cell_file), args.port_offset)
    sims_file: Path = args.sims if args.sims is not None else cell_file.parent / "sims.yaml"
    sims = load_sims_config(sims_file) if sims_file.exists() else SimsConfig()
    sims.check(cell, str(sims_file))
    return SimCell(
        cell, sims, time_scale=args.time_scale, seed=args.seed, ephemeral_ports=args.ephemeral, host=args.host
    )


async def _serve(sim: SimCell, control: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        for server in sim.servers:
            print(f"listening {server.endpoint} {','.join(server.devices)}", flush=True)
        print("ready", flush=True)
        async with asyncio.TaskGroup() as group:
            console = None
            if control:
                console = group.create_task(FaultConsole(sim).serve_stdin(stop), name="sims:control")
            await stop.wait()
            if console is not None:
                console.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the simulators; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    if not args.verbose:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        # Port clashes and the like are reported once, by main(), not as library tracebacks.
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.time_scale < 0:
        print("error: --time-scale must be >= 0", file=sys.stderr)
        return 2
    try:
        sim = build(args)
        return asyncio.run(_serve(sim, args.control))
    except ConfigError as exc:
        print(f"error: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
