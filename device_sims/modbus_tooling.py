"""Simulated Modbus TCP equipment: one pymodbus server per endpoint, serving every unit declared there.

The register image of each unit is laid out from the cell file's addresses and encoded here, on purpose
without cellctl.drivers: a simulator sharing the driver's codec could not catch the codec's bugs.
Conventions (the cell file's contract): multi-register values are the big-endian value cut in 16-bit words,
``byte_order: little`` swaps the bytes inside each word, ``word_order: little`` puts the least significant
word first; strings are ASCII, two characters per register, NUL padded (word order does not apply);
engineering value = raw * scale + offset.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from cellctl.core.tags import TagValue
from cellctl.schema.cell import Datatype, ModbusTable, Order, TagConfig
from device_sims.behaviour import DeviceSim
from device_sims.gate import Malformation, Request, RequestGate

_log = structlog.get_logger(__name__)

_FC_TABLE: dict[int, ModbusTable] = {
    1: ModbusTable.COIL,
    5: ModbusTable.COIL,
    15: ModbusTable.COIL,
    2: ModbusTable.DISCRETE_INPUT,
    3: ModbusTable.HOLDING_REGISTER,
    6: ModbusTable.HOLDING_REGISTER,
    16: ModbusTable.HOLDING_REGISTER,
    22: ModbusTable.HOLDING_REGISTER,
    23: ModbusTable.HOLDING_REGISTER,
    4: ModbusTable.INPUT_REGISTER,
}
_BIT_TABLES = (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)
_TABLE_ORDER = (
    ModbusTable.COIL,
    ModbusTable.DISCRETE_INPUT,
    ModbusTable.HOLDING_REGISTER,
    ModbusTable.INPUT_REGISTER,
)
GATEWAY_NO_RESPONSE = 11
"""Exception code a gateway answers for a unit it cannot reach; the endpoint answers it for absent units."""
_SIBLING_FUNCTION = {1: 2, 2: 1, 3: 4, 4: 3, 5: 15, 15: 5, 6: 16, 16: 6, 22: 16}
"""The function code a reply of ``function_code`` malformation carries instead of the one asked."""
_STRUCT: dict[Datatype, str] = {
    Datatype.INT16: "h",
    Datatype.UINT16: "H",
    Datatype.INT32: "i",
    Datatype.UINT32: "I",
    Datatype.FLOAT32: "f",
    Datatype.FLOAT64: "d",
}


def spoil_reply(frame: bytes, kind: Malformation) -> bytes:
    """A Modbus TCP reply frame spoiled as ``kind`` says (see ``device_sims.gate.Malformation``)."""
    if kind == "truncated":
        return frame[: len(frame) // 2]
    tid, pid, _length, unit = struct.unpack(">HHHB", frame[:7])
    pdu = frame[7:]
    function = pdu[0]
    step = 2 if function in (3, 4) else 1
    if kind == "byte_count" and function in (1, 2, 3, 4):
        pdu = bytes((function, max(0, pdu[1] - step))) + pdu[2:]
    elif kind == "short" and function in (1, 2, 3, 4):
        data = pdu[2 : max(2, len(pdu) - step)]
        pdu = bytes((function, len(data))) + data
    elif kind == "function_code":
        pdu = bytes((_SIBLING_FUNCTION.get(function, function),)) + pdu[1:]
    elif kind == "transaction_id":
        tid = (tid + 1) & 0xFFFF
    elif kind == "unit_id":
        unit = (unit + 1) & 0xFF
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1, unit) + pdu


def register_span(tag: TagConfig) -> int:
    """Registers (or bits, in a bit table) a tag occupies."""
    if tag.table in _BIT_TABLES or tag.datatype is Datatype.BOOL:
        return 1
    if tag.datatype is Datatype.STRING:
        assert tag.length is not None
        return tag.length
    return struct.calcsize(">" + _STRUCT[tag.datatype]) // 2


def _swap_bytes(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def encode_registers(tag: TagConfig, value: TagValue) -> list[int]:
    """The registers holding ``value`` for a register tag (not for bit tags or bits in a register)."""
    if tag.datatype is Datatype.BOOL:
        return [1 if value else 0]
    if tag.datatype is Datatype.STRING:
        assert tag.length is not None
        raw = str(value).encode("ascii", errors="replace")[: 2 * tag.length].ljust(2 * tag.length, b"\0")
        words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        return [_swap_bytes(w) for w in words] if tag.byte_order is Order.LITTLE else words
    number = float(value)
    raw_number = (number - tag.offset) / tag.scale
    fmt = _STRUCT[tag.datatype]
    if tag.datatype in (Datatype.FLOAT32, Datatype.FLOAT64):
        data = struct.pack(">" + fmt, raw_number)
    else:
        data = struct.pack(">" + fmt, round(raw_number) if math.isfinite(raw_number) else 0)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if tag.byte_order is Order.LITTLE:
        words = [_swap_bytes(w) for w in words]
    if tag.word_order is Order.LITTLE:
        words.reverse()
    return words


def decode_registers(tag: TagConfig, words: Sequence[int]) -> TagValue:
    """The engineering value held in a register tag's own registers."""
    if tag.datatype is Datatype.BOOL:
        return words[0] != 0
    ordered = list(words)
    if tag.datatype is Datatype.STRING:
        if tag.byte_order is Order.LITTLE:
            ordered = [_swap_bytes(w) for w in ordered]
        return b"".join(w.to_bytes(2, "big") for w in ordered).rstrip(b"\0").decode("ascii", errors="replace")
    if tag.word_order is Order.LITTLE:
        ordered.reverse()
    if tag.byte_order is Order.LITTLE:
        ordered = [_swap_bytes(w) for w in ordered]
    (raw,) = struct.unpack(">" + _STRUCT[tag.datatype], b"".join(w.to_bytes(2, "big") for w in ordered))
    if tag.scale == 1.0 and tag.offset == 0.0:
        return raw  # type: ignore[no-any-return]
    return float(raw) * tag.scale + tag.offset


@dataclass(frozen=True, slots=True)
class _Placed:
    tag: str
    config: TagConfig
    table: ModbusTable
    address: int
    span: int


class UnitImage:
    """The four tables of one Modbus unit, kept up to date from its simulated device."""

    def __init__(self, sim: DeviceSim) -> None:
        self.sim = sim
        self.placed: list[_Placed] = []
        for name, cfg in sim.config.tags.items():
            assert cfg.table is not None and cfg.address is not None
            self.placed.append(_Placed(name, cfg, cfg.table, cfg.address, register_span(cfg)))
        self.by_tag = {p.tag: p for p in self.placed}
        size: dict[ModbusTable, int] = dict.fromkeys(_TABLE_ORDER, 1)
        for p in self.placed:
            size[p.table] = max(size[p.table], p.address + p.span)
        self.bits: dict[ModbusTable, list[bool]] = {
            t: [False] * (-(-size[t] // 16) * 16) for t in _BIT_TABLES
        }
        self.words: dict[ModbusTable, list[int]] = {
            t: [0] * size[t] for t in (ModbusTable.HOLDING_REGISTER, ModbusTable.INPUT_REGISTER)
        }
        for tag, value in sim.published_values().items():
            if tag in self.by_tag:
                self.publish(tag, value)

    def publish(self, tag: str, value: TagValue) -> None:
        """Put a tag's value into the image (a listener of the device)."""
        placed = self.by_tag.get(tag)
        if placed is None:
            return  # a profile slot this cell does not wire
        cfg = placed.config
        if placed.table in _BIT_TABLES:
            self.bits[placed.table][placed.address] = bool(value)
        elif cfg.bit is not None:
            words = self.words[placed.table]
            mask = 1 << cfg.bit
            words[placed.address] = (
                (words[placed.address] | mask) if value else (words[placed.address] & ~mask)
            )
        else:
            self.words[placed.table][placed.address : placed.address + placed.span] = encode_registers(
                cfg, value
            )

    def decode(self, tag: str) -> TagValue:
        """A tag's value as the image holds it."""
        placed = self.by_tag[tag]
        if placed.table in _BIT_TABLES:
            return self.bits[placed.table][placed.address]
        words = self.words[placed.table][placed.address : placed.address + placed.span]
        if placed.config.bit is not None:
            return bool(words[0] >> placed.config.bit & 1)
        return decode_registers(placed.config, words)

    def tags_at(self, table: ModbusTable, address: int, count: int) -> tuple[str, ...]:
        """Tags of ``table`` overlapping ``count`` registers (or bits) from ``address``."""
        end = address + count
        return tuple(
            p.tag
            for p in self.placed
            if p.table is table and p.address < end and address < p.address + p.span
        )

    def apply_write(self, table: ModbusTable, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Store a client write and hand every tag it touched to the device."""
        touched = self.tags_at(table, address, len(values))
        before = {tag: self.decode(tag) for tag in touched}
        if table in _BIT_TABLES:
            self.bits[table][address : address + len(values)] = [bool(v) for v in values]
        else:
            self.words[table][address : address + len(values)] = [int(v) & 0xFFFF for v in values]
        for tag in touched:
            value = self.decode(tag)
            placed = self.by_tag[tag]
            if placed.config.bit is not None and value == before[tag]:
                continue  # another bit of the same register was written
            self.sim.client_write(tag, value)
        # The device may have changed what it holds; the register write must not undo that.
        for tag in touched:
            published = self.sim.published(tag)
            if published != self.decode(tag):
                self.publish(tag, published)
        current: list[bool] | list[int]
        if table in _BIT_TABLES:
            current = self.bits[table][address : address + len(values)]
        else:
            current = self.words[table][address : address + len(values)]
        if isinstance(values, list):
            values[:] = current

    def fill(self, table: ModbusTable, registers: list[int]) -> None:
        """Copy the image of ``table`` into pymodbus' register list of that table."""
        if table in _BIT_TABLES:
            bits = self.bits[table]
            packed = [
                sum(1 << i for i, bit in enumerate(bits[offset : offset + 16]) if bit)
                for offset in range(0, len(bits), 16)
            ]
            registers[: len(packed)] = packed
        else:
            words = self.words[table]
            registers[: len(words)] = words

    def sim_device(self, unit: int, action: object) -> SimDevice:
        """The pymodbus device serving this image (its registers are refreshed by ``action``)."""
        blocks: list[list[SimData]] = []
        for table in _TABLE_ORDER:
            if table in _BIT_TABLES:
                blocks.append([SimData(0, values=list(self.bits[table]), datatype=DataType.BITS)])
            else:
                blocks.append([SimData(0, values=list(self.words[table]), datatype=DataType.REGISTERS)])
        return SimDevice(
            id=unit,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            action=action,  # type: ignore[arg-type]
        )


class ModbusEndpointServer:
    """A Modbus TCP server at one endpoint, serving each simulated unit declared there."""

    protocol = "modbus"

    def __init__(
        self, host: str, port: int, units: dict[int, DeviceSim], gate: RequestGate | None = None
    ) -> None:
        if not units:
            raise ValueError("a Modbus endpoint needs at least one unit")
        self.host = host
        self.port = port
        self.gate = gate or RequestGate()
        self.images = {unit: UnitImage(sim) for unit, sim in units.items()}
        self._unwatch = [image.sim.watch(image.publish) for image in self.images.values()]
        self._server: ModbusTcpServer | None = None
        self._spoil: dict[int, Malformation] = {}
        self.log = _log.bind(devices=self.devices)

    @property
    def devices(self) -> tuple[str, ...]:
        """Names of the devices served here."""
        return tuple(image.sim.name for image in self.images.values())

    @property
    def endpoint(self) -> str:
        """``tcp://host:port``."""
        return f"tcp://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while listening."""
        return self._server is not None

    def _action_for(self, unit: int, image: UnitImage) -> object:
        async def action(
            function_code: int,
            _start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            table = _FC_TABLE[function_code]
            write = set_values is not None
            size = len(set_values) if set_values is not None else count
            request = Request(
                protocol="modbus",
                device=image.sim.name,
                write=write,
                table=table.value,
                address=address,
                count=size,
                tags=image.tags_at(table, address, size),
            )
            code = await self.gate.admit(request)
            if code is not None:
                return ExcCodes(code)
            kind = self.gate.malformation(request)
            if kind is not None:
                # The reply leaves in this same turn of the loop, so the unit id finds it in _outgoing.
                self._spoil[unit] = kind
            if set_values is not None:
                image.apply_write(table, address, set_values)
            image.fill(table, registers)
            return None

        return action

    def _outgoing(self, sending: bool, frame: bytes) -> bytes:
        """pymodbus' packet hook: spoil a reply a malformation rule picked, and answer for units not served
        here as a gateway does (exception 11); received frames pass."""
        if not sending or len(frame) < 8:
            return frame
        unit = frame[6]
        if unit not in self.images and 0 not in self.images:
            return frame[:4] + (3).to_bytes(2, "big") + bytes((unit, frame[7] | 0x80, GATEWAY_NO_RESPONSE))
        kind = self._spoil.pop(unit, None)
        return frame if kind is None else spoil_reply(frame, kind)

    @staticmethod
    def _absent_units() -> SimDevice:
        """Unit 0, to which pymodbus hands every unit it does not know: it answers them exception 11."""

        async def action(*_args: object) -> ExcCodes:
            return ExcCodes.GATEWAY_NO_RESPONSE

        bits, words = DataType.BITS, DataType.REGISTERS
        blocks = [[SimData(0, values=[0], datatype=kind)] for kind in (bits, bits, words, words)]
        return SimDevice(id=0, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=action)

    async def start(self) -> None:
        """Listen on the endpoint; OSError when the port cannot be bound."""
        if self._server is not None:
            return
        devices = [
            image.sim_device(unit, self._action_for(unit, image)) for unit, image in self.images.items()
        ]
        if 0 not in self.images:
            devices.append(self._absent_units())
        server = ModbusTcpServer(devices, address=(self.host, self.port), trace_packet=self._outgoing)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port}") from exc
        self.gate.reopened()
        self._server = server
        self.log.info("sim.listening", endpoint=self.endpoint)

    async def stop(self) -> None:
        """Stop listening and close every client connection; the port is free for a restart."""
        server, self._server = self._server, None
        if server is None:
            return
        self.gate.closing()
        await server.shutdown()  # type: ignore[no-untyped-call]
        self.log.info("sim.stopped", endpoint=self.endpoint)

    def drop_connections(self) -> int:
        """Abort every client connection (the server keeps listening); returns how many were dropped."""
        if self._server is None:
            return 0
        connections = list(self._server.active_connections.values())
        for conn in connections:
            transport = conn.transport
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]
        return len(connections)

    async def aclose(self) -> None:
        """Stop and forget the devices."""
        await self.stop()
        for unwatch in self._unwatch:
            unwatch()
