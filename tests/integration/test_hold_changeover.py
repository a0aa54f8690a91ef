"""Hold in the middle of a changeover on the simulators, through the real drivers: the tool change is let
finish, the fixture move is stopped where it is, and Unhold sends no command a second time."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from cellctl.core.clock import SystemClock
from cellctl.core.events import ChangeoverEvent, ChangeoverStatus, JobEvent, JobStatus, StepEvent
from cellctl.core.ports import Driver, LinkState
from cellctl.drivers import build_driver
from cellctl.engine import Engine, OrderRequest, State
from cellctl.schema.load import load_config
from device_sims.harness import SimCell
from tests.fixtures.drivers import wait_health
from tests.fixtures.journal import Journal

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
"""Bound of every wait here (s); a green run takes about a second."""


@pytest.fixture
def sim_time_scale() -> float:
    """Slow enough that a tool change (0.4 s) and a fixture move (0.7 s) are still under way when the test
    holds the cell right after seeing both start."""
    return 0.1


async def test_hold_mid_tool_change_lets_it_finish_and_stops_the_fixture_move(sim_cell: SimCell) -> None:
    config = load_config(REPO / "config").with_cell(sim_cell.cell_config())
    clock = SystemClock()
    drivers = {name: build_driver(name, dev, clock) for name, dev in config.cell.devices.items()}
    journal = Journal(TIMEOUT)
    engine = Engine(config, drivers, journal, clock)
    counters = sim_cell.counters

    def width() -> float:
        return float(sim_cell.value("fixture.width_act"))

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(d.run(), name=f"driver:{name}") for name, d in drivers.items()]
        tasks.append(group.create_task(engine.run(), name="engine"))
        try:
            await _all_up(drivers, engine)
            job = await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
            await engine.command("reset", by="op")
            await engine.wait_for(State.IDLE, timeout=TIMEOUT)
            await engine.command("start", by="op")
            # Given the tool changer changing and the fixture's width axis well on its way, when held:
            await sim_cell.wait_for(
                lambda: bool(sim_cell.value("toolchanger.moving")) and width() > 20.0, timeout=TIMEOUT
            )
            await engine.command("hold", by="op")
            await engine.wait_for(State.HELD, timeout=TIMEOUT)

            # Then the tool change completed, once, and the move was stopped part way by re-targeting.
            assert sim_cell.value("toolchanger.tool_current") == 1
            assert counters[("toolchanger", "tool_change")] == 1
            assert counters[("fixture", "move:width")] == 2
            await sim_cell.wait_for(lambda: bool(sim_cell.value("fixture.in_position")), timeout=TIMEOUT)
            stopped = width()
            assert 20.0 < stopped < 420.0
            assert float(sim_cell.value("fixture.width_sp")) == pytest.approx(stopped, abs=0.05)
            steps = {e.step: (e.status.value, e.detail) for e in journal.events if isinstance(e, StepEvent)}
            assert steps["toolchanger:tool_change"] == ("done", "")
            assert steps["fixture:fixture_move"] == ("failed", "cancelled; finalized")
            assert "robot1:robot_program" not in steps  # it comes after the tool change: not started
            assert counters[("robot1", "program_load")] == 0

            # When unheld, then the changeover completes from the setup read back and the job runs, with
            # no tool change or setpoint sent twice.
            await engine.command("unhold", by="op")
            await journal.wait_for(
                lambda e: isinstance(e, JobEvent) and e.job == job.job_id and e.status is JobStatus.COMPLETED
            )
            assert counters[("toolchanger", "tool_change")] == 1
            assert counters[("stapler", "setpoint:force_sp")] == 1
            assert counters[("robot1", "program_load")] == 1
            assert width() == pytest.approx(420.0, abs=0.05)
            changeovers = [e.status for e in journal.events if isinstance(e, ChangeoverEvent)]
            assert changeovers == [
                ChangeoverStatus.STARTED,
                ChangeoverStatus.FAILED,
                ChangeoverStatus.STARTED,
                ChangeoverStatus.COMPLETED,
            ]
        finally:
            for task in tasks:
                task.cancel()


async def _all_up(drivers: Mapping[str, Driver], engine: Engine) -> None:
    """Wait until the engine is Stopped and every driver's link is UP (event-driven, bounded)."""
    await engine.wait_for(State.STOPPED, timeout=TIMEOUT)
    for driver in drivers.values():
        await wait_health(driver, LinkState.UP, TIMEOUT)
