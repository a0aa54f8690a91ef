"""Injectable clocks: the engine asks a Clock for time so tests and replays control it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds for durations and wall seconds (Unix epoch) for records."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch, for timestamps in records."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds from time.monotonic()."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds from time.time()."""
        return time.time()


class ManualClock:
    """A clock that moves only when told to, for tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0

    def monotonic(self) -> float:
        """Current manual monotonic time."""
        return self._mono

    def wall(self) -> float:
        """Current manual wall time."""
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._mono += seconds
        self._wall += seconds
