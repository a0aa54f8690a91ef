"""Fault injection into a running simulated cell: links, latency, frozen or bad values, device faults.

Every fault returns a ``FaultHandle``; ``await handle.clear()`` undoes it (also ``async with``). A new fault
kind needs one method here and, when it acts on requests, a rule on the server's ``RequestGate``.
Faults on a server act on every device at its endpoint (the tool changer, fixture and stapler share one).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from cellctl.core.tags import TagValue
from device_sims.behaviour import DeviceSim, GaugeSim, IoSim, RobotSim
from device_sims.gate import MALFORMATIONS, Malformation, Request, RequestGate

DEFAULT_ROBOT_FAULT = 900
"""Fault code of an injected robot fault unless another is given (clear codes 1-3 are the robot's own)."""


class SimServer(Protocol):
    """What fault injection needs from a simulator server (OPC UA or Modbus)."""

    protocol: str
    host: str
    port: int
    gate: RequestGate

    @property
    def devices(self) -> tuple[str, ...]:
        """Devices served here."""
        ...

    @property
    def endpoint(self) -> str:
        """Where clients connect."""
        ...

    @property
    def running(self) -> bool:
        """True while listening."""
        ...

    async def start(self) -> None:
        """Listen (again) on ``port``."""
        ...

    async def stop(self) -> None:
        """Stop listening and drop every session."""
        ...

    def drop_connections(self) -> int:
        """Abort every client connection; returns how many."""
        ...

    async def aclose(self) -> None:
        """Stop for good."""
        ...


class FaultTarget(Protocol):
    """The cell faults are injected into (a SimCell)."""

    @property
    def servers(self) -> tuple[SimServer, ...]:
        """Every server of the cell."""
        ...

    def server_of(self, device: str) -> SimServer:
        """The server at ``device``'s endpoint."""
        ...

    def device_sim(self, device: str) -> DeviceSim:
        """The simulated device named ``device``."""
        ...


Undo = Callable[[], Awaitable[None] | None]


class FaultHandle:
    """An injected fault; ``clear()`` undoes it once (later calls do nothing)."""

    def __init__(self, kind: str, target: str, undo: Undo, registry: list[FaultHandle]) -> None:
        self.kind = kind
        self.target = target
        self._undo: Undo | None = undo
        self._registry = registry
        registry.append(self)

    def __repr__(self) -> str:
        return f"FaultHandle({self.kind}, {self.target}, active={self.active})"

    @property
    def active(self) -> bool:
        """True until cleared."""
        return self._undo is not None

    async def clear(self) -> None:
        """Undo the fault."""
        undo, self._undo = self._undo, None
        if undo is None:
            return
        if self in self._registry:
            self._registry.remove(self)
        result = undo()
        if inspect.isawaitable(result):
            await result

    async def __aenter__(self) -> FaultHandle:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.clear()


class SimFaults:
    """Fault injection API of a simulated cell."""

    def __init__(self, cell: FaultTarget) -> None:
        self._cell = cell
        self.active: list[FaultHandle] = []
        """Faults injected and not cleared, oldest first."""

    def _handle(self, kind: str, target: str, undo: Undo) -> FaultHandle:
        return FaultHandle(kind, target, undo, self.active)

    async def clear_all(self) -> None:
        """Undo every active fault, newest first."""
        for handle in reversed(list(self.active)):
            await handle.clear()

    # -- links ----------------------------------------------------------------------------------------------
    def drop_connections(self, device: str | None = None) -> int:
        """Abort the client connections of ``device``'s server (of all when None); clients may reconnect."""
        servers = self._cell.servers if device is None else (self._cell.server_of(device),)
        return sum(server.drop_connections() for server in servers)

    async def refuse_connections(self, device: str) -> FaultHandle:
        """Stop ``device``'s server (sessions lost, connects refused) until cleared; the port is kept."""
        server = self._cell.server_of(device)
        await server.stop()
        return self._handle("refuse_connections", server.endpoint, server.start)

    async def restart(self, device: str) -> None:
        """Stop and start ``device``'s server on the same port: every session and subscription is lost."""
        server = self._cell.server_of(device)
        await server.stop()
        await server.start()

    def latency(self, device: str, seconds: float) -> FaultHandle:
        """Delay every request to ``device``'s server by ``seconds`` (replaces any latency set before)."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError("latency must be a finite number of seconds >= 0")
        gate = self._cell.server_of(device).gate
        previous = gate.latency_s
        gate.latency_s = seconds

        def undo() -> None:
            gate.latency_s = previous

        return self._handle("latency", device, undo)

    def blackhole(self, device: str, *, unit: bool = False) -> FaultHandle:
        """Hold every request to ``device``'s server unanswered (no reset, no reply) until cleared.

        With ``unit`` only the device's own requests are held: its unit at a shared Modbus endpoint (a
        gateway whose target went silent) while the other units there keep answering.
        """
        gate = self._cell.server_of(device).gate
        if unit:
            gate.hold_device(device)

            def undo() -> None:
                gate.release_device(device)

            return self._handle("blackhole_unit", device, undo)
        gate.hold()
        return self._handle("blackhole", device, gate.release)

    def modbus_exception(self, device: str, tag: str | None, code: int = 4) -> FaultHandle:
        """Answer every Modbus request touching ``tag`` of ``device`` (every request of the device when
        ``tag`` is None) with exception ``code`` (4: server device failure, 6: busy, 2: illegal address,
        11: gateway target failed to respond...)."""
        server = self._modbus_server(device, tag)

        def rule(request: Request) -> int | None:
            return code if self._picks(request, device, tag) else None

        return self._handle("modbus_exception", f"{device}.{tag or '*'}", server.gate.add_rule(rule))

    def malformed_reply(
        self, device: str, tag: str | None = None, kind: Malformation = "byte_count"
    ) -> FaultHandle:
        """Spoil the reply to every Modbus request touching ``tag`` of ``device`` (every request of the
        device when ``tag`` is None) as ``kind`` says (see ``device_sims.gate.Malformation``)."""
        if kind not in MALFORMATIONS:
            raise ValueError(f"unknown malformation {kind!r} (one of {', '.join(MALFORMATIONS)})")
        server = self._modbus_server(device, tag)

        def rule(request: Request) -> Malformation | None:
            return kind if self._picks(request, device, tag) else None

        return self._handle("malformed_reply", f"{device}.{tag or '*'}", server.gate.add_malformation(rule))

    def _modbus_server(self, device: str, tag: str | None) -> SimServer:
        server = self._cell.server_of(device)
        if server.protocol != "modbus":
            raise ValueError(f"{device} is not a Modbus device")
        if tag is not None and tag not in self._cell.device_sim(device).config.tags:
            raise KeyError(f"{device} has no tag {tag!r}")
        return server

    @staticmethod
    def _picks(request: Request, device: str, tag: str | None) -> bool:
        return request.device == device and (tag is None or tag in request.tags)

    async def bad_status(self, device: str, tag: str, status: str = "BadSensorFailure") -> FaultHandle:
        """Serve an OPC UA tag with a non-Good status (a name of asyncua's StatusCodes) until cleared."""
        server = self._cell.server_of(device)
        set_status = getattr(server, "set_status", None)
        clear_status = getattr(server, "clear_status", None)
        if server.protocol != "opcua" or set_status is None or clear_status is None:
            raise ValueError(f"{device} is not an OPC UA device")
        await set_status(tag, status)

        async def undo() -> None:
            await clear_status(tag)

        return self._handle("bad_status", f"{device}.{tag}", undo)

    # -- values ---------------------------------------------------------------------------------------------
    def freeze(self, device: str) -> FaultHandle:
        """Stop ``device`` publishing any change (it keeps working behind a frozen image) until cleared."""
        sim = self._cell.device_sim(device)
        sim.freeze()
        return self._handle("freeze", device, sim.thaw)

    def force_value(self, device: str, tag: str, value: TagValue) -> FaultHandle:
        """Publish ``value`` for ``tag`` whatever the device does, until cleared."""
        sim = self._cell.device_sim(device)
        sim.force(tag, value)

        def undo() -> None:
            sim.release(tag)

        return self._handle("force_value", f"{device}.{tag}", undo)

    def gauge_value(self, device: str, channel: str, value: float = math.nan) -> FaultHandle:
        """Make a gauge channel read ``value`` (NaN by default; also +/-inf) until cleared."""
        if not isinstance(self._cell.device_sim(device), GaugeSim):
            raise ValueError(f"{device} is not a gauge")
        return self.force_value(device, channel, value)

    def safety_input(self, device: str, tag: str, value: TagValue) -> FaultHandle:
        """Set a safety input (guard door open, e-stop pressed, air low) until cleared, which restores it."""
        sim = self._cell.device_sim(device)
        if not isinstance(sim, IoSim):
            raise ValueError(f"{device} is not an io device")
        before = sim.get(tag)
        sim.set_input(tag, value)

        def undo() -> None:
            sim.set_input(tag, before)

        return self._handle("safety_input", f"{device}.{tag}", undo)

    def robot_fault(
        self, device: str, code: int = DEFAULT_ROBOT_FAULT, *, at: float | None = None
    ) -> FaultHandle:
        """Fault the robot: now (a running cycle stops and never completes), or, with ``at`` (0..1), part way
        through its next cycle. Clearing resets the fault code."""
        sim = self._cell.device_sim(device)
        if not isinstance(sim, RobotSim):
            raise ValueError(f"{device} is not a robot")
        if at is None:
            sim.fault(code)
        else:
            sim.arm_fault(code, at)
        return self._handle("robot_fault", device, sim.reset_fault)
