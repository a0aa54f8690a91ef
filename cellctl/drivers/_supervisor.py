"""What the protocol drivers share: tag cache and watchers, link health, backoff and the supervisor loop.

A protocol driver subclasses LinkedBackend and supplies ``_serve()``: connect, call ``_link_up()`` once it
serves, and raise CommError when the link fails (after ``_link_down()`` when tidying up may take time).
``_supervise()`` turns that into the forever loop of the Driver contract:
CONNECTING -> serve (UP) -> every tag BAD, DOWN -> capped jittered backoff -> again; the retries of one outage
stay DOWN, so each outage is one DOWN and one UP.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

import structlog

from cellctl.core.clock import Clock
from cellctl.core.ports import Health, HealthCallback, LinkState
from cellctl.core.tags import Quality, Reading, ReadingCallback, TagValue
from cellctl.errors import CommError, DeviceError

WRITE_ONLY = "tag is write-only"
"""Reason of the (always BAD) reading of a tag declared ``access: w``: it is written, never read."""
BACKOFF_START_S = 0.1
"""First delay before a reconnect."""
BACKOFF_CAP_S = 5.0
"""Longest delay between reconnects, jitter included."""


def raise_if_cancelling() -> None:
    """Re-raise a cancellation a library swallowed.

    On Python 3.11, ``asyncio.wait_for`` (used inside pymodbus and asyncua) returns the result instead of
    raising when the reply lands in the same loop turn as a cancel; without this check a cancelled driver
    could keep polling forever. The request count survives in ``Task.cancelling()``.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Capped exponential backoff with jitter: each delay is drawn in [½, 1] of a doubling base."""

    def __init__(
        self,
        start: float = BACKOFF_START_S,
        cap: float = BACKOFF_CAP_S,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < start <= cap or factor < 1:
            raise ValueError("backoff needs 0 < start <= cap and factor >= 1")
        self.start = start
        self.cap = cap
        self.factor = factor
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (seconds); grows until the cap."""
        base = min(self.cap, self.start * self.factor ** min(self._attempt, 64))
        self._attempt += 1
        return min(self.cap, base * self._rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        """Start again from the first delay (after a link came up)."""
        self._attempt = 0


def _same(a: Reading, b: Reading) -> bool:
    """True when a watcher would learn nothing new from ``b`` after ``a`` (timestamps aside)."""
    if a.quality is not b.quality or type(a.value) is not type(b.value):
        return False
    if isinstance(a.value, float) and isinstance(b.value, float) and math.isnan(a.value):
        return math.isnan(b.value)
    return a.value == b.value


class LinkedBackend:
    """Tag cache, watchers, health and supervisor loop of one device; protocol drivers subclass it."""

    def __init__(
        self,
        device: str,
        tags: Iterable[str],
        clock: Clock,
        *,
        write_only: Iterable[str] = (),
        backoff: Backoff | None = None,
    ) -> None:
        self._device = device
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._log = structlog.get_logger("cellctl.drivers", device=device)  # lazy: follows later configure()
        self._write_only = frozenset(write_only)
        self._cache: dict[str, Reading] = {
            name: Reading.bad(
                clock.monotonic(), WRITE_ONLY if name in self._write_only else "not connected yet"
            )
            for name in tags
        }
        self._watchers: list[ReadingCallback] = []
        self._health_watchers: list[HealthCallback] = []
        self._health = Health(device, LinkState.DOWN, clock.monotonic(), "not connected yet")
        self._down_since: float | None = None
        self._failed_attempts = 0
        self._reported = False
        self._last_failure: CommError | None = None

    # ----------------------------------------------------------------------------------------- TagBackend

    @property
    def device(self) -> str:
        """Name of the device whose tags this driver serves."""
        return self._device

    def last(self, tag: str) -> Reading:
        """The newest reading known without I/O; BAD until the first poll or notification."""
        self._known(tag)
        return self._cache[tag]

    def watch(self, callback: ReadingCallback) -> Callable[[], None]:
        """Call back on every new value or quality of any tag; returns the unsubscribe function."""
        self._watchers.append(callback)

        def unsubscribe() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return unsubscribe

    # --------------------------------------------------------------------------------------------- health

    @property
    def health(self) -> Health:
        """Current link health."""
        return self._health

    @property
    def last_failure(self) -> CommError | None:
        """The error that ended the latest connection or attempt; None while up (for diagnostics: probe)."""
        return self._last_failure

    def on_health(self, callback: HealthCallback) -> Callable[[], None]:
        """Call back on every health change; returns the unsubscribe function."""
        self._health_watchers.append(callback)

        def unsubscribe() -> None:
            if callback in self._health_watchers:
                self._health_watchers.remove(callback)

        return unsubscribe

    # ------------------------------------------------------------------------------------ for subclasses

    def _known(self, tag: str) -> None:
        if tag not in self._cache:
            raise DeviceError(self._device, "no such tag", tag=tag)

    def _now(self) -> float:
        return self._clock.monotonic()

    def _store(self, tag: str, reading: Reading) -> None:
        """Keep ``reading`` as the tag's newest; tell watchers only when value or quality changed."""
        previous = self._cache[tag]
        self._cache[tag] = reading
        if not _same(previous, reading):
            for callback in list(self._watchers):
                callback(tag, reading)

    def _store_value(
        self, tag: str, value: TagValue, quality: Quality = Quality.GOOD, reason: str = ""
    ) -> None:
        self._store(tag, Reading(value=value, timestamp=self._now(), quality=quality, reason=reason))

    def _store_bad(self, tag: str, reason: str) -> None:
        self._store(tag, Reading.bad(self._now(), reason))

    def _mark_all_bad(self, reason: str) -> None:
        now = self._now()
        for tag in self._cache:
            if tag not in self._write_only:
                self._store(tag, Reading.bad(now, reason))

    def _set_health(self, state: LinkState, error: str = "") -> None:
        """Change the link state and tell the watchers; a new error in the same state is kept quietly."""
        if state is self._health.state:
            if error != self._health.error:
                self._health = Health(self._device, state, self._health.since, error)
            return
        self._health = Health(self._device, state, self._now(), error)
        for callback in list(self._health_watchers):
            callback(self._health)

    def _link_up(self) -> None:
        """Call once the link serves: health UP, backoff reset, the outage (if any) logged as over."""
        if self._down_since is not None:
            self._log.info(
                "link up again",
                outage_s=round(self._now() - self._down_since, 3),
                failed_attempts=self._failed_attempts,
            )
        else:
            self._log.info("link up")
        self._down_since = None
        self._failed_attempts = 0
        self._last_failure = None
        self._backoff.reset()
        self._set_health(LinkState.UP)

    def _link_down(self, error: str) -> None:
        # An outage is logged once at warning; the retries that follow only at debug.
        if self._down_since is None:
            self._down_since = self._now()
            self._log.warning("link down", error=error)
        else:
            self._log.debug("reconnect failed", error=error, failed_attempts=self._failed_attempts)
        self._failed_attempts += 1
        self._reported = True
        self._mark_all_bad(error)
        self._set_health(LinkState.DOWN, error)

    async def _supervise(self, serve: Callable[[], Awaitable[None]]) -> NoReturn:
        """Connect, serve, and after every communication failure back off and connect again, forever.

        Only CommError counts as a link failure; anything else is a bug and propagates.
        """
        while True:
            raise_if_cancelling()
            if self._down_since is None:
                # Retries within an outage stay DOWN: one outage is one DOWN and one UP for the journal.
                self._set_health(LinkState.CONNECTING, self._health.error)
            try:
                await serve()
            except CommError as exc:
                error = str(exc)
                self._last_failure = exc
            else:
                error = f"{self._device}: link closed"
                self._last_failure = CommError(self._device, "link closed")
            if not self._reported:  # serve() may have reported this failure already
                self._link_down(error)
            self._reported = False
            await asyncio.sleep(self._backoff.next_delay())
