"""A store that cannot record holds the cell with the `store` alarm; once it records again, Unhold goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.api.protocol import Request, Role
from cellctl.api.service import Caller, ControlService
from cellctl.core.clock import SystemClock
from cellctl.core.events import (
    AlarmAction,
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    JobEvent,
    JobStatus,
    OperatorAction,
    PartProduced,
    Severity,
    StateChanged,
    StepEvent,
    StepStatus,
)
from cellctl.core.packml import Command, State, UnitMode
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.engine import Engine, OrderRequest
from cellctl.engine.cell import PackMLCell
from cellctl.engine.engine import HOLD_ALARM, STORE_ALARM
from cellctl.engine.storewatch import StoreWatch
from cellctl.errors import StoreError
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import FailingStore, soft_cell
from tests.unit.test_engine import T, reset_and_start, running

SORT_TAGS = ("accept", "reject")


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def alarm_actions(events: list[Event], alarm: str) -> list[AlarmAction]:
    return [e.action for e in events if isinstance(e, AlarmEvent) and e.alarm == alarm]


def sort_writes(devices: dict[str, SoftDriver]) -> list[tuple[str, TagValue]]:
    """The accept/reject outputs written, in order."""
    return [w for w in devices["gauge"].writes if w[0] in SORT_TAGS]


async def test_a_store_failure_during_a_part_holds_the_cell_with_the_alarm_and_unhold_goes_on(
    config: LoadedConfig,
) -> None:
    devices = soft_cell(config.cell)
    store = FailingStore()
    store.fail_from(lambda e: isinstance(e, PartProduced) and e.index == 2)
    engine = Engine(config, devices, store)
    heard: list[Event] = []
    engine.add_listener(heard.append)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 3), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=T)

        # Held, with the alarm shown and the reason naming the fact and the store's error.
        status = engine.status()
        assert status.state == "Held"
        assert "part" in status.reason and f"{job.job_id}-0002" in status.reason
        assert "disk is full" in status.reason
        shown = {a.id: a for a in status.alarms}
        assert shown[STORE_ALARM].active and shown[STORE_ALARM].severity is Severity.CRITICAL
        assert shown[HOLD_ALARM].active
        # Watchers heard of it although nothing could be journaled.
        assert AlarmAction.RAISED in alarm_actions(heard, STORE_ALARM)
        assert [e.state for e in heard if isinstance(e, StateChanged)][-2:] == ["Holding", "Held"]
        # The part whose record failed was not handed on, nor counted; the first one was.
        assert len(sort_writes(devices)) == 2
        assert engine.job(job.job_id).produced == 1 and status.counters.parts == 1
        assert not any(isinstance(e, AlarmEvent) for e in store.events)  # nothing journaled since

        # The store records again: Unhold, and production goes on to the end of the job.
        store.heal()
        await engine.command("unhold", by="op")
        await engine.wait_for(State.SUSPENDED, timeout=T)
        status = engine.status()

    assert status.counters.parts == 3 and not any(a.active for a in status.alarms)
    assert len(sort_writes(devices)) == 6
    journal = store.events
    assert [p.index for p in journal if isinstance(p, PartProduced)] == [1, 2, 3]
    done = [e for e in journal if isinstance(e, JobEvent) and e.status is JobStatus.COMPLETED]
    assert [(e.produced, e.good) for e in done] == [(3, 3)]
    # The journal tells the story in order: the alarm raised, the hold, the Unhold, the alarm cleared.
    raised = next(i for i, e in enumerate(journal) if isinstance(e, AlarmEvent) and e.alarm == STORE_ALARM)
    story = [
        (type(e).__name__, getattr(e, "alarm", getattr(e, "state", "")))
        for e in journal[raised:]
        if isinstance(e, StateChanged | AlarmEvent)
    ][:7]
    assert story == [
        ("AlarmEvent", STORE_ALARM),
        ("AlarmEvent", HOLD_ALARM),
        ("StateChanged", "Holding"),
        ("StateChanged", "Held"),
        ("StateChanged", "Unholding"),
        ("AlarmEvent", STORE_ALARM),
        ("AlarmEvent", HOLD_ALARM),
    ]
    assert alarm_actions(journal, STORE_ALARM) == [AlarmAction.RAISED, AlarmAction.CLEARED]
    cleared = [e for e in journal if isinstance(e, AlarmEvent) and e.action is AlarmAction.CLEARED]
    assert cleared[0].acked_by == "op"
    assert [e.ts for e in journal] == sorted(e.ts for e in journal)


async def test_a_store_failure_during_a_changeover_step_holds_and_unhold_plans_again(
    config: LoadedConfig,
) -> None:
    devices = soft_cell(config.cell)
    store = FailingStore()
    store.fail_from(lambda e: isinstance(e, StepEvent) and e.status is StepStatus.DONE)
    engine = Engine(config, devices, store)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=T)
        status = engine.status()
        assert status.changeover is None and status.counters.parts == 0
        assert "step" in status.reason and "disk is full" in status.reason
        assert engine.alarms.is_active(STORE_ALARM)
        assert sort_writes(devices) == []

        store.heal()
        await engine.command("unhold", by="op")
        await engine.wait_for(State.SUSPENDED, timeout=T)

    journal = store.events
    completed = [
        e for e in journal if isinstance(e, ChangeoverEvent) and e.status is ChangeoverStatus.COMPLETED
    ]
    assert len(completed) == 1  # planned again from read-back after the Unhold
    assert [p.index for p in journal if isinstance(p, PartProduced)] == [1]
    assert alarm_actions(journal, STORE_ALARM) == [AlarmAction.RAISED, AlarmAction.CLEARED]
    assert not engine.alarms.is_active(STORE_ALARM)


async def test_the_store_alarm_clears_on_the_next_record_that_succeeds(config: LoadedConfig) -> None:
    store = FailingStore()
    engine = Engine(config, soft_cell(config.cell), store)
    async with running(engine):
        store.fail_from(lambda _e: True)
        with pytest.raises(StoreError, match="job"):
            await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        assert engine.alarms.is_active(STORE_ALARM)
        assert engine.status().queue == ()  # nothing half-applied
        store.heal()
        await engine.submit(OrderRequest("PO-2", "oslo", 1), by="mes")
        alarm = engine.alarms.get(STORE_ALARM)
        assert alarm is not None and not alarm.active and alarm.acked_by is None  # shown until acked
        await engine.acknowledge(STORE_ALARM, by="op")
        assert engine.alarms.get(STORE_ALARM) is None
    kinds = [(type(e).__name__, getattr(e, "action", None)) for e in store.events[-4:]]
    assert kinds == [
        ("AlarmEvent", AlarmAction.RAISED),
        ("JobEvent", None),
        ("AlarmEvent", AlarmAction.CLEARED),
        ("AlarmEvent", AlarmAction.ACKNOWLEDGED),
    ]


async def test_a_state_move_the_store_refuses_takes_effect_a_mode_change_does_not() -> None:
    store = FailingStore()
    watch = StoreWatch(store)
    cell = PackMLCell(watch, SystemClock(), unjournaled=watch.defer)
    await cell.power_up(State.STOPPED)
    store.fail_from(lambda _e: True)
    with pytest.raises(StoreError, match="state_changed"):
        await cell.change_mode(UnitMode.MAINTENANCE, by="op")
    assert cell.unit_mode is UnitMode.PRODUCTION  # not journaled, so not in effect
    await cell.command(Command.RESET, by="op")  # safety first: a move takes effect all the same
    assert cell.state is State.RESETTING
    assert [e.state for e in watch.backlog if isinstance(e, StateChanged)] == ["Resetting"]
    store.heal()
    await cell.complete(State.RESETTING)
    assert [e.state for e in store.events if isinstance(e, StateChanged)] == ["Stopped", "Resetting", "Idle"]
    assert watch.backlog == () and watch.failure is None


async def test_the_watch_keeps_no_newer_fact_ahead_of_its_backlog() -> None:
    store = FailingStore()
    watch = StoreWatch(store)
    clock = SystemClock()
    first = StateChanged(
        ts=clock.wall(), state="Held", state_no=6, previous="Holding", command=None, by="engine"
    )
    store.fail_from(lambda _e: True)
    with pytest.raises(StoreError, match="state_changed"):
        await watch.record(first)
    assert watch.failure is not None and "disk is full" in watch.failure.error
    watch.defer(first, StoreError("disk full"))
    later = StateChanged(
        ts=clock.wall(), state="Unholding", state_no=7, previous="Held", command="unhold", by="op"
    )
    with pytest.raises(StoreError, match="1 earlier fact"):
        await watch.record(later)
    store.heal()
    await watch.record(later)
    assert store.events == [first, later]
    assert watch.failure is None


async def test_an_abort_completes_while_the_store_fails(config: LoadedConfig) -> None:
    devices = soft_cell(config.cell)
    store = FailingStore()
    store.fail_from(lambda e: isinstance(e, PartProduced) and e.index == 2)
    engine = Engine(config, devices, store)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 3), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=T)
        await engine.command("abort", by="op")  # the aborted job's record fails too
        await engine.wait_for(State.ABORTED, timeout=T)
        assert engine.job(job.job_id).status is JobStatus.ABORTED
        assert engine.alarms.is_active(STORE_ALARM)


async def test_an_operator_action_the_store_refuses_raises_the_store_alarm_and_is_heard_once(
    config: LoadedConfig,
) -> None:
    store = FailingStore()
    engine = Engine(config, soft_cell(config.cell), store)
    service = ControlService(engine, identity=config.cell.identity, sink=engine)
    heard: list[Event] = []
    unlisten = service.add_listener(heard.append)
    async with running(engine):
        store.fail_from(lambda _e: True)
        caller = Caller(uid=1000, gid=1000, pid=1, user="op", role=Role.OPERATOR)
        reply = await service.handle(Request(id=1, cmd="command", args={"name": "start"}), caller)
        assert reply.error is not None  # Start is refused in Stopped; the refusal is an operator action
        assert engine.alarms.is_active(STORE_ALARM)
        actions = [e for e in heard if isinstance(e, OperatorAction) and e.action != "lease"]
        assert [(a.action, a.accepted) for a in actions] == [("start", False)]
        assert any(isinstance(e, OperatorAction) for e in store.refused)
    unlisten()
