"""PackML unit modes: where the mode may change, what each mode allows, and the engine's journaled mode."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.events import ChangeoverEvent, ChangeoverStatus, Event, StateChanged, StepEvent
from cellctl.core.packml import (
    MODE_CHANGE_STATES,
    TRANSITIONS,
    Command,
    State,
    UnitMode,
    allowed_commands,
    check_command,
    check_mode_change,
    is_wait,
    mode_change_allowed,
    next_state,
)
from cellctl.engine import Engine, OrderRequest
from cellctl.engine.recovery import Recovery, recover
from cellctl.errors import InvalidTransition, ModeRefused
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell
from tests.unit.test_engine import FakeSink, T, reset_and_start, running

REAL_STATES = [s for s in State if s is not State.UNDEFINED]


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


# --- the model ----------------------------------------------------------------------------------------


def test_the_unit_modes_carry_their_tr88_numbers() -> None:
    assert {m.label: int(m) for m in UnitMode} == {
        "production": 1,
        "maintenance": 2,
        "manual": 3,
        "changeover": 4,
    }


@pytest.mark.parametrize("state", REAL_STATES, ids=lambda s: s.label)
def test_the_mode_changes_only_in_stopped_idle_and_aborted(state: State) -> None:
    allowed = state in (State.STOPPED, State.IDLE, State.ABORTED)

    assert mode_change_allowed(state) is allowed
    if not allowed:
        with pytest.raises(ModeRefused, match="changes only in"):
            check_mode_change(state, UnitMode.MAINTENANCE)


def test_the_mode_change_states_are_wait_states() -> None:
    assert all(is_wait(s) for s in MODE_CHANGE_STATES)


@pytest.mark.parametrize("state", REAL_STATES, ids=lambda s: s.label)
def test_every_mode_and_command_in_a_state_is_the_table_less_start_outside_production(state: State) -> None:
    for mode, command in itertools.product(UnitMode, Command):
        table_allows = command in TRANSITIONS[state]
        mode_allows = command is not Command.START or mode in (UnitMode.PRODUCTION, UnitMode.CHANGEOVER)

        assert (command in allowed_commands(state, mode)) is (table_allows and mode_allows), (mode, command)
        if table_allows and mode_allows:
            assert check_command(state, mode, command) is next_state(state, command)
        else:
            with pytest.raises(InvalidTransition):
                check_command(state, mode, command)


def test_changeover_cannot_be_selected_and_an_unknown_mode_names_the_choices() -> None:
    for text in ("changeover", "cleaning"):
        with pytest.raises(ModeRefused, match="choose production, maintenance, manual"):
            UnitMode.parse(text)
    assert UnitMode.parse(" Manual ") is UnitMode.MANUAL


# --- the engine ---------------------------------------------------------------------------------------


async def test_a_mode_change_in_stopped_is_journaled_with_the_mode_and_leaves_the_state(
    config: LoadedConfig,
) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        since = engine.status().since
        status = await engine.change_mode("maintenance", by="op")

    event = sink.of(StateChanged)[-1]
    assert (event.state, event.previous, event.command, event.mode, event.by) == (
        "Stopped",
        "Stopped",
        "mode",
        "maintenance",
        "op",
    )
    assert (status.mode, status.state, status.since) == ("maintenance", "Stopped", since)


async def test_in_maintenance_the_cell_takes_no_jobs_start_is_refused_and_not_recorded(
    config: LoadedConfig,
) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        await engine.change_mode("maintenance", by="op")
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await engine.command("reset", by="op")
        await engine.wait_for(State.IDLE, timeout=T)
        recorded = len(sink.events)
        with pytest.raises(ModeRefused, match="maintenance mode and takes no jobs"):
            await engine.command("start", by="op")
        status = engine.status()
        after = len(sink.events)

    assert after == recorded
    assert status.state == "Idle" and "start" not in status.allowed_commands
    assert [j.status.value for j in status.queue] == ["queued"]


async def test_the_mode_cannot_change_while_the_cell_is_producing(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
        recorded = len(sink.events)
        with pytest.raises(ModeRefused, match="changes only in Stopped, Idle, Aborted"):
            await engine.change_mode("manual", by="op")
        mode = engine.status().mode

    assert mode == "production"
    assert len(sink.events) == recorded


async def test_back_in_production_the_cell_starts_and_makes_the_queued_job(config: LoadedConfig) -> None:
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    async with running(engine):
        await engine.change_mode("manual", by="op")
        view = await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await engine.command("reset", by="op")
        await engine.wait_for(State.IDLE, timeout=T)
        await engine.change_mode("production", by="op")
        await engine.command("start", by="op")
        await engine.wait_for(State.SUSPENDED, timeout=T)
        job = engine.job(view.job_id)

    assert job.status.value == "completed"


class ModeSpy(FakeSink):
    """Notes the engine's mode as each changeover step is recorded."""

    engine: Engine | None = None
    modes: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.modes = []

    async def record(self, event: Event) -> int:
        if isinstance(event, StepEvent | ChangeoverEvent) and self.engine is not None:
            self.modes.append(self.engine.status().mode)
        return await super().record(event)


async def test_the_mode_shows_changeover_while_a_plan_runs_and_production_after(config: LoadedConfig) -> None:
    sink = ModeSpy()
    engine = Engine(config, soft_cell(config.cell), sink)
    sink.engine = engine
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=T)
        after = engine.status().mode

    changeovers = [e.status for e in sink.of(ChangeoverEvent)]
    assert ChangeoverStatus.COMPLETED in changeovers
    assert sink.modes and set(sink.modes) == {"changeover"}
    assert after == "production"
    suspended = [e for e in sink.of(StateChanged) if e.state == "Suspended"][-1]
    assert suspended.mode == "production"


@pytest.mark.parametrize(
    ("journaled", "powers_up_in"),
    [
        ("maintenance", "maintenance"),
        ("manual", "manual"),
        ("changeover", "production"),
        (None, "production"),
    ],
)
async def test_after_a_restart_the_cell_powers_up_in_the_mode_it_was_left_in(
    config: LoadedConfig, journaled: str | None, powers_up_in: str
) -> None:
    recovery = Recovery(unclean=False, last_state="Stopped", changeover=None, jobs=(), mode=journaled)
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell), sink, recovery=recovery)
    async with running(engine):
        mode = engine.status().mode

    assert mode == powers_up_in
    assert sink.of(StateChanged)[0].mode == powers_up_in


def test_recovery_reads_the_mode_of_the_newest_state_change() -> None:
    @dataclass
    class Row:
        id: int
        ts: float
        kind: str
        data: dict[str, Any]

    last = Row(7, 1.0, "state_changed", {"state": "Stopped", "mode": "manual"})

    found = recover(last_state=last, last_changeover=None, step_entries=(), job_entries=(), parts_after={})

    assert (found.mode, found.unclean) == ("manual", False)
