"""SimCell: every simulator of a cell started on loopback, with its counters, waits and fault injection."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar, overload

from pydantic import ValidationError

from cellctl.core.tags import TagValue
from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.cell import CellConfig
from device_sims.behaviour import DeviceSim, SimTaskError, World, build_world
from device_sims.faults import SimFaults, SimServer
from device_sims.modbus_tooling import ModbusEndpointServer
from device_sims.opcua_robot import OpcUaDeviceServer, endpoint_with
from device_sims.sims_config import SimsConfig, load_sims_config, read_yaml, validation_issues

D = TypeVar("D", bound=DeviceSim)

START_ATTEMPTS = 5
"""Free ports tried per server before giving up (another process may take a port we just found free)."""


def free_port(host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """A TCP port free on ``host`` right now (and not in ``avoid``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if not avoid or port not in avoid:
            return port
    raise OSError(f"no free port found on {host}")


def load_cell_config(path: str | Path) -> CellConfig:
    """The cell file at ``path`` (a directory holding cell.yaml, or the file), validated."""
    file = Path(path)
    if file.is_dir():
        file = file / "cell.yaml"
    data = read_yaml(file)
    try:
        return CellConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_issues(exc, str(file))) from exc


class SimCell:
    """Every device of a cell simulated over its real protocol on ``host``; an async context manager.

    With ``ephemeral_ports`` each server takes a free port and ``cell_config()`` points at it; otherwise the
    cell file's ports are used. Durations of ``sims`` are multiplied by ``time_scale``; ``seed`` makes the
    gauge noise and rejects reproducible.
    """

    def __init__(
        self,
        cell: CellConfig,
        sims: SimsConfig,
        *,
        time_scale: float = 1.0,
        seed: int = 0,
        ephemeral_ports: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        sims.check(cell)
        self.cell = cell
        self.sims = sims
        self.host = host
        self.ephemeral_ports = ephemeral_ports
        self.world: World = build_world(cell.devices.items(), sims, time_scale=time_scale, seed=seed)
        self._servers: list[SimServer] = []
        self._server_of: dict[str, SimServer] = {}
        modbus: dict[int, dict[int, DeviceSim]] = {}
        modbus_names: dict[int, list[str]] = {}
        port_owner: dict[int, str] = {}
        issues: list[ConfigIssue] = []
        for name, dev in cell.devices.items():
            _host, port = dev.host_port
            sim = self.world.devices[name]
            owner = port_owner.setdefault(port, "modbus" if dev.driver == "modbus" else name)
            if owner not in ("modbus", name) or (owner == "modbus" and dev.driver != "modbus"):
                issues.append(ConfigIssue("cell", None, f"devices.{name}.endpoint", f"port {port} is taken"))
            elif dev.driver == "opcua":
                server: SimServer = OpcUaDeviceServer(sim, host, port)
                self._servers.append(server)
                self._server_of[name] = server
            else:
                units = modbus.setdefault(port, {})
                if dev.unit_id in units:
                    issues.append(
                        ConfigIssue(
                            "cell", None, f"devices.{name}.unit_id", f"unit {dev.unit_id} repeats at {port}"
                        )
                    )
                units[dev.unit_id] = sim
                modbus_names.setdefault(port, []).append(name)
        if issues:
            raise ConfigError(issues)
        for port, units in modbus.items():
            endpoint_server = ModbusEndpointServer(host, port, units)
            self._servers.append(endpoint_server)
            for name in modbus_names[port]:
                self._server_of[name] = endpoint_server
        self.faults = SimFaults(self)
        self._started = False

    @classmethod
    def from_config_dir(
        cls,
        path: str | Path,
        *,
        sims_file: str | Path | None = None,
        time_scale: float = 1.0,
        seed: int = 0,
        ephemeral_ports: bool = True,
        host: str = "127.0.0.1",
    ) -> SimCell:
        """A SimCell for ``path/cell.yaml`` and ``path/sims.yaml`` (or ``sims_file``)."""
        folder = Path(path)
        cell_file = folder / "cell.yaml" if folder.is_dir() else folder
        cell = load_cell_config(cell_file)
        sims_path = Path(sims_file) if sims_file is not None else cell_file.parent / "sims.yaml"
        sims = load_sims_config(sims_path) if sims_path.exists() else SimsConfig()
        sims.check(cell, str(sims_path))
        return cls(cell, sims, time_scale=time_scale, seed=seed, ephemeral_ports=ephemeral_ports, host=host)

    # -- lifetime -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> SimCell:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every server; OSError (and nothing left running) when a port cannot be bound."""
        if self._started:
            raise RuntimeError("this SimCell is already started")
        self._started = True
        used: set[int] = set()
        try:
            # One after the other: each start takes milliseconds once asyncua's address space is cached,
            # and a failure stays a plain OSError naming its port.
            for server in self._servers:
                if self.ephemeral_ports:
                    server.port = free_port(self.host, used)
                used.add(server.port)
                await self._start_one(server, used)
        except BaseException:
            await self._stop_all()
            raise

    async def _start_one(self, server: SimServer, used: set[int]) -> None:
        for attempt in range(START_ATTEMPTS if self.ephemeral_ports else 1):
            try:
                await server.start()
                return
            except OSError:
                if not self.ephemeral_ports or attempt == START_ATTEMPTS - 1:
                    raise
                server.port = free_port(self.host, used)
                used.add(server.port)

    async def _stop_all(self) -> None:
        # Close everything even when one server fails to close, then report the first failure.
        failures: list[Exception] = []
        for server in self._servers:
            try:
                await server.aclose()
            except Exception as exc:
                failures.append(exc)
        await self.world.aclose()
        if failures:
            raise failures[0]

    async def close(self) -> None:
        """Stop every server and every timed action; raises SimTaskError if a simulator task crashed."""
        await self._stop_all()
        if self.world.errors:
            raise SimTaskError(f"{len(self.world.errors)} simulator task(s) crashed") from self.world.errors[
                0
            ]

    # -- what tests and drivers need ------------------------------------------------------------------------
    @property
    def servers(self) -> tuple[SimServer, ...]:
        """Every server, OPC UA first in file order, then one per Modbus endpoint."""
        return tuple(self._servers)

    def server_of(self, device: str) -> SimServer:
        """The server at ``device``'s endpoint."""
        try:
            return self._server_of[device]
        except KeyError:
            raise KeyError(f"no simulated device {device!r}") from None

    def device_sim(self, device: str) -> DeviceSim:
        """The simulated device named ``device``."""
        try:
            return self.world.devices[device]
        except KeyError:
            raise KeyError(f"no simulated device {device!r}") from None

    @overload
    def behaviour(self, device: str) -> DeviceSim: ...
    @overload
    def behaviour(self, device: str, kind: type[D]) -> D: ...
    def behaviour(self, device: str, kind: type[DeviceSim] = DeviceSim) -> DeviceSim:
        """The simulated device named ``device``, checked to be a ``kind`` (e.g. RobotSim)."""
        sim = self.device_sim(device)
        if not isinstance(sim, kind):
            raise TypeError(f"{device} is a {type(sim).__name__}, not a {kind.__name__}")
        return sim

    def endpoint(self, device: str) -> str:
        """Where ``device`` is served now."""
        dev = self.cell.devices[device]
        server = self.server_of(device)
        return endpoint_with(dev.endpoint, self.host, server.port)

    def cell_config(self) -> CellConfig:
        """The cell file with every endpoint pointing at the running simulators."""
        devices = {
            name: dev.model_copy(update={"endpoint": self.endpoint(name)})
            for name, dev in self.cell.devices.items()
        }
        return self.cell.model_copy(update={"devices": devices})

    @property
    def counters(self) -> Counter[tuple[str, str]]:
        """Accepted actuator commands by (device, command); see behaviour.py for the command names."""
        return self.world.commands

    @property
    def refused(self) -> Counter[tuple[str, str]]:
        """Refused commands by (device, command)."""
        return self.world.refused

    @property
    def writes(self) -> Counter[tuple[str, str]]:
        """Every client write by (device, tag)."""
        return self.world.writes

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked on every change in the simulated cell."""
        await self.world.wait_for(predicate, timeout)

    def value(self, ref: str) -> TagValue:
        """True value of ``device.tag`` in the simulator (what the equipment holds)."""
        return self.world.value(ref)

    def published(self, ref: str) -> TagValue:
        """Value of ``device.tag`` as clients are served it (differs from ``value`` when forced)."""
        device, _, tag = ref.partition(".")
        return self.device_sim(device).published(tag)
