"""The e-stop and the guard door on the simulators, through the real drivers: after the e-stop edge no command
leaves (the simulators' write counters do not move), the cell goes Aborting then Aborted, and a guard door
opened in production suspends the cell until it is closed again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from cellctl.core.clock import SystemClock
from cellctl.core.events import AlarmEvent, PartProduced, StateChanged, StepEvent, StepStatus
from cellctl.core.ports import Driver, LinkState
from cellctl.core.tags import Reading, TagValue
from cellctl.drivers import build_driver
from cellctl.engine import Engine, OrderRequest, State
from cellctl.errors import InterlockTripped
from cellctl.schema.load import LoadedConfig, load_config
from device_sims.harness import SimCell
from tests.conftest import CONFIG_DIR
from tests.fixtures.drivers import wait_health
from tests.fixtures.journal import Journal

TIMEOUT = 10.0
"""Bound of every wait here (s); a green run takes well under a second per test."""


@pytest.fixture
def sim_time_scale() -> float:
    """A fixture move of the example changeover (about 0.14 s here) is still under way when the test
    presses the e-stop right after seeing it start."""
    return 0.02


class CountingBackend:
    """A driver seen through a counter of the writes and calls the engine hands it (sent or in flight)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.started = 0
        self.finished = 0

    @property
    def device(self) -> str:
        return self.driver.device

    async def read(self, tag: str) -> Reading:
        return await self.driver.read(tag)

    async def write(self, tag: str, value: TagValue) -> None:
        self.started += 1
        try:
            await self.driver.write(tag, value)
        finally:
            self.finished += 1

    def last(self, tag: str) -> Reading:
        return self.driver.last(tag)

    def watch(self, callback: Callable[[str, Reading], None]) -> Callable[[], None]:
        return self.driver.watch(callback)

    async def call(self, method: str, args: Sequence[TagValue]) -> tuple[TagValue, ...]:
        self.started += 1
        try:
            return await self.driver.call(method, args)
        finally:
            self.finished += 1


@dataclass
class Edge:
    """What was sent when the engine saw the e-stop pressed (taken in the same callback as the inhibit)."""

    sim_writes: int = -1
    started: int = -1
    in_flight: int = -1
    seen_at: float = 0.0
    """Loop time the engine saw it (for the printed latency)."""


@dataclass
class Rig:
    sim: SimCell
    engine: Engine
    journal: Journal
    backends: Mapping[str, CountingBackend]

    def sim_writes(self) -> int:
        return sum(self.sim.writes.values())

    def started(self) -> int:
        return sum(b.started for b in self.backends.values())

    def in_flight(self) -> int:
        return sum(b.started - b.finished for b in self.backends.values())

    def watch_estop(self) -> Edge:
        """Snapshot the counters at the moment the engine learns the e-stop is pressed."""
        edge = Edge()
        safety = self.backends["safety"]

        def on_reading(tag: str, reading: Reading) -> None:
            if tag == "estop_ok" and reading.value is False and edge.started < 0:
                edge.sim_writes, edge.started, edge.in_flight = (
                    self.sim_writes(),
                    self.started(),
                    self.in_flight(),
                )
                edge.seen_at = asyncio.get_running_loop().time()

        safety.watch(on_reading)
        return edge


@asynccontextmanager
async def rig(sim_cell: SimCell) -> AsyncIterator[Rig]:
    config: LoadedConfig = load_config(CONFIG_DIR).with_cell(sim_cell.cell_config())
    clock = SystemClock()
    drivers = {name: build_driver(name, dev, clock) for name, dev in config.cell.devices.items()}
    backends = {name: CountingBackend(d) for name, d in drivers.items()}
    journal = Journal(TIMEOUT)
    engine = Engine(config, backends, journal, clock)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(d.run(), name=f"driver:{name}") for name, d in drivers.items()]
        tasks.append(group.create_task(engine.run(), name="engine"))
        try:
            await _all_up(drivers, engine)
            yield Rig(sim_cell, engine, journal, backends)
        finally:
            for task in tasks:
                task.cancel()


async def _all_up(drivers: Mapping[str, Driver], engine: Engine) -> None:
    """Wait until the engine is Stopped and every driver's link is UP (event-driven, bounded)."""
    await engine.wait_for(State.STOPPED, timeout=TIMEOUT)
    for driver in drivers.values():
        await wait_health(driver, LinkState.UP, TIMEOUT)


async def _start(r: Rig, quantity: int) -> None:
    await r.engine.submit(OrderRequest("PO-1", "oslo", quantity), by="mes")
    await r.engine.command("reset", by="op")
    await r.engine.wait_for(State.IDLE, timeout=TIMEOUT)
    await r.engine.command("start", by="op")


async def _settled_after_abort(r: Rig) -> float:
    """Aborted, then a quiet moment longer than a poll and a robot cycle, for any stray command to land;
    returns the loop time it was Aborted."""
    await r.engine.wait_for(State.ABORTED, timeout=TIMEOUT)
    aborted_at = asyncio.get_running_loop().time()
    await asyncio.sleep(0.2)
    return aborted_at


def _report(what: str, r: Rig, edge: Edge, pressed_at: float, aborted_at: float) -> None:
    print(
        f"\n{what}: seen {1000 * (edge.seen_at - pressed_at):.1f} ms after the input changed, Aborted "
        f"{1000 * (aborted_at - edge.seen_at):.1f} ms after that; at the edge {edge.sim_writes} sim writes, "
        f"{edge.started} sent, {edge.in_flight} in flight; after Aborted {r.sim_writes()} sim writes, "
        f"{r.started()} sent, refused {r.engine.inhibit.refused}"
    )


async def test_estop_in_production_aborts_and_no_command_leaves_after_the_edge(sim_cell: SimCell) -> None:
    async with rig(sim_cell) as r:
        await _start(r, 1000)
        await r.journal.wait_for(lambda e: isinstance(e, PartProduced) and e.index >= 2)
        edge = r.watch_estop()
        pressed_at = asyncio.get_running_loop().time()
        async with sim_cell.faults.safety_input("safety", "estop_ok", False):
            aborted_at = await _settled_after_abort(r)
            _report("e-stop in production", r, edge, pressed_at, aborted_at)

            assert edge.started >= 0, "the engine never saw the e-stop"
            assert r.started() == edge.started  # nothing sent after the edge, finalizers and finally included
            assert r.sim_writes() - edge.sim_writes <= edge.in_flight  # only what had already left
            assert r.journal.states()[-2:] == ["Aborting", "Aborted"]
            await r.engine.command("clear", by="op")
            await r.engine.wait_for(State.STOPPED, timeout=TIMEOUT)
            with pytest.raises(InterlockTripped, match="e-stop is pressed"):
                await r.engine.command("reset", by="op")
        assert r.started() == edge.started  # released: still nothing restarts by itself


async def test_estop_in_a_changeover_aborts_it_and_no_command_leaves_after_the_edge(
    sim_cell: SimCell,
) -> None:
    async with rig(sim_cell) as r:
        await _start(r, 1)
        await r.journal.wait_for(
            lambda e: (
                isinstance(e, StepEvent) and e.step_kind == "fixture_move" and e.status is StepStatus.STARTED
            )
        )
        edge = r.watch_estop()
        pressed_at = asyncio.get_running_loop().time()
        async with sim_cell.faults.safety_input("safety", "estop_ok", False):
            aborted_at = await _settled_after_abort(r)
            _report("e-stop in a changeover", r, edge, pressed_at, aborted_at)

            assert edge.started >= 0, "the engine never saw the e-stop"
            assert r.started() == edge.started
            assert r.sim_writes() - edge.sim_writes <= edge.in_flight
            assert r.journal.states()[-2:] == ["Aborting", "Aborted"]
            moves = [
                e for e in r.journal.events if isinstance(e, StepEvent) and e.step_kind == "fixture_move"
            ]
            assert moves[-1].status is StepStatus.FAILED and "e-stop" in moves[-1].detail


async def test_guard_door_open_suspends_and_closing_it_resumes(sim_cell: SimCell) -> None:
    async with rig(sim_cell) as r:
        await _start(r, 1000)
        await r.journal.wait_for(lambda e: isinstance(e, PartProduced))
        async with sim_cell.faults.safety_input("safety", "guard_closed", False):
            await r.engine.wait_for(State.SUSPENDED, timeout=TIMEOUT)
            made = sum(isinstance(e, PartProduced) for e in r.journal.events)
        await r.journal.wait_for(lambda e: isinstance(e, StateChanged) and e.state == "Unsuspending")
        await r.engine.wait_for(State.EXECUTE, timeout=TIMEOUT)
        await r.journal.wait_for(lambda e: isinstance(e, PartProduced) and e.index > made)
        await r.engine.command("abort", by="op")

        guard = [(e.action.value, e.active) for e in r.journal.events if isinstance(e, AlarmEvent)]
        assert ("raised", True) in guard and ("cleared", False) in guard
        assert [
            e.by for e in r.journal.events if isinstance(e, StateChanged) and e.state == "Suspending"
        ] == ["interlock"]
