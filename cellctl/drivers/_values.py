"""Pure value rules shared by the drivers: datatype ranges, type checks and engineering scaling."""

from __future__ import annotations

import math

from cellctl.core.tags import TagValue
from cellctl.schema.cell import FLOAT_TYPES, INT_TYPES, Datatype


class CodecError(ValueError):
    """A value cannot be encoded for its tag, or raw data cannot be decoded; the message says why."""


INT_RANGES: dict[Datatype, tuple[int, int]] = {
    Datatype.INT16: (-(2**15), 2**15 - 1),
    Datatype.UINT16: (0, 2**16 - 1),
    Datatype.INT32: (-(2**31), 2**31 - 1),
    Datatype.UINT32: (0, 2**32 - 1),
}
"""Inclusive raw range of each integer datatype."""

FLOAT32_MAX = 3.4028234663852886e38
"""Largest finite float32; anything beyond overflows to infinity on the wire."""


def is_identity(scale: float, offset: float) -> bool:
    """True when engineering value and raw value are the same number."""
    return scale == 1.0 and offset == 0.0


def check_int_range(raw: int, datatype: Datatype) -> int:
    """Return ``raw`` when it fits ``datatype``; CodecError naming the range otherwise."""
    low, high = INT_RANGES[datatype]
    if not low <= raw <= high:
        raise CodecError(f"{raw} is out of range for {datatype.value} ({low}..{high})")
    return raw


def to_raw(value: TagValue, datatype: Datatype, scale: float = 1.0, offset: float = 0.0) -> TagValue:
    """Convert an engineering value to the raw value the wire carries (raw = (value - offset) / scale).

    Checks the Python type against the datatype and the raw range, and refuses NaN and infinities (a value
    to write must be a real number); bools and strings are not scaled.
    """
    if datatype is Datatype.BOOL:
        if not isinstance(value, bool):
            raise CodecError(f"a bool tag takes True or False, not {value!r}")
        return value
    if datatype is Datatype.STRING:
        if not isinstance(value, str):
            raise CodecError(f"a string tag takes text, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"a {datatype.value} tag takes a number, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        # NaN or infinity as a setpoint is a bug upstream; a device must never be sent one.
        raise CodecError(f"{value} cannot be written to a {datatype.value} tag")
    try:
        return _numeric_to_raw(value, datatype, scale, offset)
    except OverflowError as exc:
        raise CodecError(f"{value} is out of range for {datatype.value}") from exc


def _numeric_to_raw(value: int | float, datatype: Datatype, scale: float, offset: float) -> int | float:
    if datatype in INT_TYPES:
        if is_identity(scale, offset):
            if isinstance(value, float) and not value.is_integer():
                raise CodecError(f"{value} is not a whole number, as a {datatype.value} tag needs")
            return check_int_range(int(value), datatype)
        raw = (value - offset) / scale
        if not math.isfinite(raw):
            raise CodecError(f"{value} scales to {raw}, which a {datatype.value} tag cannot hold")
        return check_int_range(round(raw), datatype)
    assert datatype in FLOAT_TYPES
    raw_float = float(value) if is_identity(scale, offset) else (value - offset) / scale
    if not math.isfinite(raw_float):
        raise CodecError(f"{value} scales to {raw_float}, which a {datatype.value} tag cannot hold")
    if datatype is Datatype.FLOAT32 and abs(raw_float) > FLOAT32_MAX:
        raise CodecError(f"{raw_float} is out of range for float32 (|x| <= {FLOAT32_MAX:.7g})")
    return raw_float


def to_engineering(raw: TagValue, datatype: Datatype, scale: float = 1.0, offset: float = 0.0) -> TagValue:
    """Convert a raw value to engineering units (value = raw * scale + offset).

    Integers stay integers when the scaling is the identity; bools and strings are never scaled.
    """
    if datatype in (Datatype.BOOL, Datatype.STRING) or is_identity(scale, offset):
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise CodecError(f"a {datatype.value} value must be a number, not {raw!r}")
    return raw * scale + offset


def coerce_received(value: object, datatype: Datatype) -> TagValue:
    """Check a value a device sent against the tag's datatype and return it as a TagValue.

    Raises CodecError when the device sent another kind of value than the tag declares.
    """
    if datatype is Datatype.BOOL:
        if isinstance(value, bool):
            return value
    elif datatype is Datatype.STRING:
        if isinstance(value, str):
            return value
    elif datatype in INT_TYPES:
        if isinstance(value, int) and not isinstance(value, bool):
            return check_int_range(value, datatype)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise CodecError(f"device sent {type(value).__name__} {value!r} for a {datatype.value} tag")
