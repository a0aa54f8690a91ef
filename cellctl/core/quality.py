"""Quality verdicts: a measured value against its spec limits, and a part's verdict from its measurements.

Pure functions. A value that cannot be trusted (not GOOD, not a finite number, too old) is INVALID, which is
never a pass: an unknown measurement must not ship a part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from cellctl.core.events import Measurement, Verdict
from cellctl.core.tags import Quality, Reading


class SpecLimits(Protocol):
    """What a verdict needs from a characteristic (schema's ``Characteristic`` fits, as does any object)."""

    @property
    def nominal(self) -> float:
        """Target value."""
        ...

    @property
    def lsl(self) -> float:
        """Lower spec limit (inclusive)."""
        ...

    @property
    def usl(self) -> float:
        """Upper spec limit (inclusive)."""
        ...

    @property
    def units(self) -> str:
        """Units of the value."""
        ...


def _invalid(reason: str) -> tuple[Verdict, str]:
    return Verdict.INVALID, reason


def _classify(limits: SpecLimits, reading: Reading, now: float, max_age: float) -> tuple[Verdict, str]:
    if reading.quality is not Quality.GOOD:
        detail = f": {reading.reason}" if reading.reason else ""
        return _invalid(f"reading quality is {reading.quality.value}{detail}")
    value = reading.value
    if value is None:
        return _invalid("no value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _invalid(f"value {value!r} is not a number")
    if not math.isfinite(value):
        return _invalid(f"value {value!r} is not finite")
    age = now - reading.timestamp
    if age > max_age:
        return _invalid(f"reading is {age:.3g} s old (max {max_age:g} s)")
    if limits.lsl <= value <= limits.usl:
        return Verdict.PASS, ""
    side = "below lsl" if value < limits.lsl else "above usl"
    bound = limits.lsl if value < limits.lsl else limits.usl
    return Verdict.FAIL, f"{value:g} is {side} {bound:g}"


def judge(
    characteristic: str, limits: SpecLimits, reading: Reading, *, now: float, max_age: float
) -> Measurement:
    """One characteristic's Measurement: INVALID if untrusted, FAIL outside [lsl, usl], else PASS.

    ``now`` is on the clock of ``reading.timestamp``; a reading older than ``max_age`` seconds is stale.
    """
    if not max_age >= 0:
        raise ValueError(f"max_age must be a non-negative number of seconds, not {max_age!r}")
    verdict, reason = _classify(limits, reading, now, max_age)
    value = reading.value
    # Only finite numbers are kept: the value goes out as JSON, which has no NaN or Infinity.
    kept = (
        float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )
    return Measurement(
        characteristic=characteristic,
        value=kept,
        quality=reading.quality.value,
        units=limits.units,
        nominal=limits.nominal,
        lsl=limits.lsl,
        usl=limits.usl,
        verdict=verdict,
        reason=reason,
    )


def part_verdict(measurements: Iterable[Measurement]) -> Verdict:
    """INVALID if any measurement is invalid, else FAIL if any failed, else PASS (also with no checks)."""
    verdicts = {m.verdict for m in measurements}
    if Verdict.INVALID in verdicts:
        return Verdict.INVALID
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    return Verdict.PASS
