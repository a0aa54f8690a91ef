"""Live OEE for the engine's status: the current shift's figures, fed every fact the engine records.

The window is the shift running now (``oee.shifts`` of the cell file), the gap between two shifts when none
runs, or the local day when no shift is configured. When a fact or a status request falls past the window's
end, the next window starts in the state the cell was in (``OeeAccumulator.carry_over``). The figures count
from the engine's start: facts journaled before it (an earlier run of the same shift) are in ``cellctl
report``, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, tzinfo

from cellctl.core.events import Event, OeeReport
from cellctl.core.oee import OeeAccumulator, OeeFigures, ShiftSpec, Window, shift_windows
from cellctl.schema.load import LoadedConfig
from cellctl.schema.recipe import Recipe

BETWEEN_SHIFTS = "between shifts"

MAX_ROLL = 100
"""Windows rolled one by one at most; past that (a wall-clock jump) it jumps to the window of now."""


class LiveOee:
    """OEE of the current shift so far; ``observe`` every fact, ``figures(now)`` for the status."""

    def __init__(self, config: LoadedConfig) -> None:
        """Ideal cycle times from the recipes, policy, shifts and time zone from the cell file."""
        oee = config.cell.oee
        self._ideal = {variant: recipe.ideal_cycle_s for variant, recipe in config.recipes.items()}
        self._policy = oee.changeover
        self._shifts: tuple[ShiftSpec, ...] = oee.shift_specs()
        self._tz: tzinfo = oee.zone()
        self._acc: OeeAccumulator | None = None
        self._ended: list[OeeFigures] = []

    def set_ideal(self, recipes: Mapping[str, Recipe]) -> None:
        """Ideal cycle times after a reload: in place, so the shift so far keeps its figures and parts made
        from now on count at the new ideal."""
        self._ideal.clear()
        self._ideal.update({variant: recipe.ideal_cycle_s for variant, recipe in recipes.items()})

    def observe(self, event: Event) -> None:
        """Take one recorded fact."""
        self._roll(event.ts).observe(event)

    def figures(self, now: float) -> OeeFigures:
        """The current window's figures up to ``now``."""
        return self._roll(now).figures(until=now)

    def seconds_left(self, now: float) -> float:
        """Seconds until the current window ends."""
        return max(0.0, self._roll(now).window.end - now)

    def ended(self, now: float) -> list[OeeReport]:
        """The reports of the windows that ended since the last call (oldest first), stamped ``now``."""
        self._roll(now)
        reports = [figures.report(now) for figures in self._ended]
        self._ended.clear()
        return reports

    def _roll(self, ts: float) -> OeeAccumulator:
        acc = self._acc
        if acc is None:
            acc = OeeAccumulator(window=self.window_at(ts), ideal_cycle_s=self._ideal, policy=self._policy)
        for _ in range(MAX_ROLL):
            if ts < acc.window.end:
                break
            self._ended.append(acc.figures())
            acc = acc.carry_over(self.window_at(acc.window.end))
        else:
            acc = acc.carry_over(self.window_at(ts))
        self._acc = acc
        return acc

    def window_at(self, ts: float) -> Window:
        """The shift (or gap between shifts, or local day) that ``ts`` falls in."""
        if not self._shifts:
            day = datetime.fromtimestamp(ts, self._tz).replace(hour=0, minute=0, second=0, microsecond=0)
            start = day.timestamp()
            end = datetime.combine(day.date() + timedelta(days=1), day.time(), self._tz).timestamp()
            return Window(start, end, day.date().isoformat())
        around = shift_windows(self._shifts, ts - 2 * 86400, ts + 2 * 86400, self._tz)
        for window in around:
            if window.contains(ts):
                return window
        before = max((w.end for w in around if w.end <= ts), default=ts - 86400)
        after = min((w.start for w in around if w.start > ts), default=ts + 86400)
        return Window(before, after, BETWEEN_SHIFTS)
