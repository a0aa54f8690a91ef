"""SPC of the parts made: one control chart per (variant, characteristic), its alarms and the holds it asks.

The engine hands every counted part to ``SpcMonitor.observe``; the monitor feeds each valid measurement of a
characteristic whose recipe configures ``spc`` into that characteristic's chart and returns the alarms to
record (a rule starting to fire raises ``spc:<variant>:<characteristic>:rule<n>``, its first point without
it clears it) and, when a rule in ``hold_on`` fired, the error the engine holds the cell with.

At start the charts are rebuilt from the newest ``SPC_HISTORY_PARTS`` parts of the journal
(``read_spc_history``, one bounded query on the kind index), replayed without alarms or holds: the limits
are learnt again from the first ``baseline`` points of that window, which is the original baseline unless
more than the window was made since. A chart whose recipe changed its spec or SPC settings starts again,
since limits from another definition do not apply; history measured against other spec limits is not
replayed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cellctl.core.events import AlarmEvent, PartProduced, Severity, Verdict
from cellctl.core.spc import ChartData, ChartPoint, ControlChart, Limits, Rule, Spec
from cellctl.errors import JobError, SpcHold
from cellctl.schema.recipe import Characteristic, Recipe, SpcConfig

SPC_SOURCE = "spc"
"""``source`` of the alarms SPC raises."""

KEEP_POINTS = 200
"""Points each chart keeps for display and capability (bounded memory)."""

SPC_HISTORY_PARTS = 2000
"""Newest journaled parts replayed into the charts at start."""


@dataclass(frozen=True, slots=True)
class HistoricValue:
    """One valid measurement of a journaled part, as replayed into a chart at start."""

    variant: str
    characteristic: str
    value: float
    nominal: float
    lsl: float
    usl: float
    ts: float
    label: str


class _Entry(Protocol):
    @property
    def ts(self) -> float: ...
    @property
    def data(self) -> dict[str, Any]: ...


class PartHistory(Protocol):
    """The journal read the rebuild needs (``cellctl.store.Store`` has it)."""

    async def newest_entries(self, kind: str, limit: int) -> Sequence[_Entry]: ...


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def history_values(ts: float, data: Mapping[str, Any]) -> list[HistoricValue]:
    """The valid measurements of one journaled part (``PartProduced`` data); malformed ones are left out."""
    variant, label = data.get("variant"), data.get("part")
    measurements = data.get("measurements")
    if not isinstance(variant, str) or not isinstance(label, str) or not isinstance(measurements, list):
        return []
    out: list[HistoricValue] = []
    for m in measurements:
        if not isinstance(m, dict) or m.get("verdict") == Verdict.INVALID.value:
            continue
        name = m.get("characteristic")
        numbers = [_number(m.get(k)) for k in ("value", "nominal", "lsl", "usl")]
        if not isinstance(name, str) or any(n is None for n in numbers):
            continue
        value, nominal, lsl, usl = (float(n) for n in numbers if n is not None)
        out.append(HistoricValue(variant, name, value, nominal, lsl, usl, ts, label))
    return out


async def read_spc_history(reader: PartHistory, limit: int = SPC_HISTORY_PARTS) -> tuple[HistoricValue, ...]:
    """The valid measurements of the newest ``limit`` journaled parts, oldest first."""
    entries = await reader.newest_entries(PartProduced.kind, limit)
    return tuple(v for e in entries for v in history_values(e.ts, e.data))


def alarm_name(variant: str, characteristic: str, rule: Rule) -> str:
    """The alarm a rule raises on one chart."""
    return f"spc:{variant}:{characteristic}:rule{int(rule)}"


@dataclass(frozen=True, slots=True)
class SpcSummary:
    """One characteristic's chart in brief, for the status: capability, limits and the last violation."""

    characteristic: str
    kind: str
    points: int
    cp: float | None
    cpk: float | None
    limits: Limits | None
    lsl: float
    usl: float
    last_violation: ChartPoint | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        limits = self.limits
        last = self.last_violation
        return {
            "characteristic": self.characteristic,
            "kind": self.kind,
            "points": self.points,
            "cp": self.cp,
            "cpk": self.cpk,
            "centre": limits.centre if limits else None,
            "lcl": limits.lcl if limits else None,
            "ucl": limits.ucl if limits else None,
            "lsl": self.lsl,
            "usl": self.usl,
            "last_violation": (
                {"index": last.index, "label": last.label, "rules": [int(r) for r in last.violations]}
                if last
                else None
            ),
        }


@dataclass(frozen=True, slots=True)
class SpcOutcome:
    """What one part did to the charts: alarms to record, and the hold to make (None: go on)."""

    alarms: tuple[AlarmEvent, ...] = ()
    hold: SpcHold | None = None


@dataclass(slots=True)
class _Tracked:
    chart: ControlChart
    definition: Characteristic
    firing: frozenset[Rule] = frozenset()


def _chart(definition: Characteristic, spc: SpcConfig) -> ControlChart:
    return ControlChart(
        Spec(lsl=definition.lsl, usl=definition.usl, nominal=definition.nominal),
        baseline=spc.baseline,
        subgroup=spc.subgroup,
        rules=(Rule(r) for r in spc.rules),
        keep=KEEP_POINTS,
    )


class SpcMonitor:
    """The control charts of every (variant, characteristic) with ``spc`` configured, fed part by part."""

    def __init__(self, recipes: Mapping[str, Recipe]) -> None:
        self._recipes = recipes
        self._charts: dict[tuple[str, str], _Tracked] = {}

    def set_recipes(self, recipes: Mapping[str, Recipe]) -> None:
        """The master recipes after a reload (the charts kept; a part is charted against its job's recipe)."""
        self._recipes = recipes

    def observe(self, part: PartProduced, recipe: Recipe) -> SpcOutcome:
        """Feed ``part``'s valid measurements (``recipe`` is its job's snapshot) into their charts."""
        alarms: list[AlarmEvent] = []
        hold: SpcHold | None = None
        for measurement in part.measurements:
            definition = recipe.quality.get(measurement.characteristic)
            if definition is None or definition.spc is None:
                continue
            if measurement.verdict is Verdict.INVALID or measurement.value is None:
                continue  # judged invalid already: an untrusted value says nothing about the process
            tracked = self._tracked(part.variant, measurement.characteristic, definition, definition.spc)
            point = tracked.chart.add(measurement.value, ts=part.ts, label=part.part)
            if point is None:
                continue  # a subgroup is still filling
            fired = frozenset(point.violations)
            holding = fired & {Rule(r) for r in definition.spc.hold_on}
            for rule in sorted(fired - tracked.firing):
                alarms.append(
                    AlarmEvent(
                        ts=part.ts,
                        alarm=alarm_name(part.variant, measurement.characteristic, rule),
                        severity=Severity.CRITICAL if rule in holding else Severity.WARNING,
                        active=True,
                        message=self._describe(
                            part, measurement.characteristic, tracked.chart, point, rule, definition.units
                        ),
                        source=SPC_SOURCE,
                    )
                )
            for rule in sorted(tracked.firing - fired):
                alarms.append(
                    AlarmEvent(
                        ts=part.ts,
                        alarm=alarm_name(part.variant, measurement.characteristic, rule),
                        severity=Severity.INFO,
                        active=False,
                        message=f"back in control at part {part.part}",
                        source=SPC_SOURCE,
                    )
                )
            tracked.firing = fired
            if holding and hold is None:
                rule = min(holding)
                hold = SpcHold(
                    part.variant,
                    measurement.characteristic,
                    int(rule),
                    self._describe(
                        part, measurement.characteristic, tracked.chart, point, rule, definition.units
                    ),
                )
        return SpcOutcome(alarms=tuple(alarms), hold=hold)

    def replay(self, history: Iterable[HistoricValue]) -> int:
        """Feed journaled values into the charts their recipe configures, without alarms; returns how many.

        A value measured against other spec limits than today's recipe is skipped. A rule still firing at the
        last replayed point is not raised again (its alarm was raised before the restart).
        """
        fed = 0
        for item in history:
            recipe = self._recipes.get(item.variant)
            definition = recipe.quality.get(item.characteristic) if recipe is not None else None
            if definition is None or definition.spc is None:
                continue
            if (definition.nominal, definition.lsl, definition.usl) != (item.nominal, item.lsl, item.usl):
                continue
            tracked = self._tracked(item.variant, item.characteristic, definition, definition.spc)
            point = tracked.chart.add(item.value, ts=item.ts, label=item.label)
            fed += 1
            if point is not None:
                tracked.firing = frozenset(point.violations)
        return fed

    def _tracked(self, variant: str, name: str, definition: Characteristic, spc: SpcConfig) -> _Tracked:
        key = (variant, name)
        tracked = self._charts.get(key)
        # Identity first: the same recipe object is the common case, and pydantic equality is not cheap.
        if tracked is None or (tracked.definition is not definition and tracked.definition != definition):
            tracked = _Tracked(chart=_chart(definition, spc), definition=definition)
            self._charts[key] = tracked
        return tracked

    @staticmethod
    def _describe(
        part: PartProduced, name: str, chart: ControlChart, point: ChartPoint, rule: Rule, units: str
    ) -> str:
        limits = chart.limits
        assert limits is not None  # rules fire only once the limits are frozen
        unit = f" {units}" if units else ""
        return (
            f"SPC {part.variant}/{name} ({chart.kind}): rule {int(rule)} ({rule.text}) at part {part.part}: "
            f"point {point.value:g}{unit}, centre {limits.centre:g}, control limits "
            f"[{limits.lcl:g}, {limits.ucl:g}], spec [{chart.spec.lsl:g}, {chart.spec.usl:g}]"
        )

    def summary(self, variant: str | None) -> tuple[SpcSummary, ...]:
        """A summary per charted characteristic of ``variant`` (its recipe's order); empty for None."""
        if variant is None:
            return ()
        out: list[SpcSummary] = []
        for (chart_variant, name), tracked in self._charts.items():
            if chart_variant != variant:
                continue
            data = tracked.chart.data()
            cap = data.capability
            out.append(
                SpcSummary(
                    characteristic=name,
                    kind=data.kind,
                    points=len(data.points),
                    cp=cap.cp if cap else None,
                    cpk=cap.cpk if cap else None,
                    limits=data.limits,
                    lsl=data.spec.lsl,
                    usl=data.spec.usl,
                    last_violation=data.last_violation,
                )
            )
        order = list(self._recipes[variant].quality) if variant in self._recipes else []
        out.sort(key=lambda s: order.index(s.characteristic) if s.characteristic in order else len(order))
        return tuple(out)

    def chart(self, variant: str, characteristic: str) -> ChartData:
        """The chart data of one characteristic; JobError naming what is charted when there is none.

        A characteristic with ``spc`` configured but no part made yet answers an empty chart.
        """
        tracked = self._charts.get((variant, characteristic))
        if tracked is not None:
            return tracked.chart.data()
        recipe = self._recipes.get(variant)
        if recipe is None:
            known = ", ".join(sorted(self._recipes)) or "none"
            raise JobError(f"no recipe for variant {variant!r} (known: {known})")
        definition = recipe.quality.get(characteristic)
        if definition is None or definition.spc is None:
            charted = ", ".join(n for n, c in recipe.quality.items() if c.spc is not None) or "none"
            raise JobError(
                f"variant {variant!r} has no SPC chart for {characteristic!r} (charted: {charted}); "
                "configure quality.<name>.spc in its recipe"
            )
        return _chart(definition, definition.spc).data()
