"""SPC: each Western Electric rule fires exactly on its pattern; limits from the baseline; Cp/Cpk by hand.

Sequences are built in sigmas from the centre, in zones kept clear of the 1/2/3 sigma boundaries so rounding
never decides a test: quiet (0.1..0.9), beyond 1 (1.1..1.9), beyond 2 (2.1..2.9), beyond 3 (3.1..6).
The background is quiet with alternating sides, which completes no rule.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.core.spc import (
    ALL_RULES,
    D2_MR,
    D4_MR,
    SUBGROUP_CONSTANTS,
    ControlChart,
    Rule,
    Spec,
    capability,
    imr_limits,
    rules_completed,
    xbar_r_limits,
)

QUIET = st.floats(min_value=0.1, max_value=0.9)
BEYOND_1 = st.floats(min_value=1.1, max_value=1.9)
BEYOND_2 = st.floats(min_value=2.1, max_value=2.9)
BEYOND_3 = st.floats(min_value=3.1, max_value=6.0)
SIDE = st.sampled_from([1, -1])
SPEC = Spec(lsl=-100.0, usl=100.0, nominal=0.0)


def fired(zs: list[float]) -> set[tuple[int, Rule]]:
    """(index, rule) for every rule each point completes, fed one point at a time as a chart does."""
    out: set[tuple[int, Rule]] = set()
    for i in range(len(zs)):
        out.update((i, r) for r in rules_completed(zs[max(0, i - 7) : i + 1]))
    return out


@st.composite
def background(draw: st.DrawFn, min_size: int = 12, max_size: int = 40) -> list[float]:
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    first = draw(SIDE)
    return [first * (-1) ** i * draw(QUIET) for i in range(size)]


@given(background())
def test_quiet_alternating_background_completes_no_rule(zs: list[float]) -> None:
    assert fired(zs) == set()


# --- rule 1: one point beyond 3 sigma -------------------------------------------------------------------


@given(background(), st.data())
def test_rule1_fires_exactly_at_the_point_beyond_3_sigma(zs: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=len(zs) - 1))
    zs[k] = data.draw(SIDE) * data.draw(BEYOND_3)
    assert fired(zs) == {(k, Rule.BEYOND_3_SIGMA)}


@given(st.lists(st.floats(min_value=-2.9, max_value=2.9), min_size=1, max_size=60))
def test_rule1_never_fires_within_3_sigma(zs: list[float]) -> None:
    assert all(rule is not Rule.BEYOND_3_SIGMA for _, rule in fired(zs))


# --- rule 2: two of three beyond 2 sigma, same side -----------------------------------------------------


@given(background(), st.data())
def test_rule2_fires_exactly_at_the_second_point_beyond_2_sigma(zs: list[float], data: st.DataObject) -> None:
    gap = data.draw(st.sampled_from([1, 2]))
    k = data.draw(st.integers(min_value=0, max_value=len(zs) - 1 - gap))
    side = data.draw(SIDE)
    zs[k] = side * data.draw(BEYOND_2)
    zs[k + gap] = side * data.draw(BEYOND_2)
    assert fired(zs) == {(k + gap, Rule.TWO_OF_THREE_BEYOND_2_SIGMA)}


@given(background(), st.data())
def test_rule2_never_fires_on_points_beyond_2_sigma_three_apart(zs: list[float], data: st.DataObject) -> None:
    start = data.draw(st.integers(min_value=0, max_value=2))
    for k in range(start, len(zs), 3):
        zs[k] = data.draw(SIDE) * data.draw(BEYOND_2)
    assert all(rule is not Rule.TWO_OF_THREE_BEYOND_2_SIGMA for _, rule in fired(zs))


@given(background(), st.data())
def test_rule2_never_fires_on_consecutive_points_beyond_2_sigma_on_opposite_sides(
    zs: list[float], data: st.DataObject
) -> None:
    k = data.draw(st.integers(min_value=0, max_value=len(zs) - 2))
    side = data.draw(SIDE)
    zs[k], zs[k + 1] = side * data.draw(BEYOND_2), -side * data.draw(BEYOND_2)
    assert all(rule is not Rule.TWO_OF_THREE_BEYOND_2_SIGMA for _, rule in fired(zs))


# --- rule 3: four of five beyond 1 sigma, same side -----------------------------------------------------


@given(background(), st.data())
def test_rule3_fires_exactly_at_the_fourth_point_beyond_1_sigma(zs: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=len(zs) - 5))
    side = data.draw(SIDE)
    # Four of the five positions k..k+4; the odd one out (if inside the span) is quiet on the other side.
    odd = data.draw(st.integers(min_value=1, max_value=4))
    span = [k + j for j in range(5) if j != odd] if odd < 4 else [k + j for j in range(4)]
    for i in span:
        zs[i] = side * data.draw(BEYOND_1)
    if odd < 4:
        zs[k + odd] = -side * data.draw(QUIET)
    assert fired(zs) == {(max(span), Rule.FOUR_OF_FIVE_BEYOND_1_SIGMA)}


@given(background(), st.data())
def test_rule3_never_fires_with_three_of_every_five_beyond_1_sigma(
    zs: list[float], data: st.DataObject
) -> None:
    side = data.draw(SIDE)
    for i in range(len(zs)):
        if i % 5 < 3:
            zs[i] = side * data.draw(BEYOND_1)
        else:
            zs[i] = (-side if i % 5 == 3 else side) * data.draw(QUIET)
    assert all(rule is not Rule.FOUR_OF_FIVE_BEYOND_1_SIGMA for _, rule in fired(zs))


# --- rule 4: eight in a row on one side -----------------------------------------------------------------


@given(background(min_size=20), st.data())
def test_rule4_fires_at_every_point_from_the_eighth_of_a_run(zs: list[float], data: st.DataObject) -> None:
    length = data.draw(st.integers(min_value=8, max_value=len(zs) - 2))
    k = data.draw(st.integers(min_value=1, max_value=len(zs) - 1 - length))
    side = data.draw(SIDE)
    zs[k - 1] = -side * data.draw(QUIET)
    for i in range(k, k + length):
        zs[i] = side * data.draw(QUIET)
    zs[k + length] = -side * data.draw(QUIET)
    expected = {(i, Rule.EIGHT_ON_ONE_SIDE) for i in range(k + 7, k + length)}
    assert fired(zs) == expected


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=12), SIDE, st.data())
def test_rule4_never_fires_on_runs_of_seven_or_fewer(
    runs: list[int], first: int, data: st.DataObject
) -> None:
    zs = [first * (-1) ** n * data.draw(QUIET) for n, length in enumerate(runs) for _ in range(length)]
    assert fired(zs) == set()


def test_rule4_a_point_on_the_centre_line_breaks_the_run() -> None:
    zs = [0.5] * 7 + [0.0] + [0.5] * 7
    assert fired(zs) == set()
    assert fired([0.5] * 8) == {(7, Rule.EIGHT_ON_ONE_SIDE)}


# --- the streaming rules against the textbook definitions -----------------------------------------------

ZONED = st.one_of(QUIET, BEYOND_1, BEYOND_2, BEYOND_3).flatmap(lambda m: SIDE.map(lambda s: s * m))


def reference(zs: list[float], i: int, rule: Rule) -> bool:
    """Rule ``rule`` holds for a window ending at ``i`` that point ``i`` belongs to (textbook wording)."""
    z = zs[i]
    if rule is Rule.BEYOND_3_SIGMA:
        return abs(z) > 3
    if rule is Rule.EIGHT_ON_ONE_SIDE:
        window = zs[i - 7 : i + 1] if i >= 7 else []
        return bool(window) and (all(v > 0 for v in window) or all(v < 0 for v in window))
    k, size, need = (2, 3, 2) if rule is Rule.TWO_OF_THREE_BEYOND_2_SIGMA else (1, 5, 4)
    window = zs[max(0, i - size + 1) : i + 1]
    up = [v > k for v in window]
    down = [v < -k for v in window]
    return (z > k and sum(up) >= need) or (z < -k and sum(down) >= need)


@given(st.lists(ZONED, min_size=1, max_size=60))
def test_streaming_rules_match_the_textbook_definitions(zs: list[float]) -> None:
    expected = {(i, r) for i in range(len(zs)) for r in ALL_RULES if reference(zs, i, r)}
    assert fired(zs) == expected


@given(st.lists(ZONED, min_size=1, max_size=30), st.sets(st.sampled_from(ALL_RULES)))
def test_only_the_configured_rules_are_checked(zs: list[float], rules: set[Rule]) -> None:
    assert set(rules_completed(zs[-8:], rules)) == set(rules_completed(zs[-8:])) & rules


# --- limits from a known baseline -----------------------------------------------------------------------


def test_imr_limits_from_a_hand_computed_baseline() -> None:
    limits = imr_limits([10.0, 12.0, 11.0, 13.0, 9.0])
    # mean 11; moving ranges 2, 1, 2, 4: MRbar 2.25; sigma 2.25 / 1.128
    sigma = 2.25 / 1.128
    assert limits.centre == pytest.approx(11.0)
    assert limits.sigma == pytest.approx(sigma)
    assert limits.ucl == pytest.approx(11.0 + 3 * sigma)
    assert limits.lcl == pytest.approx(11.0 - 3 * sigma)
    assert limits.r_centre == pytest.approx(2.25)
    assert limits.r_ucl == pytest.approx(3.267 * 2.25)
    assert limits.r_lcl == 0.0


@given(st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=2, max_size=50))
def test_imr_limits_are_mean_plus_minus_three_mrbar_over_d2(values: list[float]) -> None:
    limits = imr_limits(values)
    mrbar = sum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1)
    mean = sum(values) / len(values)
    assert limits.centre == pytest.approx(mean, abs=1e-9)
    assert limits.ucl - limits.centre == pytest.approx(3 * mrbar / D2_MR, abs=1e-9)
    assert limits.centre - limits.lcl == pytest.approx(3 * mrbar / D2_MR, abs=1e-9)
    assert limits.r_ucl == pytest.approx(D4_MR * mrbar, abs=1e-9)


def test_xbar_r_limits_from_hand_computed_subgroups() -> None:
    groups = [[10.0, 11.0, 12.0], [11.0, 11.0, 14.0], [9.0, 10.0, 11.0]]
    chart = ControlChart(SPEC, baseline=3, subgroup=3)
    points = [chart.add(v) for g in groups for v in g]
    assert [p is not None for p in points] == [False, False, True] * 3
    limits = chart.limits
    assert limits is not None
    # means 11, 12, 10 -> 11; ranges 2, 3, 2 -> Rbar 7/3; n=3: A2 1.023, D3 0, D4 2.574, d2 1.693
    rbar = 7 / 3
    assert limits.centre == pytest.approx(11.0)
    assert limits.ucl == pytest.approx(11.0 + 1.023 * rbar)
    assert limits.lcl == pytest.approx(11.0 - 1.023 * rbar)
    assert limits.r_centre == pytest.approx(rbar)
    assert limits.r_ucl == pytest.approx(2.574 * rbar)
    assert limits.r_lcl == 0.0
    assert limits.process_sigma == pytest.approx(rbar / 1.693)
    assert limits.sigma == pytest.approx(rbar / 1.693 / math.sqrt(3))


def test_xbar_r_constants_are_consistent() -> None:
    # A2 = 3 / (d2 sqrt(n)): the X-bar limits are 3 sigma of a subgroup mean.
    for n, c in SUBGROUP_CONSTANTS.items():
        assert c.a2 == pytest.approx(3 / (c.d2 * math.sqrt(n)), abs=0.002), n
    assert xbar_r_limits([1.0], [0.5], 2).ucl == pytest.approx(1.0 + 1.880 * 0.5)


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=5, max_size=5),
    st.lists(st.floats(min_value=-50.0, max_value=50.0), min_size=1, max_size=30),
)
def test_limits_are_frozen_after_the_baseline(baseline: list[float], later: list[float]) -> None:
    chart = ControlChart(SPEC, baseline=5)
    for v in baseline:
        chart.add(v)
    frozen = chart.limits
    assert frozen == imr_limits(baseline)
    for v in later:
        chart.add(v)
    assert chart.limits is frozen


def test_no_rule_is_checked_before_the_limits_are_frozen() -> None:
    chart = ControlChart(SPEC, baseline=4)
    points = [chart.add(v) for v in (0.0, 1.0, 0.0, 90.0)]
    assert all(p is not None and p.violations == () for p in points)
    assert chart.limits is not None
    point = chart.add(1000.0)
    assert point is not None and Rule.BEYOND_3_SIGMA in point.violations


def test_chart_values_map_to_sigmas_from_the_baseline() -> None:
    chart = ControlChart(SPEC, baseline=10)
    for i in range(10):
        chart.add(10.0 + (i % 2))  # centre 10.5, MRbar 1, sigma 1/1.128
    sigma = 1 / 1.128
    seen = [chart.add(10.5 + 2.5 * sigma), chart.add(10.5 + 2.5 * sigma)]
    assert [p.violations if p else None for p in seen] == [(), (Rule.TWO_OF_THREE_BEYOND_2_SIGMA,)]


def test_spec_limits_stay_apart_from_control_limits() -> None:
    chart = ControlChart(Spec(lsl=5.0, usl=15.0, nominal=10.0), baseline=4)
    for v in (10.0, 10.2, 10.0, 10.2):
        chart.add(v)
    data = chart.data()
    assert data.limits is not None and data.limits.ucl < 15.0
    assert (data.spec.lsl, data.spec.usl) == (5.0, 15.0)
    assert data.to_dict()["spec"] == {"lsl": 5.0, "usl": 15.0, "nominal": 10.0}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_finite_never_enters_a_chart(value: float) -> None:
    chart = ControlChart(SPEC, baseline=2)
    with pytest.raises(ValueError, match="finite"):
        chart.add(value)
    assert chart.data().points == ()


def test_memory_is_bounded_by_keep() -> None:
    chart = ControlChart(SPEC, baseline=2, keep=10)
    for i in range(1000):
        chart.add(float(i % 3))
    data = chart.data()
    assert len(data.points) == 10
    assert data.points[-1].index == 1000


@pytest.mark.parametrize(("baseline", "subgroup"), [(1, 1), (5, 11), (5, 0)])
def test_a_chart_refuses_bad_settings(baseline: int, subgroup: int) -> None:
    with pytest.raises(ValueError):
        ControlChart(SPEC, baseline=baseline, subgroup=subgroup)


# --- capability -----------------------------------------------------------------------------------------


def test_cp_cpk_by_hand() -> None:
    chart = ControlChart(Spec(lsl=0.0, usl=6.0, nominal=3.0), baseline=5)
    for v in (1.0, 2.0, 3.0, 2.0, 1.0):
        chart.add(v)
    cap = chart.capability()
    assert cap is not None
    # mean 1.8; moving ranges all 1: sigma 1/1.128 = 0.88652
    sigma = 1 / 1.128
    assert cap.mean == pytest.approx(1.8)
    assert cap.sigma == pytest.approx(sigma)
    assert cap.cp == pytest.approx(6.0 / (6 * sigma))  # 1.128
    assert cap.cpk == pytest.approx(1.8 / (3 * sigma))  # 0.6768, the lower side is the nearer
    assert cap.cp == pytest.approx(1.128)
    assert cap.cpk == pytest.approx(0.6768, abs=1e-4)


@given(
    st.floats(min_value=-10, max_value=10),
    st.floats(min_value=0.01, max_value=5),
    st.floats(min_value=-20, max_value=0),
    st.floats(min_value=0.1, max_value=20),
)
def test_cpk_never_exceeds_cp_and_equals_it_when_centred(
    mean: float, sigma: float, lsl: float, width: float
) -> None:
    usl = lsl + width
    cap = capability(mean, sigma, lsl, usl)
    assert cap.cp is not None and cap.cpk is not None
    assert cap.cpk <= cap.cp + 1e-12
    centred = capability((lsl + usl) / 2, sigma, lsl, usl)
    assert centred.cpk == pytest.approx(centred.cp)


def test_no_capability_without_spread() -> None:
    assert capability(1.0, 0.0, 0.0, 2.0).cp is None
