"""The alarm manager: the one home of the cell's alarms, raised, cleared and acknowledged, each journaled.

An alarm is shown (``AlarmManager.shown``) while it is active or not yet acknowledged: a person sees an alarm
that came and went until they acknowledge it. Raising an alarm that is active records nothing again (its
first message stands); raising one that cleared but was never acknowledged raises it again.

With a ``defer`` hook, a raise, clear or acknowledgement the store cannot journal (StoreError) still takes
effect in memory and is handed to ``defer`` to be journaled once the store works again: an alarm is shown
whether or not the store can keep it (the store's own alarm could never be shown otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from cellctl.core.clock import Clock
from cellctl.core.events import AlarmAction, AlarmEvent, Event, Severity
from cellctl.errors import AlarmError, StoreError

Record = Callable[[Event], Awaitable[int]]
"""Journals an event (and publishes it); returns its journal id."""

Defer = Callable[[AlarmEvent, StoreError], None]
"""Keeps an alarm event the store refused, to journal it later (and tells the listeners now)."""


@dataclass(frozen=True, slots=True)
class Alarm:
    """One alarm as the status shows it."""

    id: str
    severity: Severity
    source: str
    message: str
    raised_ts: float
    active: bool = True
    cleared_ts: float | None = None
    acked_by: str | None = None
    acked_ts: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "id": self.id,
            "severity": self.severity.value,
            "source": self.source,
            "message": self.message,
            "raised_ts": self.raised_ts,
            "active": self.active,
            "cleared_ts": self.cleared_ts,
            "acked_by": self.acked_by,
            "acked_ts": self.acked_ts,
        }


class AlarmManager:
    """Active and unacknowledged alarms by id; every raise, clear and acknowledgement is recorded."""

    def __init__(self, record: Record, clock: Clock, *, defer: Defer | None = None) -> None:
        self._record = record
        self._defer = defer
        self._clock = clock
        self._alarms: dict[str, Alarm] = {}
        # Raise, clear and ack of one alarm are recorded in the order they happened.
        self._lock = asyncio.Lock()
        self._log = structlog.get_logger(__name__)

    def shown(self) -> tuple[Alarm, ...]:
        """Alarms active or not yet acknowledged, the most severe first, then oldest first."""
        rank = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
        return tuple(sorted(self._alarms.values(), key=lambda a: (rank[a.severity], a.raised_ts, a.id)))

    def get(self, alarm: str) -> Alarm | None:
        """The alarm shown under ``alarm`` (None when there is none)."""
        return self._alarms.get(alarm)

    def is_active(self, alarm: str) -> bool:
        """True while the alarm's condition is present."""
        found = self._alarms.get(alarm)
        return found is not None and found.active

    async def raise_alarm(
        self, alarm: str, *, severity: Severity, message: str, source: str, by: str = "engine"
    ) -> bool:
        """Raise ``alarm`` (an id such as ``"spc:width_mm:rule1"``); False when it is active already."""
        async with self._lock:
            found = self._alarms.get(alarm)
            if found is not None and found.active:
                return False
            now = self._clock.wall()
            shown = Alarm(id=alarm, severity=severity, source=source, message=message, raised_ts=now)
            await self._journal(self._event(shown, AlarmAction.RAISED, by=by, ts=now))
            self._alarms[alarm] = shown
            self._log.warning(
                "alarm raised", alarm=alarm, severity=severity.value, source=source, msg=message
            )
            return True

    async def clear_alarm(
        self,
        alarm: str,
        *,
        by: str = "engine",
        message: str = "",
        ack: bool = False,
        journaled: bool = False,
    ) -> bool:
        """The condition of ``alarm`` is gone; False when it was not active. It stays shown until acked;
        ``ack``: the clear is a person's acknowledgement too (a Reset or Unhold), recorded in one event;
        ``journaled``: it takes effect only once journaled (StoreError, nothing changed, if not)."""
        async with self._lock:
            found = self._alarms.get(alarm)
            if found is None or not found.active:
                return False
            now = self._clock.wall()
            cleared = replace(found, active=False, cleared_ts=now, message=message or found.message)
            if ack and cleared.acked_by is None:
                cleared = replace(cleared, acked_by=by, acked_ts=now)
            event = self._event(cleared, AlarmAction.CLEARED, by=by, ts=now)
            if journaled:
                await self._record(event)
            else:
                await self._journal(event)
            self._settle(cleared)
            self._log.info("alarm cleared", alarm=alarm, by=by)
            return True

    async def acknowledge(self, alarm: str, *, by: str) -> Alarm:
        """A person has seen ``alarm``; AlarmError when it is not shown or was acknowledged already."""
        async with self._lock:
            found = self._alarms.get(alarm)
            if found is None:
                known = ", ".join(self._alarms) or "none"
                raise AlarmError(alarm, f"no such alarm is shown (shown: {known})")
            if found.acked_by is not None:
                raise AlarmError(alarm, f"acknowledged already by {found.acked_by}")
            now = self._clock.wall()
            acked = replace(found, acked_by=by, acked_ts=now)
            await self._journal(self._event(acked, AlarmAction.ACKNOWLEDGED, by=by, ts=now))
            self._settle(acked)
            self._log.info("alarm acknowledged", alarm=alarm, by=by)
            return acked

    async def _journal(self, event: AlarmEvent) -> None:
        try:
            await self._record(event)
        except StoreError as exc:
            if self._defer is None:
                raise
            self._defer(event, exc)

    def _settle(self, alarm: Alarm) -> None:
        if alarm.active or alarm.acked_by is None:
            self._alarms[alarm.id] = alarm
        else:
            del self._alarms[alarm.id]

    @staticmethod
    def _event(alarm: Alarm, action: AlarmAction, *, by: str, ts: float) -> AlarmEvent:
        return AlarmEvent(
            ts=ts,
            alarm=alarm.id,
            severity=alarm.severity,
            active=alarm.active,
            message=alarm.message,
            source=alarm.source,
            action=action,
            by=by,
            acked_by=alarm.acked_by,
            raised_ts=alarm.raised_ts,
        )
