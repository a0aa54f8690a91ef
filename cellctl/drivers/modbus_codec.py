"""Pure Modbus register codec: tag values to and from registers or bits, and coalesced block reads.

No I/O and no pymodbus here, so every rule is testable on its own. Conventions:
- a register is an int 0..65535; multi-register values are cut into 16-bit words of the big-endian value,
  then ``byte_order: little`` swaps the two bytes inside each word and ``word_order: little`` puts the
  least significant word first;
- a string is ``length`` registers of ASCII, two characters per register (first character in the high
  byte unless ``byte_order: little``), padded with NUL; word order does not apply to text;
- engineering value = raw * scale + offset (bools and strings are never scaled).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cellctl.core.tags import TagValue
from cellctl.drivers._values import CodecError, check_int_range, to_engineering, to_raw
from cellctl.schema.cell import Datatype, ModbusTable, Order, TagConfig
from cellctl.schema.cell import register_count as schema_register_count

__all__ = [
    "BIT_TABLES",
    "DEFAULT_MAX_GAP_BITS",
    "DEFAULT_MAX_GAP_REGISTERS",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "MAX_WRITE_REGISTERS",
    "BitMask",
    "CodecError",
    "Coil",
    "Encoded",
    "RawData",
    "ReadBlock",
    "Registers",
    "TagCodec",
    "decode_raw",
    "encode_raw",
    "plan_reads",
    "register_count",
]

BIT_TABLES = frozenset({ModbusTable.COIL, ModbusTable.DISCRETE_INPUT})
WRITABLE_TABLES = frozenset({ModbusTable.COIL, ModbusTable.HOLDING_REGISTER})
MAX_READ_REGISTERS = 125
"""Protocol limit of one read of holding or input registers."""
MAX_READ_BITS = 2000
"""Protocol limit of one read of coils or discrete inputs."""
MAX_WRITE_REGISTERS = 123
"""Protocol limit of one write of multiple registers."""
DEFAULT_MAX_GAP_REGISTERS = 8
"""Unused registers a read may bridge to merge two tags into one request."""
DEFAULT_MAX_GAP_BITS = 16
"""Unused bits a read may bridge to merge two tags into one request."""

_STRUCT: dict[Datatype, str] = {
    Datatype.INT16: ">h",
    Datatype.UINT16: ">H",
    Datatype.INT32: ">i",
    Datatype.UINT32: ">I",
    Datatype.FLOAT32: ">f",
    Datatype.FLOAT64: ">d",
}


def register_count(datatype: Datatype, length: int | None = None) -> int:
    """Registers one value of ``datatype`` occupies (``length`` for a string); CodecError for a bad length."""
    try:
        return schema_register_count(datatype, length)
    except ValueError as exc:
        raise CodecError(str(exc)) from exc


def _bytes_to_words(data: bytes, word_order: Order, byte_order: Order) -> list[int]:
    if byte_order is Order.LITTLE:
        words = [data[i] | data[i + 1] << 8 for i in range(0, len(data), 2)]
    else:
        words = [data[i] << 8 | data[i + 1] for i in range(0, len(data), 2)]
    if word_order is Order.LITTLE:
        words.reverse()
    return words


def _words_to_bytes(words: Sequence[int], word_order: Order, byte_order: Order) -> bytes:
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise CodecError(f"register value {word!r} is not an unsigned 16-bit integer")
    ordered = list(reversed(words)) if word_order is Order.LITTLE else list(words)
    out = bytearray()
    for word in ordered:
        hi, lo = word >> 8, word & 0xFF
        out += bytes((lo, hi)) if byte_order is Order.LITTLE else bytes((hi, lo))
    return bytes(out)


def encode_raw(
    value: TagValue,
    datatype: Datatype,
    *,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
    length: int | None = None,
) -> list[int]:
    """Encode a raw (unscaled) value into registers; CodecError when it does not fit."""
    count = register_count(datatype, length)
    if datatype is Datatype.BOOL:
        if not isinstance(value, bool):
            raise CodecError(f"a bool takes True or False, not {value!r}")
        return [int(value)]
    if datatype is Datatype.STRING:
        if not isinstance(value, str):
            raise CodecError(f"a string takes text, not {value!r}")
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError as exc:
            raise CodecError(f"{value!r} is not ASCII text") from exc
        if b"\x00" in data:
            raise CodecError(f"{value!r} contains a NUL character")
        if len(data) > 2 * count:
            raise CodecError(f"{value!r} is {len(data)} characters; {count} registers hold {2 * count}")
        return _bytes_to_words(data.ljust(2 * count, b"\x00"), Order.BIG, byte_order)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"a {datatype.value} takes a number, not {value!r}")
    fmt = _STRUCT[datatype]
    if datatype in (Datatype.FLOAT32, Datatype.FLOAT64):
        try:
            data = struct.pack(fmt, float(value))
        except OverflowError as exc:
            raise CodecError(f"{value} is out of range for {datatype.value}") from exc
    else:
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise CodecError(f"{value} is not a whole number, as {datatype.value} needs")
            value = int(value)
        data = struct.pack(fmt, check_int_range(value, datatype))
    return _bytes_to_words(data, word_order, byte_order)


def decode_raw(
    words: Sequence[int],
    datatype: Datatype,
    *,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
    length: int | None = None,
) -> TagValue:
    """Decode registers into a raw (unscaled) value; CodecError on a wrong register count or bad data."""
    # A string decodes from however many registers it is given unless its length is stated.
    if datatype is Datatype.STRING and length is None:
        expected = len(words)
    else:
        expected = register_count(datatype, length)
    if len(words) != expected:
        raise CodecError(f"{datatype.value} needs {expected} register(s), got {len(words)}")
    if datatype is Datatype.BOOL:
        _words_to_bytes(words, Order.BIG, Order.BIG)
        return words[0] != 0
    if datatype is Datatype.STRING:
        data = _words_to_bytes(words, Order.BIG, byte_order).split(b"\x00", 1)[0]
        try:
            return data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise CodecError(f"registers hold non-ASCII text {data!r}") from exc
    value: int | float = struct.unpack(_STRUCT[datatype], _words_to_bytes(words, word_order, byte_order))[0]
    return value


@dataclass(frozen=True, slots=True)
class Registers:
    """Registers to write from the tag's address on."""

    words: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Coil:
    """One coil to switch."""

    on: bool


@dataclass(frozen=True, slots=True)
class BitMask:
    """A masked write (function 22) that sets or clears one bit of a holding register and nothing else."""

    and_mask: int
    or_mask: int


RawData = Sequence[int] | Sequence[bool]
"""Registers or bits as a reply carries them."""

Encoded = Registers | Coil | BitMask
"""What writing one tag sends."""


@dataclass(frozen=True, slots=True)
class TagCodec:
    """How one Modbus tag sits in its table and how its value is encoded there."""

    name: str
    table: ModbusTable
    address: int
    datatype: Datatype
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    length: int | None = None
    bit: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    _width: int = field(default=0, init=False, repr=False, compare=False)
    # A number's registers to bytes and bytes to value, made once (None: not a number in registers).
    _pack: Callable[..., bytes] | None = field(default=None, init=False, repr=False, compare=False)
    _unpack: struct.Struct | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Plain strings (a config copied without validation) become the enums the rules compare by identity.
        for name, kind in (
            ("table", ModbusTable),
            ("datatype", Datatype),
            ("word_order", Order),
            ("byte_order", Order),
        ):
            object.__setattr__(self, name, kind(getattr(self, name)))
        where = f"tag {self.name!r}"
        if self.table in BIT_TABLES and (self.datatype is not Datatype.BOOL or self.bit is not None):
            raise CodecError(f"{where}: a {self.table.value} holds single bits: bool without 'bit'")
        if self.bit is not None and (self.datatype is not Datatype.BOOL or not 0 <= self.bit <= 15):
            raise CodecError(f"{where}: 'bit' needs datatype bool and a bit number 0..15")
        if self.datatype is Datatype.STRING and (self.length is None or self.length < 1):
            raise CodecError(f"{where}: a string needs a length of at least 1 register")
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise CodecError(f"{where}: scale must be finite and not 0, offset finite")
        # Computed once: every poll slices and checks each tag by its width.
        width = 1 if self.table in BIT_TABLES else register_count(self.datatype, self.length)
        object.__setattr__(self, "_width", width)
        if self.address < 0 or self.address + self.width > 65536:
            raise CodecError(f"{where}: address {self.address} + {self.width} runs past 65535")
        if self.table not in BIT_TABLES and self.datatype in _STRUCT:
            words = "<" if self.byte_order is Order.LITTLE else ">"
            object.__setattr__(self, "_pack", struct.Struct(f"{words}{width}H").pack)
            object.__setattr__(self, "_unpack", struct.Struct(_STRUCT[self.datatype]))

    @classmethod
    def from_config(cls, name: str, tag: TagConfig) -> TagCodec:
        """The codec of a configured Modbus tag."""
        if tag.table is None or tag.address is None:
            raise CodecError(f"tag {name!r}: a Modbus tag needs 'table' and 'address'")
        return cls(
            name=name,
            table=tag.table,
            address=tag.address,
            datatype=tag.datatype,
            word_order=tag.word_order,
            byte_order=tag.byte_order,
            length=tag.length,
            bit=tag.bit,
            scale=tag.scale,
            offset=tag.offset,
        )

    @property
    def bits(self) -> bool:
        """True for a tag in a bit table (coils, discrete inputs)."""
        return self.table in BIT_TABLES

    @property
    def width(self) -> int:
        """Registers (or bits, in a bit table) the tag occupies."""
        return self._width

    @property
    def end(self) -> int:
        """First address after the tag."""
        return self.address + self.width

    def decode(self, raw: RawData) -> TagValue:
        """Engineering value of the tag from exactly its own registers (or its one bit)."""
        if len(raw) != self.width:
            unit = "bit(s)" if self.bits else "register(s)"
            raise CodecError(f"tag {self.name!r} needs {self.width} {unit}, got {len(raw)}")
        if self.bits:
            return bool(raw[0])
        words = [int(w) for w in raw]
        pack, unpack = self._pack, self._unpack
        if pack is not None and unpack is not None:
            # decode_raw's rules in one pack and one unpack; a word out of range gets decode_raw's error.
            try:
                data = pack(*(reversed(words) if self.word_order is Order.LITTLE else words))
            except struct.error as exc:
                _words_to_bytes(words, Order.BIG, Order.BIG)  # names the word out of range
                raise CodecError(f"tag {self.name!r}: {exc}") from exc
            number: int | float = unpack.unpack(data)[0]
            return to_engineering(number, self.datatype, self.scale, self.offset)
        if self.bit is not None:
            _words_to_bytes(words, Order.BIG, Order.BIG)
            return bool(words[0] >> self.bit & 1)
        value = decode_raw(
            words, self.datatype, word_order=self.word_order, byte_order=self.byte_order, length=self.length
        )
        return to_engineering(value, self.datatype, self.scale, self.offset)

    def encode(self, value: TagValue) -> Encoded:
        """What to send to write ``value`` (engineering units) to the tag; CodecError when it cannot."""
        if self.table not in WRITABLE_TABLES:
            raise CodecError(f"tag {self.name!r}: a {self.table.value} cannot be written")
        raw = to_raw(value, self.datatype, self.scale, self.offset)
        if self.bits:
            assert isinstance(raw, bool)
            return Coil(raw)
        if self.bit is not None:
            mask = 1 << self.bit
            return BitMask(and_mask=~mask & 0xFFFF, or_mask=mask if raw else 0)
        words = encode_raw(
            raw, self.datatype, word_order=self.word_order, byte_order=self.byte_order, length=self.length
        )
        return Registers(tuple(words))


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: a run of a table, and the tags decoded from it."""

    table: ModbusTable
    start: int
    count: int
    tags: tuple[TagCodec, ...]

    @property
    def bits(self) -> bool:
        """True when the block reads a bit table."""
        return self.table in BIT_TABLES

    def slice(self, raw: RawData) -> list[tuple[TagCodec, RawData]]:
        """Cut a reply into each tag's own registers or bit; CodecError when the reply has the wrong size.

        A bit reply may carry padding up to a whole byte; a register reply must be exactly ``count`` long.
        """
        self.check(raw)
        return [(tag, raw[tag.address - self.start : tag.end - self.start]) for tag in self.tags]

    def check(self, raw: RawData) -> None:
        """CodecError when a reply has the wrong size for this block (the size rule of ``slice``)."""
        if len(raw) != self.count and not (self.bits and self.count <= len(raw) < self.count + 8):
            unit = "bits" if self.bits else "registers"
            raise CodecError(
                f"{self.table.value} read at {self.start} asked for {self.count} {unit}, got {len(raw)}"
            )

    def decode(self, raw: RawData) -> dict[str, TagValue | CodecError]:
        """Each tag's value from a reply, or the CodecError that tag's data gave (others still decode)."""
        out: dict[str, TagValue | CodecError] = {}
        for tag, part in self.slice(raw):
            try:
                out[tag.name] = tag.decode(part)
            except CodecError as exc:
                out[tag.name] = exc
        return out


def plan_reads(
    tags: Iterable[TagCodec],
    *,
    max_gap_registers: int = DEFAULT_MAX_GAP_REGISTERS,
    max_gap_bits: int = DEFAULT_MAX_GAP_BITS,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> list[ReadBlock]:
    """Coalesce tags into as few reads as the limits allow, per table, in address order.

    Tags that overlap, touch or sit at most ``max_gap_*`` unused addresses apart share a read, as long as
    the read stays within ``max_registers`` / ``max_bits``. Every tag lands in exactly one block.
    """
    if max_gap_registers < 0 or max_gap_bits < 0:
        raise CodecError("a gap to bridge cannot be negative")
    if not 1 <= max_registers <= MAX_READ_REGISTERS or not 1 <= max_bits <= MAX_READ_BITS:
        raise CodecError(f"read limits must be 1..{MAX_READ_REGISTERS} registers, 1..{MAX_READ_BITS} bits")
    by_table: dict[ModbusTable, list[TagCodec]] = {}
    for tag in tags:
        by_table.setdefault(tag.table, []).append(tag)
    blocks: list[ReadBlock] = []
    for table in ModbusTable:
        members = sorted(by_table.get(table, ()), key=lambda t: (t.address, t.end, t.name))
        if not members:
            continue
        bits = table in BIT_TABLES
        gap, limit = (max_gap_bits, max_bits) if bits else (max_gap_registers, max_registers)
        run: list[TagCodec] = []
        start = end = 0
        for tag in members:
            if tag.width > limit:
                raise CodecError(f"tag {tag.name!r} is {tag.width} wide, more than one read of {limit}")
            if run and tag.address - end <= gap and max(end, tag.end) - start <= limit:
                run.append(tag)
                end = max(end, tag.end)
                continue
            if run:
                blocks.append(ReadBlock(table, start, end - start, tuple(run)))
            run, start, end = [tag], tag.address, tag.end
        blocks.append(ReadBlock(table, start, end - start, tuple(run)))
    return blocks
