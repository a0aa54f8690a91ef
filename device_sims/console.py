"""Text commands for fault injection, so a simulator process can be faulted from outside (via stdin)."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections.abc import Awaitable, Callable

from cellctl.core.tags import TagValue
from device_sims.faults import DEFAULT_ROBOT_FAULT, FaultHandle
from device_sims.harness import SimCell

HELP = """commands (one a line; each answers one line, 'ok ...' or 'error ...'):
  drop [DEVICE]                 abort client connections (of every server without DEVICE)
  refuse DEVICE                 stop the device's server, port kept (clear to listen again)
  restart DEVICE                stop and start the device's server on the same port
  latency DEVICE SECONDS        delay every request to the device's server
  blackhole DEVICE [unit]       hold every request unanswered (with 'unit': only the device's own)
  freeze DEVICE                 stop the device publishing changes
  force DEVICE TAG VALUE        publish VALUE for TAG (nan, inf, -inf, true, false, numbers)
  robot-fault DEVICE [CODE] [AT] fault the robot now, or at AT (0..1) of its next cycle
  safety DEVICE TAG VALUE       set a safety input (e.g. safety estop_ok false) until cleared
  exception DEVICE TAG [CODE]   Modbus exception CODE (default 4) on every request touching TAG (* = any)
  malformed DEVICE KIND [TAG]   spoil Modbus replies to the device (touching TAG): byte_count, short,
                                function_code, transaction_id, unit_id or truncated
  status DEVICE TAG [STATUS]    OPC UA status (default BadSensorFailure) on TAG
  clear [KIND TARGET]           undo one fault (as listed by 'faults'), or all of them
  faults                        list active faults as KIND TARGET
  counters                      accepted, refused and written counts as JSON
  help                          this text"""


def parse_value(text: str) -> TagValue:
    """A tag value from its text: true/false, nan/inf, an int, a float, else the text itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("nan", "inf", "+inf", "-inf"):
        return float(lowered)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class FaultConsole:
    """Runs text commands against a SimCell's fault injection and keeps the handles they return."""

    def __init__(self, sim: SimCell) -> None:
        self.sim = sim
        self.handles: dict[tuple[str, str], FaultHandle] = {}
        self._commands: dict[str, Callable[[list[str]], Awaitable[str]]] = {
            "drop": self._drop,
            "refuse": self._refuse,
            "restart": self._restart,
            "latency": self._latency,
            "blackhole": self._blackhole,
            "freeze": self._freeze,
            "force": self._force,
            "robot-fault": self._robot_fault,
            "safety": self._safety,
            "exception": self._exception,
            "malformed": self._malformed,
            "status": self._status,
            "clear": self._clear,
            "faults": self._faults,
            "counters": self._counters,
        }

    async def run(self, line: str) -> str:
        """Execute one command line; the reply line."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return f"error {exc}"
        if not words:
            return "error empty command"
        if words[0] == "help":
            return "ok " + HELP.replace("\n", "\n   ")
        command = self._commands.get(words[0])
        if command is None:
            return f"error unknown command {words[0]!r} (try help)"
        try:
            return await command(words[1:])
        except (KeyError, ValueError, TypeError, IndexError, OSError) as exc:
            return f"error {words[0]}: {exc}"

    def _keep(self, handle: FaultHandle) -> str:
        self.handles[(handle.kind, handle.target)] = handle
        return f"ok {handle.kind} {handle.target}"

    async def _drop(self, args: list[str]) -> str:
        count = self.sim.faults.drop_connections(args[0] if args else None)
        return f"ok dropped {count}"

    async def _refuse(self, args: list[str]) -> str:
        return self._keep(await self.sim.faults.refuse_connections(args[0]))

    async def _restart(self, args: list[str]) -> str:
        await self.sim.faults.restart(args[0])
        return f"ok restarted {self.sim.server_of(args[0]).endpoint}"

    async def _latency(self, args: list[str]) -> str:
        return self._keep(self.sim.faults.latency(args[0], float(args[1])))

    async def _blackhole(self, args: list[str]) -> str:
        if args[1:] not in ([], ["unit"]):
            raise ValueError("usage: blackhole DEVICE [unit]")
        return self._keep(self.sim.faults.blackhole(args[0], unit=args[1:] == ["unit"]))

    async def _freeze(self, args: list[str]) -> str:
        return self._keep(self.sim.faults.freeze(args[0]))

    async def _force(self, args: list[str]) -> str:
        return self._keep(self.sim.faults.force_value(args[0], args[1], parse_value(args[2])))

    async def _robot_fault(self, args: list[str]) -> str:
        code = int(args[1]) if len(args) > 1 else DEFAULT_ROBOT_FAULT
        at = float(args[2]) if len(args) > 2 else None
        return self._keep(self.sim.faults.robot_fault(args[0], code, at=at))

    async def _safety(self, args: list[str]) -> str:
        return self._keep(self.sim.faults.safety_input(args[0], args[1], parse_value(args[2])))

    async def _exception(self, args: list[str]) -> str:
        code = int(args[2]) if len(args) > 2 else 4
        tag = None if args[1] == "*" else args[1]
        return self._keep(self.sim.faults.modbus_exception(args[0], tag, code))

    async def _malformed(self, args: list[str]) -> str:
        tag = args[2] if len(args) > 2 else None
        return self._keep(self.sim.faults.malformed_reply(args[0], tag, args[1]))  # type: ignore[arg-type]

    async def _status(self, args: list[str]) -> str:
        status = args[2] if len(args) > 2 else "BadSensorFailure"
        return self._keep(await self.sim.faults.bad_status(args[0], args[1], status))

    async def _clear(self, args: list[str]) -> str:
        if not args:
            count = len(self.sim.faults.active)
            await self.sim.faults.clear_all()
            self.handles.clear()
            return f"ok cleared {count}"
        kind, target = args[0], args[1]
        matching = [h for h in self.sim.faults.active if h.kind == kind and h.target == target]
        if not matching:
            return f"error no active fault {kind} {target}"
        for handle in reversed(matching):
            await handle.clear()
        self.handles.pop((kind, target), None)
        return f"ok cleared {kind} {target}"

    async def _faults(self, _args: list[str]) -> str:
        return "ok " + "; ".join(f"{h.kind} {h.target}" for h in self.sim.faults.active)

    async def _counters(self, _args: list[str]) -> str:
        def flat(counter: dict[tuple[str, str], int]) -> dict[str, int]:
            return {f"{dev}.{name}": n for (dev, name), n in sorted(counter.items())}

        data = {
            "commands": flat(self.sim.counters),
            "refused": flat(self.sim.refused),
            "writes": flat(self.sim.writes),
        }
        return "ok " + json.dumps(data)

    async def serve_stdin(self, stop: asyncio.Event) -> None:
        """Answer commands from stdin until EOF, which stops the simulators (their parent has gone)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    stop.set()
                    return
                line = raw.decode("utf-8", errors="replace").strip()
                if line:
                    reply = await self.run(line)
                    sys.stdout.write(reply + "\n")
                    sys.stdout.flush()
        finally:
            transport.close()
