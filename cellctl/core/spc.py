"""Statistical process control: I-MR and X-bar/R charts with frozen limits, Western Electric rules, Cp/Cpk.

Pure and streaming. A chart learns its control limits from a baseline window (the first ``baseline`` plotted
points), then freezes them: later points are judged against the baseline, never against themselves, so a slow
drift cannot drag its own limits along. Control limits describe the process (centre ± 3 sigma of the plotted
statistic); spec limits describe the customer's tolerance; the two are kept apart and never mixed.

Sigma is the within-subgroup estimate: MRbar / d2 (d2 = 1.128 for moving ranges of two) on an I-MR chart,
Rbar / d2(n) on an X-bar/R chart. Cp and Cpk use that same within sigma over the points the chart keeps.
Only finite values enter a chart: an invalid measurement has been judged already and says nothing about the
process.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

D2_MR = 1.128
"""d2 for moving ranges of two consecutive individuals."""

D4_MR = 3.267
"""D4 for moving ranges of two: the MR chart's UCL is D4 * MRbar (its LCL is 0)."""


@dataclass(frozen=True, slots=True)
class SubgroupConstants:
    """Shewhart constants for subgroups of one size: X-bar limits ± A2 Rbar, R limits D3 Rbar .. D4 Rbar."""

    a2: float
    d3: float
    d4: float
    d2: float


SUBGROUP_CONSTANTS: dict[int, SubgroupConstants] = {
    2: SubgroupConstants(a2=1.880, d3=0.0, d4=3.267, d2=1.128),
    3: SubgroupConstants(a2=1.023, d3=0.0, d4=2.574, d2=1.693),
    4: SubgroupConstants(a2=0.729, d3=0.0, d4=2.282, d2=2.059),
    5: SubgroupConstants(a2=0.577, d3=0.0, d4=2.114, d2=2.326),
    6: SubgroupConstants(a2=0.483, d3=0.0, d4=2.004, d2=2.534),
    7: SubgroupConstants(a2=0.419, d3=0.076, d4=1.924, d2=2.704),
    8: SubgroupConstants(a2=0.373, d3=0.136, d4=1.864, d2=2.847),
    9: SubgroupConstants(a2=0.337, d3=0.184, d4=1.816, d2=2.970),
    10: SubgroupConstants(a2=0.308, d3=0.223, d4=1.777, d2=3.078),
}
"""A2, D3, D4 and d2 by subgroup size (ASTM / AIAG SPC manual tables)."""

MIN_BASELINE = 2
"""A baseline needs two points for one range."""


class Rule(IntEnum):
    """The first four Western Electric rules, numbered as the handbook numbers them."""

    BEYOND_3_SIGMA = 1
    """One point beyond 3 sigma."""
    TWO_OF_THREE_BEYOND_2_SIGMA = 2
    """Two of three consecutive points beyond 2 sigma on the same side."""
    FOUR_OF_FIVE_BEYOND_1_SIGMA = 3
    """Four of five consecutive points beyond 1 sigma on the same side."""
    EIGHT_ON_ONE_SIDE = 4
    """Eight consecutive points on one side of the centre line."""

    @property
    def text(self) -> str:
        """What the rule detects, in words."""
        return _RULE_TEXT[self]


_RULE_TEXT = {
    Rule.BEYOND_3_SIGMA: "1 point beyond 3 sigma",
    Rule.TWO_OF_THREE_BEYOND_2_SIGMA: "2 of 3 points beyond 2 sigma on one side",
    Rule.FOUR_OF_FIVE_BEYOND_1_SIGMA: "4 of 5 points beyond 1 sigma on one side",
    Rule.EIGHT_ON_ONE_SIDE: "8 points in a row on one side of the centre",
}

ALL_RULES: tuple[Rule, ...] = tuple(Rule)

_WINDOW = 8
"""Points the rules look back over (rule 4 needs the most)."""


def _side(z: float) -> int:
    return 1 if z > 0 else -1 if z < 0 else 0


def _beyond(z: float, k: float, side: int) -> bool:
    return z * side > k


def rules_completed(zs: Sequence[float], rules: Iterable[Rule] = ALL_RULES) -> tuple[Rule, ...]:
    """The rules whose pattern the last of ``zs`` completes; ``zs`` are points in sigmas from the centre.

    A pattern is completed by its last point: the point itself is part of it (for rules 2 and 3, it lies
    beyond the zone on the pattern's side). Points before the window a rule needs are ignored.
    """
    if not zs:
        return ()
    last = zs[-1]
    side = _side(last)
    fired: list[Rule] = []
    for rule in sorted(set(rules)):
        if rule is Rule.BEYOND_3_SIGMA:
            hit = abs(last) > 3
        elif rule is Rule.TWO_OF_THREE_BEYOND_2_SIGMA:
            hit = side != 0 and _beyond(last, 2, side) and sum(_beyond(z, 2, side) for z in zs[-3:]) >= 2
        elif rule is Rule.FOUR_OF_FIVE_BEYOND_1_SIGMA:
            hit = side != 0 and _beyond(last, 1, side) and sum(_beyond(z, 1, side) for z in zs[-5:]) >= 4
        else:
            hit = side != 0 and len(zs) >= 8 and all(_side(z) == side for z in zs[-8:])
        if hit:
            fired.append(rule)
    return tuple(fired)


@dataclass(frozen=True, slots=True)
class Limits:
    """Frozen control limits of a chart, learnt from its baseline.

    ``centre``/``lcl``/``ucl`` belong to the plotted statistic (individuals or subgroup means), ``sigma`` is
    the plotted statistic's sigma (process sigma / sqrt(n)), ``process_sigma`` the within sigma of single
    values. ``r_*`` are the moving-range (I-MR) or range (X-bar/R) chart's centre and limits.
    """

    centre: float
    sigma: float
    lcl: float
    ucl: float
    process_sigma: float
    r_centre: float
    r_lcl: float
    r_ucl: float
    baseline: int

    def z(self, value: float) -> float:
        """``value`` in sigmas from the centre (±inf off a flat baseline, 0 on it)."""
        if self.sigma > 0:
            return (value - self.centre) / self.sigma
        return 0.0 if value == self.centre else math.copysign(math.inf, value - self.centre)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "centre": self.centre,
            "sigma": self.sigma,
            "lcl": self.lcl,
            "ucl": self.ucl,
            "process_sigma": self.process_sigma,
            "r_centre": self.r_centre,
            "r_lcl": self.r_lcl,
            "r_ucl": self.r_ucl,
            "baseline": self.baseline,
        }


def imr_limits(values: Sequence[float]) -> Limits:
    """I-MR limits from individuals: centre = mean, sigma = MRbar / 1.128, MR UCL = 3.267 MRbar."""
    if len(values) < MIN_BASELINE:
        raise ValueError(f"an I-MR baseline needs at least {MIN_BASELINE} values, got {len(values)}")
    centre = math.fsum(values) / len(values)
    mrbar = math.fsum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1)
    sigma = mrbar / D2_MR
    return Limits(
        centre=centre,
        sigma=sigma,
        lcl=centre - 3 * sigma,
        ucl=centre + 3 * sigma,
        process_sigma=sigma,
        r_centre=mrbar,
        r_lcl=0.0,
        r_ucl=D4_MR * mrbar,
        baseline=len(values),
    )


def xbar_r_limits(means: Sequence[float], ranges: Sequence[float], n: int) -> Limits:
    """X-bar/R limits from subgroup means and ranges of size ``n``: centre ± A2 Rbar, R from D3/D4 Rbar."""
    constants = subgroup_constants(n)
    if len(means) != len(ranges) or len(means) < 1:
        raise ValueError("an X-bar/R baseline needs as many ranges as means, and at least one subgroup")
    centre = math.fsum(means) / len(means)
    rbar = math.fsum(ranges) / len(ranges)
    process_sigma = rbar / constants.d2
    return Limits(
        centre=centre,
        sigma=process_sigma / math.sqrt(n),
        lcl=centre - constants.a2 * rbar,
        ucl=centre + constants.a2 * rbar,
        process_sigma=process_sigma,
        r_centre=rbar,
        r_lcl=constants.d3 * rbar,
        r_ucl=constants.d4 * rbar,
        baseline=len(means),
    )


def subgroup_constants(n: int) -> SubgroupConstants:
    """The X-bar/R constants for subgroups of ``n`` (2..10); ValueError otherwise."""
    try:
        return SUBGROUP_CONSTANTS[n]
    except KeyError:
        raise ValueError(f"subgroup size must be 2..10 for an X-bar/R chart, not {n}") from None


@dataclass(frozen=True, slots=True)
class Capability:
    """Cp and Cpk of a set of values against spec limits, with the mean and within sigma they came from."""

    cp: float | None
    cpk: float | None
    mean: float
    sigma: float


def capability(mean: float, sigma: float, lsl: float, usl: float) -> Capability:
    """Cp = (USL - LSL) / 6 sigma, Cpk = min(USL - mean, mean - LSL) / 3 sigma (None when sigma is 0)."""
    if not sigma > 0:
        return Capability(cp=None, cpk=None, mean=mean, sigma=sigma)
    return Capability(
        cp=(usl - lsl) / (6 * sigma),
        cpk=min(usl - mean, mean - lsl) / (3 * sigma),
        mean=mean,
        sigma=sigma,
    )


@dataclass(frozen=True, slots=True)
class Spec:
    """The spec limits a chart shows beside (never inside) its control limits."""

    lsl: float
    usl: float
    nominal: float


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """One plotted point: an individual (or a subgroup's mean), its (moving) range, the rules it completed."""

    index: int
    value: float
    range: float | None
    ts: float
    label: str
    violations: tuple[Rule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "index": self.index,
            "value": self.value,
            "range": self.range,
            "ts": self.ts,
            "label": self.label,
            "violations": [int(r) for r in self.violations],
        }


@dataclass(frozen=True, slots=True)
class ChartData:
    """What a control chart shows: points, centre line, control limits, spec limits and capability."""

    kind: str
    subgroup: int
    baseline: int
    limits: Limits | None
    spec: Spec
    points: tuple[ChartPoint, ...]
    capability: Capability | None
    rules: tuple[Rule, ...]
    last_violation: ChartPoint | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        cap = self.capability
        return {
            "kind": self.kind,
            "subgroup": self.subgroup,
            "baseline": self.baseline,
            "limits": self.limits.to_dict() if self.limits else None,
            "spec": {"lsl": self.spec.lsl, "usl": self.spec.usl, "nominal": self.spec.nominal},
            "cp": cap.cp if cap else None,
            "cpk": cap.cpk if cap else None,
            "rules": [int(r) for r in self.rules],
            "points": [p.to_dict() for p in self.points],
            "last_violation": self.last_violation.to_dict() if self.last_violation else None,
        }


class ControlChart:
    """A streaming I-MR (``subgroup`` 1) or X-bar/R chart: feed values, get the rules each point completes.

    Memory is bounded: the baseline (at most ``baseline`` points), the last ``keep`` points for display and
    capability, and the last 8 z-scores for the rules.
    """

    def __init__(
        self,
        spec: Spec,
        *,
        baseline: int = 25,
        subgroup: int = 1,
        rules: Iterable[Rule] = ALL_RULES,
        keep: int = 200,
    ) -> None:
        if subgroup != 1:
            subgroup_constants(subgroup)  # refuses a size without constants
        if baseline < (MIN_BASELINE if subgroup == 1 else 1):
            raise ValueError(f"baseline must be at least {MIN_BASELINE} points, not {baseline}")
        if keep < 2:
            raise ValueError(f"keep must be at least 2 points, not {keep}")
        self.spec = spec
        self.baseline = baseline
        self.subgroup = subgroup
        self.rules = tuple(sorted(set(rules)))
        self._limits: Limits | None = None
        self._base_values: list[float] = []
        self._base_ranges: list[float] = []
        self._pending: list[float] = []
        self._points: deque[ChartPoint] = deque(maxlen=keep)
        self._zs: deque[float] = deque(maxlen=_WINDOW)
        self._previous: float | None = None
        self._count = 0
        self._last_violation: ChartPoint | None = None

    @property
    def limits(self) -> Limits | None:
        """The frozen control limits, None until the baseline is complete."""
        return self._limits

    @property
    def kind(self) -> str:
        """``I-MR`` or ``Xbar-R``."""
        return "I-MR" if self.subgroup == 1 else "Xbar-R"

    def add(self, value: float, *, ts: float = 0.0, label: str = "") -> ChartPoint | None:
        """Feed one measured value; the point it completes (None while a subgroup fills) with its violations.

        ValueError for a value that is not a finite number: an invalid measurement never enters a chart.
        """
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"a chart takes finite numbers only, not {value!r}")
        if self.subgroup == 1:
            plotted, rng = float(value), None if self._previous is None else abs(value - self._previous)
            self._previous = float(value)
        else:
            self._pending.append(float(value))
            if len(self._pending) < self.subgroup:
                return None
            group, self._pending = self._pending, []
            plotted, rng = math.fsum(group) / len(group), max(group) - min(group)
        return self._plot(plotted, rng, ts, label)

    def _plot(self, value: float, rng: float | None, ts: float, label: str) -> ChartPoint:
        self._count += 1
        violations: tuple[Rule, ...] = ()
        if self._limits is None:
            self._base_values.append(value)
            if rng is not None:
                self._base_ranges.append(rng)
            if len(self._base_values) >= self.baseline:
                self._freeze()
        else:
            self._zs.append(self._limits.z(value))
            violations = rules_completed(list(self._zs), self.rules)
        point = ChartPoint(
            index=self._count, value=value, range=rng, ts=ts, label=label, violations=violations
        )
        self._points.append(point)
        if violations:
            self._last_violation = point
        return point

    def _freeze(self) -> None:
        if self.subgroup == 1:
            self._limits = imr_limits(self._base_values)
        else:
            self._limits = xbar_r_limits(self._base_values, self._base_ranges, self.subgroup)
        self._base_values, self._base_ranges = [], []

    def capability(self) -> Capability | None:
        """Cp/Cpk over the points kept, with the within sigma (MRbar/d2 or Rbar/d2(n)); None under 2."""
        points = list(self._points)
        if len(points) < 2:
            return None
        mean = math.fsum(p.value for p in points) / len(points)
        if self.subgroup == 1:
            mrs = [abs(b.value - a.value) for a, b in itertools.pairwise(points)]
            sigma = math.fsum(mrs) / len(mrs) / D2_MR
        else:
            ranges = [p.range for p in points if p.range is not None]
            sigma = math.fsum(ranges) / len(ranges) / subgroup_constants(self.subgroup).d2
        return capability(mean, sigma, self.spec.lsl, self.spec.usl)

    def data(self) -> ChartData:
        """A snapshot of the chart for display."""
        return ChartData(
            kind=self.kind,
            subgroup=self.subgroup,
            baseline=self.baseline,
            limits=self._limits,
            spec=self.spec,
            points=tuple(self._points),
            capability=self.capability(),
            rules=self.rules,
            last_violation=self._last_violation,
        )
