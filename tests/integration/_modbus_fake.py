"""A small Modbus TCP server for driver tests: plain tables per unit, counted requests, scripted faults.

Written from the protocol spec with struct, independent of cellctl's codec and of pymodbus, so a driver
bug cannot hide behind a shared encoder. Faults: exception codes per (unit, function, address), a number of
busy replies, replies one register short, and a blackhole that accepts requests and never answers.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.fixtures.loopback import LoopbackServer


@dataclass
class Unit:
    """The four tables of one unit id (absent addresses answer exception 2)."""

    coils: dict[int, bool] = field(default_factory=dict)
    discrete: dict[int, bool] = field(default_factory=dict)
    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)

    def set_float32(self, table: dict[int, int], address: int, value: float) -> None:
        """Store a float32 big-endian, most significant word first."""
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        table[address], table[address + 1] = hi, lo

    @staticmethod
    def get_float32(table: dict[int, int], address: int) -> float:
        """Read back a float32 stored most significant word first."""
        value: float = struct.unpack(">f", struct.pack(">HH", table[address], table[address + 1]))[0]
        return value


@dataclass(frozen=True)
class Request:
    """One request as received."""

    unit: int
    function: int
    address: int


class FakeModbus(LoopbackServer):
    """A Modbus TCP server on 127.0.0.1 that a test can stop, restart, count and break."""

    def __init__(self) -> None:
        super().__init__()
        self.units: dict[int, Unit] = {}
        self.requests: list[Request] = []
        self.exceptions: dict[tuple[int, int, int], int] = {}
        """(unit, function, address) -> exception code to answer with."""
        self.busy_for: dict[tuple[int, int, int], int] = {}
        """(unit, function, address) -> how many more requests to answer with exception 6 (busy)."""
        self.short_replies: set[tuple[int, int, int]] = set()
        """(unit, function, address) of reads answered with one register or bit-byte too few."""
        self.blackhole = False
        """When set, requests are read and never answered."""
        self._changed = asyncio.Condition()

    def unit(self, unit_id: int) -> Unit:
        """The tables of ``unit_id`` (created empty)."""
        return self.units.setdefault(unit_id, Unit())

    async def wait_requests(self, predicate: Callable[[list[Request]], bool], timeout: float = 5.0) -> None:
        """Wait until the requests seen so far satisfy ``predicate``."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.requests))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one client's requests until it disconnects or the server stops."""
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _pid, length, unit_id = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                function = pdu[0]
                address = struct.unpack(">H", pdu[1:3])[0] if len(pdu) >= 3 else 0
                self.requests.append(Request(unit_id, function, address))
                async with self._changed:
                    self._changed.notify_all()
                if self.blackhole:
                    continue
                reply = self._answer(unit_id, function, pdu)
                writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit_id) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def _answer(self, unit_id: int, function: int, pdu: bytes) -> bytes:
        address = struct.unpack(">H", pdu[1:3])[0]
        code = self.exceptions.get((unit_id, function, address))
        if code is not None:
            return bytes((function | 0x80, code))
        if self.busy_for.get((unit_id, function, address), 0) > 0:
            self.busy_for[(unit_id, function, address)] -= 1
            return bytes((function | 0x80, 6))
        unit = self.units.get(unit_id)
        if unit is None:
            return bytes((function | 0x80, 11))
        short = (unit_id, function, address) in self.short_replies
        try:
            match function:
                case 1 | 2:
                    (count,) = struct.unpack(">H", pdu[3:5])
                    table = unit.coils if function == 1 else unit.discrete
                    bits = [table[a] for a in range(address, address + count)]
                    data = bytearray((count + 7) // 8)
                    for i, bit in enumerate(bits):
                        data[i // 8] |= int(bit) << (i % 8)
                    if short:
                        data = data[:-1]
                    return bytes((function, len(data))) + bytes(data)
                case 3 | 4:
                    (count,) = struct.unpack(">H", pdu[3:5])
                    regs = unit.holding if function == 3 else unit.input
                    words = [regs[a] for a in range(address, address + count - (1 if short else 0))]
                    return bytes((function, 2 * len(words))) + struct.pack(f">{len(words)}H", *words)
                case 5:
                    (value,) = struct.unpack(">H", pdu[3:5])
                    if address not in unit.coils:
                        raise KeyError(address)
                    unit.coils[address] = value == 0xFF00
                    return pdu[:5]
                case 6:
                    if address not in unit.holding:
                        raise KeyError(address)
                    unit.holding[address] = struct.unpack(">H", pdu[3:5])[0]
                    return pdu[:5]
                case 16:
                    count, _nbytes = struct.unpack(">HB", pdu[3:6])
                    words = struct.unpack(f">{count}H", pdu[6 : 6 + 2 * count])
                    for i, word in enumerate(words):
                        if address + i not in unit.holding:
                            raise KeyError(address + i)
                        unit.holding[address + i] = word
                    return pdu[:5]
                case 22:
                    and_mask, or_mask = struct.unpack(">HH", pdu[3:7])
                    current = unit.holding[address]
                    unit.holding[address] = (current & and_mask) | (or_mask & ~and_mask & 0xFFFF)
                    return pdu[:7]
        except KeyError:
            return bytes((function | 0x80, 2))
        return bytes((function | 0x80, 1))
