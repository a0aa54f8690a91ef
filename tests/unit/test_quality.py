"""Quality verdicts: inside limits passes, outside fails, anything untrusted is INVALID and never passes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.core.events import Measurement, Verdict
from cellctl.core.quality import judge, part_verdict
from cellctl.core.tags import Quality, Reading

NOW = 1000.0
MAX_AGE = 5.0


@dataclass(frozen=True)
class Limits:
    nominal: float
    lsl: float
    usl: float
    units: str = "mm"


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    a, b = draw(finite), draw(finite)
    if a == b:
        b = a + 1.0
    lsl, usl = min(a, b), max(a, b)
    return Limits(nominal=(lsl + usl) / 2, lsl=lsl, usl=usl)


fresh_age = st.floats(min_value=0.0, max_value=MAX_AGE)


def good(value: float | int | bool | str | None, age: float = 0.0) -> Reading:
    return Reading(value=value, timestamp=NOW - age, quality=Quality.GOOD)


@given(limits(), st.data(), fresh_age)
def test_a_good_fresh_value_inside_the_limits_passes(lim: Limits, data: st.DataObject, age: float) -> None:
    value = data.draw(st.floats(min_value=lim.lsl, max_value=lim.usl))
    m = judge("width", lim, good(value, age), now=NOW, max_age=MAX_AGE)
    assert m.verdict is Verdict.PASS
    assert m.value == value
    assert (m.lsl, m.usl, m.nominal, m.units) == (lim.lsl, lim.usl, lim.nominal, "mm")


@given(limits())
def test_the_limits_themselves_pass(lim: Limits) -> None:
    for value in (lim.lsl, lim.usl):
        assert judge("w", lim, good(value), now=NOW, max_age=MAX_AGE).verdict is Verdict.PASS


@given(limits(), st.data(), fresh_age)
def test_a_good_fresh_value_outside_the_limits_fails(lim: Limits, data: st.DataObject, age: float) -> None:
    below = st.floats(max_value=lim.lsl, exclude_max=True, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=lim.usl, exclude_min=True, allow_nan=False, allow_infinity=False)
    value = data.draw(below | above)
    m = judge("width", lim, good(value, age), now=NOW, max_age=MAX_AGE)
    assert m.verdict is Verdict.FAIL
    assert m.reason


@given(limits(), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_nan_and_infinity_are_invalid(lim: Limits, value: float) -> None:
    m = judge("width", lim, good(value), now=NOW, max_age=MAX_AGE)
    assert m.verdict is Verdict.INVALID
    assert m.value is None  # JSON has no NaN: the reason carries it
    assert "finite" in m.reason


@given(limits())
def test_no_value_is_invalid(lim: Limits) -> None:
    assert judge("width", lim, good(None), now=NOW, max_age=MAX_AGE).verdict is Verdict.INVALID


@given(limits(), st.sampled_from([True, False, "420.0"]))
def test_a_value_that_is_not_a_number_is_invalid(lim: Limits, value: bool | str) -> None:
    assert judge("width", lim, good(value), now=NOW, max_age=MAX_AGE).verdict is Verdict.INVALID


@given(limits(), st.data(), st.sampled_from([Quality.BAD, Quality.UNCERTAIN]))
def test_a_bad_or_uncertain_reading_is_invalid_even_inside_the_limits(
    lim: Limits, data: st.DataObject, quality: Quality
) -> None:
    value = data.draw(st.floats(min_value=lim.lsl, max_value=lim.usl))
    reading = Reading(value=value, timestamp=NOW, quality=quality, reason="link down")
    m = judge("width", lim, reading, now=NOW, max_age=MAX_AGE)
    assert m.verdict is Verdict.INVALID
    assert m.quality == quality.value
    assert "link down" in m.reason


@given(limits(), st.data(), st.floats(min_value=MAX_AGE + 1e-3, max_value=1e6))
def test_a_stale_reading_is_invalid_even_inside_the_limits(
    lim: Limits, data: st.DataObject, age: float
) -> None:
    value = data.draw(st.floats(min_value=lim.lsl, max_value=lim.usl))
    m = judge("width", lim, good(value, age), now=NOW, max_age=MAX_AGE)
    assert m.verdict is Verdict.INVALID
    assert "old" in m.reason


@given(
    limits(),
    st.one_of(finite, st.sampled_from([math.nan, math.inf, None, True])),
    st.sampled_from(list(Quality)),
    st.floats(min_value=0.0, max_value=100.0),
)
def test_an_untrusted_reading_never_passes(
    lim: Limits, value: float | bool | None, quality: Quality, age: float
) -> None:
    m = judge(
        "width", lim, Reading(value=value, timestamp=NOW - age, quality=quality), now=NOW, max_age=MAX_AGE
    )
    untrusted = (
        quality is not Quality.GOOD
        or value is None
        or isinstance(value, bool)
        or not math.isfinite(value)
        or age > MAX_AGE
    )
    # Ages within a rounding error of MAX_AGE may go either way; only clear cases are asserted.
    if abs(age - MAX_AGE) < 1e-9:
        return
    if untrusted:
        assert m.verdict is Verdict.INVALID
    else:
        assert m.verdict in (Verdict.PASS, Verdict.FAIL)


def test_a_negative_max_age_is_refused() -> None:
    with pytest.raises(ValueError, match="max_age"):
        judge("w", Limits(1, 0, 2), good(1.0), now=NOW, max_age=-1)


def _m(verdict: Verdict) -> Measurement:
    return Measurement(
        characteristic="c", value=None, quality="good", units="", nominal=0, lsl=-1, usl=1, verdict=verdict
    )


@given(st.lists(st.sampled_from(list(Verdict)), max_size=8))
def test_part_verdict_is_invalid_if_any_invalid_else_fail_if_any_fail(verdicts: list[Verdict]) -> None:
    result = part_verdict([_m(v) for v in verdicts])
    if Verdict.INVALID in verdicts:
        assert result is Verdict.INVALID
    elif Verdict.FAIL in verdicts:
        assert result is Verdict.FAIL
    else:
        assert result is Verdict.PASS
