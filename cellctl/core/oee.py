"""OEE from recorded facts: time by PackML state and changeover, parts by verdict, over a window [start, end).

The definitions (ISO 22400 style, as a plant's OEE report counts):

- **planned time**: the window's seconds with a known cell state, less planned downtime. Under the changeover
  policy ``planned_downtime`` changeovers are planned downtime; under ``availability_loss`` they are downtime.
  Seconds before the first known state (no fact yet) are ``unknown_s`` and not planned.
- **run time**: seconds in Execute outside a changeover (changeovers run inside Execute, see the engine).
- **downtime**: every other planned second, by cause: ``held: <why>``, ``suspended: <why>`` (``starved``
  when the engine suspended for want of a job), ``stopped``, ``aborted``, ``idle`` (Resetting, Idle,
  Starting), ``complete``, ``changeover`` (policy availability_loss) and ``offline`` (from the last fact
  before a power-up to the power-up: the controller was not running). The why of a hold, suspension, stop
  or abort is the alarm raised just before it (``alarm (source)``), else ``operator`` when a person
  commanded it, else ``engine``.
- **availability** = run / planned; **performance** = Σ(ideal_cycle_s of the part's variant) / run;
  **quality** = good / total, where only PASS is good (FAIL and INVALID are not); **OEE** = A·P·Q.

A figure is None when its denominator is zero, except OEE, which is 0 when planned time passed without a part.
Parts of a variant with no ideal cycle time are counted but left out of performance (``unknown_variants``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from enum import StrEnum

from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    OeeReport,
    PartProduced,
    StateChanged,
    Verdict,
)
from cellctl.core.packml import State


class ChangeoverPolicy(StrEnum):
    """How changeover time counts in OEE."""

    PLANNED_DOWNTIME = "planned_downtime"
    """Left out of planned time: a scheduled changeover does not lower availability."""
    AVAILABILITY_LOSS = "availability_loss"
    """Counted as downtime (cause ``changeover``): it lowers availability."""


RUN = "run"
CHANGEOVER = "changeover"
OFFLINE = "offline"
STARVED = "starved"

_CATEGORY: Mapping[State, str] = {
    State.EXECUTE: RUN,
    State.HOLDING: "held",
    State.HELD: "held",
    State.UNHOLDING: "held",
    State.SUSPENDING: "suspended",
    State.SUSPENDED: "suspended",
    State.UNSUSPENDING: "suspended",
    State.STOPPING: "stopped",
    State.STOPPED: "stopped",
    State.ABORTING: "aborted",
    State.ABORTED: "aborted",
    State.CLEARING: "aborted",
    State.RESETTING: "idle",
    State.IDLE: "idle",
    State.STARTING: "idle",
    State.COMPLETING: "complete",
    State.COMPLETE: "complete",
}
"""Which kind of time a state is; acting states count with the wait state they lead to or come from."""

_WITH_REASON = frozenset({"held", "suspended", "stopped", "aborted"})


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open time window [start, end) in wall-clock seconds, with an optional name (a shift)."""

    start: float
    end: float
    name: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end < self.start:
            raise ValueError(f"window end {self.end} is before its start {self.start}")

    @property
    def seconds(self) -> float:
        """Its length."""
        return self.end - self.start

    def contains(self, ts: float) -> bool:
        """True when ``ts`` falls in [start, end)."""
        return self.start <= ts < self.end


@dataclass(frozen=True, slots=True)
class DowntimeCause:
    """One bar of the Pareto: a cause, its seconds in the window and how often it began."""

    cause: str
    seconds: float
    count: int


@dataclass(frozen=True, slots=True)
class PartCounts:
    """Parts by verdict."""

    good: int = 0
    bad: int = 0
    invalid: int = 0

    @property
    def total(self) -> int:
        """All parts, whatever their verdict."""
        return self.good + self.bad + self.invalid


@dataclass(frozen=True, slots=True)
class OeeFigures:
    """OEE and its parts over one window; seconds are clipped to the window."""

    window: Window
    policy: ChangeoverPolicy
    planned_s: float
    run_s: float
    downtime_s: float
    changeover_s: float
    """Seconds in changeovers (planned downtime or downtime, by ``policy``)."""
    unknown_s: float
    ideal_s: float
    parts: PartCounts
    by_variant: Mapping[str, PartCounts]
    changeovers: int
    """Changeovers completed in the window."""
    pareto: tuple[DowntimeCause, ...]
    """Downtime causes, most seconds first."""
    unknown_variants: tuple[str, ...] = ()

    @property
    def availability(self) -> float | None:
        """Run time over planned time."""
        return self.run_s / self.planned_s if self.planned_s > 0 else None

    @property
    def performance(self) -> float | None:
        """Ideal time of the parts made over run time."""
        return self.ideal_s / self.run_s if self.run_s > 0 else None

    @property
    def quality(self) -> float | None:
        """Good parts over all parts."""
        return self.parts.good / self.parts.total if self.parts.total else None

    @property
    def oee(self) -> float | None:
        """Availability * performance * quality; 0 when planned time passed without a part."""
        if self.planned_s <= 0:
            return None
        a, p, q = self.availability, self.performance, self.quality
        if a is None or p is None or q is None:
            return 0.0
        return a * p * q

    def report(self, ts: float) -> OeeReport:
        """These figures as the fact recorded (and published) when their window ended."""
        return OeeReport(
            ts=ts,
            window=self.window.name,
            window_start=self.window.start,
            window_end=self.window.end,
            policy=self.policy.value,
            oee=self.oee,
            availability=self.availability,
            performance=self.performance,
            quality=self.quality,
            planned_s=self.planned_s,
            run_s=self.run_s,
            downtime_s=self.downtime_s,
            changeover_s=self.changeover_s,
            unknown_s=self.unknown_s,
            ideal_s=self.ideal_s,
            good=self.parts.good,
            bad=self.parts.bad,
            invalid=self.parts.invalid,
            changeovers=self.changeovers,
            downtime={d.cause: d.seconds for d in self.pareto},
            downtime_count={d.cause: d.count for d in self.pareto},
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready data."""
        return {
            "window": {"start": self.window.start, "end": self.window.end, "name": self.window.name},
            "policy": self.policy.value,
            "oee": self.oee,
            "availability": self.availability,
            "performance": self.performance,
            "quality": self.quality,
            "planned_s": self.planned_s,
            "run_s": self.run_s,
            "downtime_s": self.downtime_s,
            "changeover_s": self.changeover_s,
            "unknown_s": self.unknown_s,
            "ideal_s": self.ideal_s,
            "parts": {"good": self.parts.good, "bad": self.parts.bad, "invalid": self.parts.invalid},
            "by_variant": {
                v: {"good": c.good, "bad": c.bad, "invalid": c.invalid} for v, c in self.by_variant.items()
            },
            "changeovers": self.changeovers,
            "pareto": [{"cause": d.cause, "seconds": d.seconds, "count": d.count} for d in self.pareto],
            "unknown_variants": list(self.unknown_variants),
        }


@dataclass(slots=True)
class _Counts:
    good: int = 0
    bad: int = 0
    invalid: int = 0

    def add(self, verdict: Verdict) -> None:
        if verdict is Verdict.PASS:
            self.good += 1
        elif verdict is Verdict.FAIL:
            self.bad += 1
        else:
            self.invalid += 1

    def frozen(self) -> PartCounts:
        return PartCounts(good=self.good, bad=self.bad, invalid=self.invalid)


@dataclass(slots=True)
class OeeAccumulator:
    """Folds a time-ordered stream of facts into OEE figures for one window; feed it with ``observe``.

    Facts before the window only set the state it starts in (feed the newest state change before it and
    what follows); seconds and parts count only inside it. A fact whose timestamp goes back in time (a
    wall-clock step) counts as happening at the newest time seen.
    """

    window: Window
    ideal_cycle_s: Mapping[str, float]
    policy: ChangeoverPolicy = ChangeoverPolicy.PLANNED_DOWNTIME
    _state: State | None = None
    _cause: str | None = None
    _since: float = 0.0
    _last_ts: float | None = None
    _open: set[str] = field(default_factory=set)
    _pending_alarm: str | None = None
    _seconds: dict[str, float] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    _parts: _Counts = field(default_factory=_Counts)
    _by_variant: dict[str, _Counts] = field(default_factory=dict)
    _ideal_s: float = 0.0
    _unknown_variants: set[str] = field(default_factory=set)
    _changeovers: int = 0

    def observe(self, event: Event) -> None:
        """Take one fact; facts of kinds that do not bear on OEE are ignored."""
        ts = event.ts if self._last_ts is None else max(event.ts, self._last_ts)
        if isinstance(event, StateChanged):
            self._on_state(event, ts)
        elif isinstance(event, ChangeoverEvent):
            self._on_changeover(event, ts)
        elif isinstance(event, AlarmEvent):
            why = f"{event.alarm} ({event.source})"
            if event.active:
                self._pending_alarm = why
            elif self._pending_alarm is not None and self._pending_alarm.startswith(f"{event.alarm} ("):
                self._pending_alarm = None  # cleared before it stopped anything
        elif isinstance(event, PartProduced) and self.window.contains(ts):
            self._parts.add(event.verdict)
            self._by_variant.setdefault(event.variant, _Counts()).add(event.verdict)
            ideal = self.ideal_cycle_s.get(event.variant)
            if ideal is None:
                self._unknown_variants.add(event.variant)
            else:
                self._ideal_s += ideal
        self._last_ts = ts

    def figures(self, until: float | None = None) -> OeeFigures:
        """The figures so far: the current state counts up to ``until`` (default: the window's end)."""
        end = self.window.end if until is None else min(max(until, self.window.start), self.window.end)
        seconds, counts = dict(self._seconds), dict(self._counts)
        if self._cause is not None:
            _add(seconds, counts, self._cause, max(self._since, self.window.start), end)
        run = seconds.pop(RUN, 0.0)
        changeover = seconds.get(CHANGEOVER, 0.0)
        if self.policy is ChangeoverPolicy.PLANNED_DOWNTIME:
            seconds.pop(CHANGEOVER, None)
        downtime = sum(seconds.values())
        known = run + downtime + (changeover if self.policy is ChangeoverPolicy.PLANNED_DOWNTIME else 0.0)
        unknown = max(0.0, (end - self.window.start) - known)
        pareto = tuple(
            sorted(
                (DowntimeCause(cause, s, counts.get(cause, 0)) for cause, s in seconds.items() if s > 0),
                key=lambda d: (-d.seconds, d.cause),
            )
        )
        return OeeFigures(
            window=self.window,
            policy=self.policy,
            planned_s=run + downtime,
            run_s=run,
            downtime_s=downtime,
            changeover_s=changeover,
            unknown_s=unknown,
            ideal_s=self._ideal_s,
            parts=self._parts.frozen(),
            by_variant={v: c.frozen() for v, c in sorted(self._by_variant.items())},
            changeovers=self._changeovers,
            pareto=pareto,
            unknown_variants=tuple(sorted(self._unknown_variants)),
        )

    def carry_over(self, window: Window) -> OeeAccumulator:
        """A fresh accumulator for ``window`` that starts in this one's current state (a new shift)."""
        nxt = OeeAccumulator(window=window, ideal_cycle_s=self.ideal_cycle_s, policy=self.policy)
        nxt._state, nxt._cause, nxt._since, nxt._last_ts = (
            self._state,
            self._cause,
            self._since,
            self._last_ts,
        )
        nxt._open = set(self._open)
        return nxt

    # ----------------------------------------------------------------------------------------------------

    def _on_state(self, event: StateChanged, ts: float) -> None:
        try:
            state = State.parse(event.state)
        except ValueError:
            return
        if event.previous == State.UNDEFINED.label and self._cause is not None and self._last_ts is not None:
            # A power-up: the controller was not running since its last fact.
            self._switch(OFFLINE, self._last_ts)
        if state in (State.STOPPED, State.ABORTED):
            self._open.clear()  # a changeover cut by a kill is started again after the restart
        category = _CATEGORY.get(state)
        previous_category = _CATEGORY.get(self._state) if self._state is not None else None
        self._state = state
        if category is None:
            self._switch(None, ts)
        elif category == RUN:
            self._switch(CHANGEOVER if self._open else RUN, ts)
        elif category != previous_category or self._cause == OFFLINE:
            self._switch(self._cause_of(category, event), ts)
        if category != previous_category:
            self._pending_alarm = None

    def _cause_of(self, category: str, event: StateChanged) -> str:
        if category not in _WITH_REASON:
            return category
        if self._pending_alarm is not None:
            return f"{category}: {self._pending_alarm}"
        if event.by == "engine":
            return f"{category}: {STARVED}" if category == "suspended" else f"{category}: engine"
        return f"{category}: operator"

    def _on_changeover(self, event: ChangeoverEvent, ts: float) -> None:
        if event.status is ChangeoverStatus.STARTED:
            self._open.add(event.changeover)
        else:
            self._open.discard(event.changeover)
            if event.status is ChangeoverStatus.COMPLETED and self.window.contains(ts):
                self._changeovers += 1
        if self._state is State.EXECUTE:
            self._switch(CHANGEOVER if self._open else RUN, ts)

    def _switch(self, cause: str | None, ts: float) -> None:
        if cause == self._cause:
            return
        if self._cause is not None:
            lo, hi = max(self._since, self.window.start), min(ts, self.window.end)
            _add(self._seconds, self._counts, self._cause, lo, hi)
        self._cause, self._since = cause, ts


def _add(seconds: dict[str, float], counts: dict[str, int], cause: str, lo: float, hi: float) -> None:
    """Count one stretch of ``cause`` from ``lo`` to ``hi`` (clipped already) if it is not empty."""
    if hi > lo:
        seconds[cause] = seconds.get(cause, 0.0) + (hi - lo)
        counts[cause] = counts.get(cause, 0) + 1


def compute_oee(
    events: Iterable[Event],
    window: Window,
    ideal_cycle_s: Mapping[str, float],
    policy: ChangeoverPolicy = ChangeoverPolicy.PLANNED_DOWNTIME,
) -> OeeFigures:
    """OEE over ``window`` from facts in time order (start them with the newest state change before it)."""
    acc = OeeAccumulator(window=window, ideal_cycle_s=ideal_cycle_s, policy=policy)
    for event in events:
        acc.observe(event)
    return acc.figures()


# ------------------------------------------------------------------------------------------------------------
# Shifts


@dataclass(frozen=True, slots=True)
class ShiftSpec:
    """A named shift by local wall-clock times; ``end`` at or before ``start`` runs past midnight."""

    name: str
    start: time
    end: time


def shift_windows(shifts: Sequence[ShiftSpec], since: float, until: float, tz: tzinfo) -> list[Window]:
    """Every occurrence of the shifts overlapping [since, until), clipped to it, in time order."""
    if until <= since:
        return []
    windows: list[Window] = []
    day = datetime.fromtimestamp(since, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(until, tz).date()
    while day <= last:
        for shift in shifts:
            start = datetime.combine(day, shift.start, tz).timestamp()
            end_day = day if shift.end > shift.start else day + timedelta(days=1)
            end = datetime.combine(end_day, shift.end, tz).timestamp()
            lo, hi = max(start, since), min(end, until)
            if hi > lo:
                windows.append(Window(lo, hi, f"{shift.name} {day.isoformat()}"))
        day += timedelta(days=1)
    return sorted(windows, key=lambda w: w.start)


def current_shift(shifts: Sequence[ShiftSpec], now: float, tz: tzinfo) -> Window | None:
    """The whole occurrence of the shift running at ``now`` (not clipped), None between shifts."""
    for window in shift_windows(shifts, now - 2 * 86400, now + 2 * 86400, tz):
        if window.contains(now):
            return window
    return None
