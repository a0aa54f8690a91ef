"""Alarms, interlocks and the e-stop on a soft cell: settle times, resume, no command after the edge."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from cellctl.core.clock import SystemClock
from cellctl.core.events import (
    AlarmAction,
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    Severity,
    StateChanged,
    StepEvent,
    StepStatus,
)
from cellctl.core.ports import Health, LinkState
from cellctl.drivers.soft import SoftDriver
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.alarms import AlarmManager
from cellctl.engine.interlocks import ESTOP_ALARM
from cellctl.errors import AlarmError, InterlockTripped, WriteInhibited
from cellctl.runtime.app import health_alarm
from cellctl.schema.cell import InterlockConfig
from cellctl.schema.load import LoadedConfig
from tests.softcell import StalledFixture, soft_cell
from tests.unit.test_engine import FakeSink, T, config, reset_and_start, running, total_writes

__all__ = ["config"]  # the fixture, shared with test_engine

SETTLE_S = 0.05
"""Settle time of the interlocks here: short, so the suite stays fast; waits are bounded by T."""


def with_interlocks(config: LoadedConfig, **interlocks: dict[str, Any]) -> LoadedConfig:
    """The example cell with only these interlocks (the e-stop as configured)."""
    cell = config.cell.model_copy(
        update={"interlocks": {name: InterlockConfig(**spec) for name, spec in interlocks.items()}}
    )
    return dataclasses.replace(config, cell=cell)


GUARD = {
    "when": "safety.guard_closed == false",
    "settle_s": SETTLE_S,
    "action": "suspend",
    "resume_when": "safety.guard_closed == true",
}
AIR = {"when": "safety.air_bar < 5.5", "settle_s": SETTLE_S, "action": "hold"}


def alarms(sink: FakeSink, alarm: str) -> list[tuple[AlarmAction, bool, str]]:
    return [(e.action, e.active, e.by) for e in sink.of(AlarmEvent) if e.alarm == alarm]


def moved_by(sink: FakeSink, state: str) -> list[str]:
    return [e.by for e in sink.of(StateChanged) if e.state == state]


async def producing(engine: Engine) -> None:
    """Queue a long job, reset and start, and wait until parts are being made."""
    await engine.submit(OrderRequest("PO-1", "oslo", 1_000_000), by="mes")
    await reset_and_start(engine)
    await engine.wait_for(State.EXECUTE, timeout=T)


# ------------------------------------------------------------------------------------------------------------
# Alarm manager


class Journal:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def record(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)


async def test_an_alarm_raised_twice_while_active_is_recorded_once() -> None:
    journal = Journal()
    manager = AlarmManager(journal.record, SystemClock())

    assert await manager.raise_alarm("spc:width", severity=Severity.WARNING, message="m", source="spc")
    assert not await manager.raise_alarm("spc:width", severity=Severity.WARNING, message="m2", source="spc")

    assert len(journal.events) == 1
    assert [a.message for a in manager.shown()] == ["m"]


async def test_a_cleared_alarm_stays_shown_until_acknowledged_with_who() -> None:
    journal = Journal()
    manager = AlarmManager(journal.record, SystemClock())
    await manager.raise_alarm("a", severity=Severity.CRITICAL, message="m", source="s")
    await manager.clear_alarm("a")

    shown = manager.get("a")
    assert shown is not None and not shown.active and shown.acked_by is None
    acked = await manager.acknowledge("a", by="anna")

    assert acked.acked_by == "anna" and manager.shown() == ()
    last = journal.events[-1]
    assert isinstance(last, AlarmEvent)
    assert (last.action, last.by, last.acked_by) == (AlarmAction.ACKNOWLEDGED, "anna", "anna")


async def test_acknowledging_an_unknown_or_acknowledged_alarm_is_refused() -> None:
    manager = AlarmManager(Journal().record, SystemClock())
    await manager.raise_alarm("a", severity=Severity.INFO, message="m", source="s")
    await manager.acknowledge("a", by="anna")

    with pytest.raises(AlarmError, match="acknowledged already by anna"):
        await manager.acknowledge("a", by="bob")
    with pytest.raises(AlarmError, match="no such alarm"):
        await manager.acknowledge("b", by="bob")


async def test_the_most_severe_alarm_is_shown_first() -> None:
    manager = AlarmManager(Journal().record, SystemClock())
    await manager.raise_alarm("info", severity=Severity.INFO, message="m", source="s")
    await manager.raise_alarm("crit", severity=Severity.CRITICAL, message="m", source="s")

    assert [a.id for a in manager.shown()] == ["crit", "info"]


# ------------------------------------------------------------------------------------------------------------
# Interlocks


async def test_the_guard_door_suspends_after_its_settle_time_and_resumes_when_closed(
    config: LoadedConfig,
) -> None:
    config = with_interlocks(config, guard_door=GUARD)
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await producing(engine)
        devices["safety"].set("guard_closed", False)
        await engine.wait_for(State.SUSPENDED, timeout=T)
        suspended = engine.status()
        devices["safety"].set("guard_closed", True)
        await sink.wait_for(lambda e: isinstance(e, StateChanged) and e.state == "Unsuspending")
        await engine.wait_for(State.EXECUTE, timeout=T)
        await engine.command("abort", by="op")

    assert moved_by(sink, "Suspending") == ["interlock"]
    assert moved_by(sink, "Unsuspending") == ["interlock"]
    assert "safety.guard_closed == false" in suspended.reason
    assert [a.id for a in suspended.alarms] == ["interlock:guard_door"]
    assert alarms(sink, "interlock:guard_door") == [
        (AlarmAction.RAISED, True, "engine"),
        (AlarmAction.CLEARED, False, "engine"),
    ]


async def test_a_guard_door_opened_for_less_than_its_settle_time_does_nothing(config: LoadedConfig) -> None:
    config = with_interlocks(config, guard_door={**GUARD, "settle_s": 0.5})
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await producing(engine)
        devices["safety"].set("guard_closed", False)
        await asyncio.sleep(0.05)  # well inside the settle time: the point is that nothing happens
        devices["safety"].set("guard_closed", True)
        await asyncio.sleep(0.6)  # past the settle time, had the timer kept running
        state = engine.status().state
        await engine.command("abort", by="op")

    assert state == "Execute"
    assert alarms(sink, "interlock:guard_door") == []


async def test_low_air_holds_and_never_resumes_by_itself(config: LoadedConfig) -> None:
    config = with_interlocks(config, air_low=AIR)
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await producing(engine)
        devices["safety"].set("air_bar", 4.0)
        await engine.wait_for(State.HELD, timeout=T)
        devices["safety"].set("air_bar", 6.0)
        await sink.wait_for(
            lambda e: isinstance(e, AlarmEvent) and e.alarm == "interlock:air_low" and not e.active
        )
        status = engine.status()
        await engine.command("unhold", by="op")
        await engine.wait_for(State.EXECUTE, timeout=T)
        await engine.command("abort", by="op")

    assert status.state == "Held"
    assert moved_by(sink, "Holding") == ["interlock"]
    assert moved_by(sink, "Unholding") == ["op"]


async def test_an_unreadable_tag_in_a_condition_counts_as_the_unsafe_side(config: LoadedConfig) -> None:
    config = with_interlocks(config, air_low=AIR)
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await producing(engine)
        devices["safety"].set_bad("air_bar", "link down")
        await engine.wait_for(State.HELD, timeout=T)
        await engine.command("abort", by="op")

    [raised] = [e for e in sink.of(AlarmEvent) if e.alarm == "interlock:air_low"]
    assert "not GOOD" in raised.message


async def test_start_with_the_guard_open_is_suspended_as_soon_as_it_executes(config: LoadedConfig) -> None:
    config = with_interlocks(config, guard_door=GUARD)
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        devices["safety"].set("guard_closed", False)
        await sink.wait_for(lambda e: isinstance(e, AlarmEvent) and e.alarm == "interlock:guard_door")
        await producing(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
        await engine.command("abort", by="op")

    assert moved_by(sink, "Suspending") == ["interlock"]


# ------------------------------------------------------------------------------------------------------------
# E-stop


def press_estop(devices: dict[str, SoftDriver]) -> int:
    """Press the e-stop; returns the number of writes the devices had taken at the edge."""
    writes = total_writes(devices)
    devices["safety"].set("estop_ok", False)  # watchers run in this call: the inhibit is shut now
    return writes


async def test_estop_during_production_aborts_and_no_write_leaves_after_the_edge(
    config: LoadedConfig,
) -> None:
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await producing(engine)
        await sink.wait_for(lambda e: e.kind == "part")
        at_edge = press_estop(devices)
        await engine.wait_for(State.ABORTED, timeout=T)
        for _ in range(10):
            await asyncio.sleep(0)  # give any stray task its chance to write
        after = total_writes(devices)
        status = engine.status()

    assert after == at_edge
    assert sink.states()[-2:] == ["Aborting", "Aborted"]
    assert moved_by(sink, "Aborting") == ["interlock"]
    assert engine.inhibit.refused >= 1  # the part's finally wanted to drop the robot's start: refused
    assert [a.id for a in status.alarms] == [ESTOP_ALARM]


async def test_estop_during_a_changeover_cuts_it_and_no_finalizer_writes(config: LoadedConfig) -> None:
    stalled = StalledFixture(config.cell)
    devices = soft_cell(config.cell)
    devices["fixture"] = stalled.dev
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(
            lambda e: (
                isinstance(e, StepEvent) and e.step_kind == "fixture_move" and e.status is StepStatus.STARTED
            )
        )
        at_edge = press_estop(devices)
        await engine.wait_for(State.ABORTED, timeout=T)
        for _ in range(10):
            await asyncio.sleep(0)
        after = total_writes(devices)

    assert after == at_edge
    failed = {e.step_kind: e.detail for e in sink.of(StepEvent) if e.status is StepStatus.FAILED}
    # The cut move's finalizer (stop the axes) was refused too: after an e-stop no finalizer writes.
    assert failed["fixture_move"].startswith("cancelled; finalizer failed:")
    assert "not sent: e-stop pressed" in failed["fixture_move"]
    assert [e.status for e in sink.of(ChangeoverEvent)][-1] is ChangeoverStatus.ABORTED


async def test_reset_is_refused_while_the_estop_is_pressed_and_accepted_once_released(
    config: LoadedConfig,
) -> None:
    devices = soft_cell(config.cell)
    sink = FakeSink()
    engine = Engine(config, devices, sink)
    async with running(engine):
        await producing(engine)
        press_estop(devices)
        await engine.wait_for(State.ABORTED, timeout=T)
        await engine.command("clear", by="op")
        await engine.wait_for(State.STOPPED, timeout=T)
        with pytest.raises(InterlockTripped, match="e-stop is pressed"):
            await engine.command("reset", by="op")
        with pytest.raises(WriteInhibited):
            await engine._profiles["fixture"].tag("clamp").write(True)
        devices["safety"].set("estop_ok", True)
        await sink.wait_for(lambda e: isinstance(e, AlarmEvent) and e.alarm == ESTOP_ALARM and not e.active)
        state_before_reset = engine.status().state
        await engine.command("reset", by="op")
        await engine.wait_for(State.IDLE, timeout=T)
        inhibited = engine.inhibit.active
        await engine.acknowledge(ESTOP_ALARM, by="anna")
        shown = engine.status().alarms

    assert state_before_reset == "Stopped"  # released, but nothing restarted by itself
    assert not inhibited
    assert alarms(sink, ESTOP_ALARM) == [
        (AlarmAction.RAISED, True, "engine"),
        (AlarmAction.CLEARED, False, "engine"),
        (AlarmAction.ACKNOWLEDGED, False, "anna"),
    ]
    assert shown == ()


async def test_a_device_link_down_raises_its_alarm_and_up_again_clears_it(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    await health_alarm(engine, Health("robot1", LinkState.CONNECTING, 0.0))
    await health_alarm(engine, Health("robot1", LinkState.DOWN, 0.0, "connection refused"))
    shown = engine.status().alarms
    await health_alarm(engine, Health("robot1", LinkState.UP, 0.0))

    assert [(a.id, a.severity, a.source) for a in shown] == [("device:robot1", Severity.WARNING, "robot1")]
    assert "connection refused" in shown[0].message
    assert alarms(sink, "device:robot1") == [
        (AlarmAction.RAISED, True, "engine"),
        (AlarmAction.CLEARED, False, "engine"),
    ]
