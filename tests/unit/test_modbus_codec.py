"""The Modbus register codec: round trips, word and byte order, scaling, errors, and the read coalescer."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cellctl.drivers.modbus_codec import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    BitMask,
    CodecError,
    Coil,
    ReadBlock,
    Registers,
    TagCodec,
    decode_raw,
    encode_raw,
    plan_reads,
    register_count,
)
from cellctl.schema.cell import Datatype, ModbusTable, Order, TagConfig

ORDERS = st.sampled_from(list(Order))
HR = ModbusTable.HOLDING_REGISTER

RAW_VALUES: dict[Datatype, st.SearchStrategy[object]] = {
    Datatype.BOOL: st.booleans(),
    Datatype.INT16: st.integers(-(2**15), 2**15 - 1),
    Datatype.UINT16: st.integers(0, 2**16 - 1),
    Datatype.INT32: st.integers(-(2**31), 2**31 - 1),
    Datatype.UINT32: st.integers(0, 2**32 - 1),
    Datatype.FLOAT32: st.floats(width=32, allow_nan=False),
    Datatype.FLOAT64: st.floats(allow_nan=False),
}
NUMERIC = [
    Datatype.INT16,
    Datatype.UINT16,
    Datatype.INT32,
    Datatype.UINT32,
    Datatype.FLOAT32,
    Datatype.FLOAT64,
]


def codec(datatype: Datatype, **kw: object) -> TagCodec:
    return TagCodec(name="t", table=HR, address=kw.pop("address", 10), datatype=datatype, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", list(RAW_VALUES))
@given(data=st.data(), word_order=ORDERS, byte_order=ORDERS)
def test_every_datatype_round_trips_in_every_word_and_byte_order(
    datatype: Datatype, data: st.DataObject, word_order: Order, byte_order: Order
) -> None:
    value = data.draw(RAW_VALUES[datatype])
    words = encode_raw(value, datatype, word_order=word_order, byte_order=byte_order)  # type: ignore[arg-type]
    assert len(words) == register_count(datatype)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_raw(words, datatype, word_order=word_order, byte_order=byte_order) == value


@given(
    length=st.integers(1, 10),
    text=st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=20),
    word_order=ORDERS,
    byte_order=ORDERS,
)
def test_strings_round_trip_in_their_registers(
    length: int, text: str, word_order: Order, byte_order: Order
) -> None:
    assume(len(text) <= 2 * length)
    tag = codec(Datatype.STRING, length=length, word_order=word_order, byte_order=byte_order)
    encoded = tag.encode(text)
    assert isinstance(encoded, Registers)
    assert len(encoded.words) == length
    assert tag.decode(encoded.words) == text


@pytest.mark.parametrize("datatype", [Datatype.FLOAT32, Datatype.FLOAT64])
@given(word_order=ORDERS, byte_order=ORDERS)
def test_nan_round_trips_as_nan_in_floats(datatype: Datatype, word_order: Order, byte_order: Order) -> None:
    words = encode_raw(math.nan, datatype, word_order=word_order, byte_order=byte_order)
    decoded = decode_raw(words, datatype, word_order=word_order, byte_order=byte_order)
    assert isinstance(decoded, float)
    assert math.isnan(decoded)


@given(bit=st.integers(0, 15), register=st.integers(0, 0xFFFF), value=st.booleans())
def test_a_bit_in_a_register_reads_that_bit_and_its_mask_write_touches_only_that_bit(
    bit: int, register: int, value: bool
) -> None:
    tag = codec(Datatype.BOOL, bit=bit)
    assert tag.decode([register]) == bool(register >> bit & 1)
    mask = tag.encode(value)
    assert isinstance(mask, BitMask)
    # Modbus function 22: result = (current AND and_mask) OR (or_mask AND NOT and_mask)
    after = (register & mask.and_mask) | (mask.or_mask & ~mask.and_mask & 0xFFFF)
    assert tag.decode([after]) is value
    assert after & ~(1 << bit) == register & ~(1 << bit)


@given(on=st.booleans())
def test_a_coil_encodes_as_a_coil_and_decodes_from_one_bit(on: bool) -> None:
    tag = TagCodec(name="c", table=ModbusTable.COIL, address=3, datatype=Datatype.BOOL)
    assert tag.encode(on) == Coil(on)
    assert tag.decode([on]) is on


# ---------------------------------------------------------------------------------------- known vectors


@pytest.mark.parametrize(
    ("word_order", "byte_order", "words"),
    [
        (Order.BIG, Order.BIG, [0x3F80, 0x0000]),
        (Order.LITTLE, Order.BIG, [0x0000, 0x3F80]),
        (Order.BIG, Order.LITTLE, [0x803F, 0x0000]),
        (Order.LITTLE, Order.LITTLE, [0x0000, 0x803F]),
    ],
)
def test_float32_one_is_laid_out_as_each_order_says(
    word_order: Order, byte_order: Order, words: list[int]
) -> None:
    assert encode_raw(1.0, Datatype.FLOAT32, word_order=word_order, byte_order=byte_order) == words


def test_uint32_puts_the_most_significant_word_first_by_default() -> None:
    assert encode_raw(0x12345678, Datatype.UINT32) == [0x1234, 0x5678]
    assert encode_raw(0x12345678, Datatype.UINT32, word_order=Order.LITTLE) == [0x5678, 0x1234]


def test_int16_is_twos_complement_and_byte_order_swaps_within_the_register() -> None:
    assert encode_raw(-2, Datatype.INT16) == [0xFFFE]
    assert encode_raw(0x0102, Datatype.INT16, byte_order=Order.LITTLE) == [0x0201]


def test_a_string_is_padded_with_nul_and_read_back_without_it() -> None:
    tag = codec(Datatype.STRING, length=3)
    assert tag.encode("ABC") == Registers((0x4142, 0x4300, 0x0000))
    assert tag.decode([0x4142, 0x4300, 0x0000]) == "ABC"


# ------------------------------------------------------------------------------------------ scale/offset


@given(
    raw=st.integers(-(2**15), 2**15 - 1),
    scale=st.sampled_from([0.1, 0.01, 2.0, -0.5, 10.0]),
    offset=st.sampled_from([0.0, -40.0, 273.15, 1.5]),
)
def test_a_scaled_int_round_trips_to_the_same_raw_register(raw: int, scale: float, offset: float) -> None:
    tag = codec(Datatype.INT16, scale=scale, offset=offset)
    words = encode_raw(raw, Datatype.INT16)
    engineering = tag.decode(words)
    assert engineering == pytest.approx(raw * scale + offset)
    assert tag.encode(engineering) == Registers(tuple(words))


@given(
    value=st.floats(-1e6, 1e6, allow_nan=False),
    scale=st.floats(0.001, 1000.0),
    offset=st.floats(-1000.0, 1000.0),
    word_order=ORDERS,
    byte_order=ORDERS,
)
def test_a_scaled_float64_round_trips_in_engineering_units(
    value: float, scale: float, offset: float, word_order: Order, byte_order: Order
) -> None:
    tag = codec(Datatype.FLOAT64, scale=scale, offset=offset, word_order=word_order, byte_order=byte_order)
    encoded = tag.encode(value)
    assert isinstance(encoded, Registers)
    assert tag.decode(encoded.words) == pytest.approx(value, rel=1e-9, abs=1e-6)


def test_engineering_value_is_raw_times_scale_plus_offset() -> None:
    tag = codec(Datatype.UINT16, scale=0.1, offset=-40.0)
    assert tag.decode([650]) == pytest.approx(25.0)
    assert tag.encode(25.0) == Registers((650,))


def test_an_unscaled_int_stays_an_int() -> None:
    value = codec(Datatype.UINT16).decode([7])
    assert value == 7
    assert isinstance(value, int)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (Datatype.INT16, 32768),
        (Datatype.INT16, -32769),
        (Datatype.UINT16, -1),
        (Datatype.UINT16, 65536),
        (Datatype.INT32, 2**31),
        (Datatype.UINT32, 2**32),
        (Datatype.FLOAT32, 1e39),
        (Datatype.FLOAT64, 10**400),
    ],
)
def test_a_value_out_of_range_is_refused_with_the_range(datatype: Datatype, value: float) -> None:
    with pytest.raises(CodecError, match="out of range"):
        codec(datatype).encode(value)


@pytest.mark.parametrize("datatype", [Datatype.INT16, Datatype.UINT16, Datatype.INT32, Datatype.UINT32])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_into_an_int_is_refused(datatype: Datatype, value: float) -> None:
    with pytest.raises(CodecError, match="cannot be written"):
        codec(datatype).encode(value)
    with pytest.raises(CodecError):
        encode_raw(value, datatype)


@pytest.mark.parametrize("datatype", [Datatype.FLOAT32, Datatype.FLOAT64])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_never_written_to_a_float_tag(datatype: Datatype, value: float) -> None:
    with pytest.raises(CodecError, match="cannot be written"):
        codec(datatype).encode(value)


def test_a_fraction_into_an_unscaled_int_is_refused() -> None:
    with pytest.raises(CodecError, match="whole number"):
        codec(Datatype.UINT16).encode(2.5)


def test_a_scaled_int_whose_raw_value_overflows_is_refused() -> None:
    with pytest.raises(CodecError, match="out of range"):
        codec(Datatype.INT16, scale=0.001).encode(40.0)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [(Datatype.BOOL, 1), (Datatype.UINT16, True), (Datatype.UINT16, "3"), (Datatype.STRING, 3)],
)
def test_a_value_of_the_wrong_kind_is_refused(datatype: Datatype, value: object) -> None:
    with pytest.raises(CodecError, match="takes"):
        codec(datatype, length=2 if datatype is Datatype.STRING else None).encode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_decoding_the_wrong_number_of_registers_is_refused(datatype: Datatype) -> None:
    too_many = [0] * (register_count(datatype) + 1)
    with pytest.raises(CodecError, match="register"):
        codec(datatype).decode(too_many)
    with pytest.raises(CodecError, match="register"):
        decode_raw(too_many, datatype)


def test_a_register_outside_16_bits_is_refused() -> None:
    with pytest.raises(CodecError, match="16-bit"):
        decode_raw([70000], Datatype.UINT16)


@pytest.mark.parametrize("text", ["ABCDE", "é", "a\x00b"])
def test_text_that_does_not_fit_or_is_not_ascii_is_refused(text: str) -> None:
    with pytest.raises(CodecError):
        codec(Datatype.STRING, length=2).encode(text)


def test_non_ascii_registers_do_not_decode_into_text() -> None:
    with pytest.raises(CodecError, match="non-ASCII"):
        codec(Datatype.STRING, length=1).decode([0xC3A9])


def test_an_input_register_cannot_be_encoded_for_writing() -> None:
    tag = TagCodec(name="r", table=ModbusTable.INPUT_REGISTER, address=0, datatype=Datatype.UINT16)
    with pytest.raises(CodecError, match="cannot be written"):
        tag.encode(1)


def test_a_tag_running_past_the_last_address_is_refused() -> None:
    with pytest.raises(CodecError, match="past 65535"):
        codec(Datatype.FLOAT32, address=65535)


def test_a_codec_is_built_from_a_configured_tag() -> None:
    config = TagConfig.model_validate(
        {"table": "holding_register", "address": 4, "datatype": "float32", "word_order": "little", "scale": 2}
    )
    tag = TagCodec.from_config("width_sp", config)
    assert (tag.name, tag.address, tag.width, tag.word_order, tag.scale) == (
        "width_sp",
        4,
        2,
        Order.LITTLE,
        2.0,
    )


# ------------------------------------------------------------------------------------------- coalescing

TABLES = st.sampled_from(list(ModbusTable))


@st.composite
def tag_sets(draw: st.DrawFn) -> list[TagCodec]:
    count = draw(st.integers(1, 60))
    tags = []
    for i in range(count):
        table = draw(TABLES)
        if table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT):
            tags.append(TagCodec(f"t{i}", table, draw(st.integers(0, 65535)), Datatype.BOOL))
            continue
        datatype = draw(st.sampled_from([*NUMERIC, Datatype.STRING, Datatype.BOOL]))
        length = draw(st.integers(1, 123)) if datatype is Datatype.STRING else None
        width = register_count(datatype, length)
        address = draw(st.one_of(st.integers(0, 300), st.integers(0, 65536 - width)))
        tags.append(TagCodec(f"t{i}", table, min(address, 65536 - width), datatype, length=length))
    return tags


@given(tags=tag_sets(), gap_r=st.integers(0, 20), gap_b=st.integers(0, 40))
def test_the_coalescer_covers_every_tag_exactly_once_within_the_limits(
    tags: list[TagCodec], gap_r: int, gap_b: int
) -> None:
    blocks = plan_reads(tags, max_gap_registers=gap_r, max_gap_bits=gap_b)
    seen = [tag.name for block in blocks for tag in block.tags]
    assert sorted(seen) == sorted(t.name for t in tags)
    assert len(blocks) <= len(tags)
    for block in blocks:
        limit = MAX_READ_BITS if block.bits else MAX_READ_REGISTERS
        assert 1 <= block.count <= limit
        for tag in block.tags:
            assert tag.table is block.table
            assert block.start <= tag.address and tag.end <= block.start + block.count


@given(tags=tag_sets())
def test_blocks_of_one_table_overlap_only_where_their_tags_overlap(tags: list[TagCodec]) -> None:
    blocks = plan_reads(tags)
    for table in ModbusTable:
        ours = [b for b in blocks if b.table is table]
        assert [b.start for b in ours] == sorted({b.start for b in ours})
        for earlier, later in itertools.pairwise(ours):
            if earlier.start + earlier.count > later.start:
                assert any(t.address < earlier.start + earlier.count for t in later.tags)


@given(tags=tag_sets())
def test_slicing_a_block_reply_gives_each_tag_its_own_registers(tags: list[TagCodec]) -> None:
    for block in plan_reads(tags):
        reply = [bool(i % 2) for i in range(block.count)] if block.bits else list(range(block.count))
        for tag, part in block.slice(reply):
            assert list(part) == reply[tag.address - block.start : tag.end - block.start]
            assert len(part) == tag.width


def test_contiguous_and_near_tags_share_one_read_and_far_ones_do_not() -> None:
    tags = [
        codec(Datatype.FLOAT32, address=0),
        codec(Datatype.FLOAT32, address=2),
        codec(Datatype.UINT16, address=12),  # a gap of 8 unused registers is bridged
        codec(Datatype.UINT16, address=22),  # a gap of 9 is not
    ]
    tags = [TagCodec(f"t{i}", t.table, t.address, t.datatype) for i, t in enumerate(tags)]
    blocks = plan_reads(tags)
    assert [(b.start, b.count, [t.name for t in b.tags]) for b in blocks] == [
        (0, 13, ["t0", "t1", "t2"]),
        (22, 1, ["t3"]),
    ]


def test_a_read_never_exceeds_125_registers() -> None:
    tags = [TagCodec(f"t{i}", HR, i * 2, Datatype.FLOAT32) for i in range(100)]
    blocks = plan_reads(tags)
    assert [b.count for b in blocks] == [124, 76]


def test_tables_are_never_mixed_in_one_read() -> None:
    tags = [
        TagCodec("a", ModbusTable.COIL, 0, Datatype.BOOL),
        TagCodec("b", ModbusTable.DISCRETE_INPUT, 0, Datatype.BOOL),
        TagCodec("c", ModbusTable.DISCRETE_INPUT, 1, Datatype.BOOL),
    ]
    assert [(b.table, b.count) for b in plan_reads(tags)] == [
        (ModbusTable.COIL, 1),
        (ModbusTable.DISCRETE_INPUT, 2),
    ]


def test_a_register_reply_of_the_wrong_size_is_not_sliced() -> None:
    block = ReadBlock(HR, 0, 4, (codec(Datatype.FLOAT64, address=0),))
    with pytest.raises(CodecError, match="asked for 4 registers, got 3"):
        block.slice([0, 0, 0])


def test_a_bit_reply_may_carry_byte_padding_but_not_less() -> None:
    tag = TagCodec("a", ModbusTable.COIL, 0, Datatype.BOOL)
    block = ReadBlock(ModbusTable.COIL, 0, 3, (tag,))
    assert block.decode([True, False, False, False, False, False, False, False]) == {"a": True}
    with pytest.raises(CodecError):
        block.slice([True, False])


def test_one_undecodable_tag_does_not_spoil_the_rest_of_its_block() -> None:
    text = TagCodec("text", HR, 0, Datatype.STRING, length=1)
    number = TagCodec("number", HR, 1, Datatype.UINT16)
    (block,) = plan_reads([text, number])
    decoded = block.decode([0xC3A9, 42])
    assert isinstance(decoded["text"], CodecError)
    assert decoded["number"] == 42


def test_float32_matches_struct_for_a_known_value() -> None:
    (hi, lo) = encode_raw(420.5, Datatype.FLOAT32)
    assert struct.unpack(">f", bytes([hi >> 8, hi & 0xFF, lo >> 8, lo & 0xFF]))[0] == 420.5
