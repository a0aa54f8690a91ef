"""Interlock conditions: parsed without eval, judged on one Reading, unknown when the reading cannot tell."""

from __future__ import annotations

import math

import pytest

from cellctl.core.conditions import Condition
from cellctl.core.tags import Quality, Reading, TagValue


def good(value: TagValue) -> Reading:
    return Reading(value=value, timestamp=0.0, quality=Quality.GOOD)


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("safety.guard_closed == false", False, True),
        ("safety.guard_closed == false", True, False),
        ("safety.air_bar < 5.5", 5.4, True),
        ("safety.air_bar < 5.5", 5.5, False),
        ("safety.air_bar >= 5.5", 6, True),
        ("robot1.fault_code != 0", 3, True),
        ("robot1.fault_code != 0", 0, False),
        ("robot1.mode == 'auto'", "auto", True),
        ('robot1.mode != "auto"', "auto", False),
    ],
)
def test_a_condition_compares_a_good_reading_with_its_literal(
    text: str, value: TagValue, expected: bool
) -> None:
    assert Condition.parse(text).judge(good(value)) is expected


@pytest.mark.parametrize(
    "reading",
    [
        Reading.bad(0.0, "link down"),
        Reading(value=6.0, timestamp=0.0, quality=Quality.UNCERTAIN),
        good(math.nan),
        good(True),  # a bool is not a number: a wrongly typed tag is unknown, not "1 < 5.5"
    ],
)
def test_a_reading_that_cannot_tell_is_unknown(reading: Reading) -> None:
    assert Condition.parse("safety.air_bar < 5.5").judge(reading) is None


def test_a_bool_condition_on_a_number_is_unknown() -> None:
    assert Condition.parse("safety.guard_closed == true").judge(good(1)) is None


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("safety.guard_closed = false", "is not a condition"),
        ("guard_closed == false", "is not a condition"),
        ("safety.air_bar < __import__('os')", "is not a literal"),
        ("safety.air_bar < true", "compares numbers"),
        ("safety.air_bar < nan", "finite"),
        ("safety.air_bar <", "is not a condition"),
    ],
)
def test_a_malformed_condition_is_refused_saying_why(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Condition.parse(text)


def test_a_condition_prints_as_written() -> None:
    assert str(Condition.parse("  safety.guard_closed==false ")) == "safety.guard_closed == false"
