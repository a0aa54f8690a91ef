"""Measured changeover step durations per (device, step kind), and the expected duration the planner uses.

The estimate is the median of the newest ``window`` measurements once there are at least ``min_samples`` of
them, the configured template value before. A median, not a mean: one retried or operator-delayed step
must not move the plan by much. Only steps that completed count (a failed or cancelled step's time says
nothing about how long the step takes); a non-finite or negative duration is ignored.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from cellctl.core.events import StepEvent, StepStatus

DEFAULT_WINDOW = 20
"""Measurements kept per (device, step kind): the newest ones, so the estimate follows a changing cell."""

DEFAULT_MIN_SAMPLES = 3
"""Measurements needed before the estimate replaces the configured duration."""

DurationSample = tuple[str | None, str, float]
"""One measurement as the store returns it: (device, step kind, seconds)."""


@dataclass(frozen=True, slots=True)
class DurationEstimate:
    """The expected duration of a step and where it comes from: ``samples`` measurements, or configured."""

    expected_s: float
    samples: int
    measured: bool

    @property
    def source(self) -> str:
        """``"measured"`` or ``"configured"``."""
        return "measured" if self.measured else "configured"

    def describe(self) -> str:
        """For a person: ``measured (n=5)``, ``configured`` or ``configured (n=2, too few)``."""
        if self.measured:
            return f"measured (n={self.samples})"
        return f"configured (n={self.samples}, too few)" if self.samples else "configured"


class StepDurations:
    """Measured step durations per (device, step kind), bounded per key; owned by one engine (no locking)."""

    def __init__(self, *, window: int = DEFAULT_WINDOW, min_samples: int = DEFAULT_MIN_SAMPLES) -> None:
        if window < 1 or not 1 <= min_samples <= window:
            raise ValueError(f"need window >= 1 and 1 <= min_samples <= window, got {window}, {min_samples}")
        self._window = window
        self._min_samples = min_samples
        self._samples: dict[tuple[str | None, str], deque[float]] = {}
        self._estimates: dict[tuple[str | None, str], float] = {}
        self._version = 0

    @classmethod
    def from_samples(
        cls,
        samples: Iterable[DurationSample],
        *,
        window: int = DEFAULT_WINDOW,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> StepDurations:
        """An estimator fed with ``samples``, oldest first (so the newest are the ones kept)."""
        durations = cls(window=window, min_samples=min_samples)
        for device, kind, seconds in samples:
            durations.add(device, kind, seconds)
        return durations

    @property
    def version(self) -> int:
        """Bumped whenever an estimate may have changed, so callers can drop what they derived from it."""
        return self._version

    @property
    def min_samples(self) -> int:
        """Measurements needed before an estimate is used."""
        return self._min_samples

    def add(self, device: str | None, step_kind: str, duration_s: float) -> bool:
        """Count one completed step's duration; False (nothing changed) when it is not a usable number."""
        if isinstance(duration_s, bool) or not isinstance(duration_s, int | float):
            return False
        value = float(duration_s)
        if not math.isfinite(value) or value < 0.0:
            return False
        key = (device, step_kind)
        window = self._samples.get(key)
        if window is None:
            window = self._samples[key] = deque(maxlen=self._window)
        window.append(value)
        if len(window) >= self._min_samples:
            self._estimates[key] = statistics.median(window)
        self._version += 1
        return True

    def observe(self, event: StepEvent) -> bool:
        """Count a recorded step event if it is a completed step with a duration; True when counted."""
        if event.status is not StepStatus.DONE or event.duration_s is None:
            return False
        return self.add(event.device, event.step_kind, event.duration_s)

    def samples(self, device: str | None, step_kind: str) -> int:
        """How many measurements are held for this step."""
        window = self._samples.get((device, step_kind))
        return len(window) if window is not None else 0

    def estimate(self, device: str | None, step_kind: str, configured_s: float) -> DurationEstimate:
        """The expected duration: the measured median once there are enough samples, else ``configured_s``."""
        key = (device, step_kind)
        measured = self._estimates.get(key)
        count = self.samples(device, step_kind)
        if measured is None:
            return DurationEstimate(expected_s=configured_s, samples=count, measured=False)
        return DurationEstimate(expected_s=measured, samples=count, measured=True)

    def expected_s(self, device: str | None, step_kind: str, configured_s: float) -> float:
        """``estimate(...).expected_s``."""
        measured = self._estimates.get((device, step_kind))
        return configured_s if measured is None else measured

    def __len__(self) -> int:
        """Number of (device, step kind) keys with at least one measurement."""
        return len(self._samples)


__all__ = [
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_WINDOW",
    "DurationEstimate",
    "DurationSample",
    "StepDurations",
]
