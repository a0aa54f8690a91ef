"""ControllerLink: the TUI's link reconnects by itself when the controller goes away, says so meanwhile, and
resumes the event stream where it left off (a fresh snapshot only from another server instance)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService
from cellctl.core.events import Severity
from cellctl.engine import Engine, State
from cellctl.schema.load import load_config
from cellctl.tui.app import CellApp
from cellctl.tui.link import BACKOFF_MAX_S, ControllerLink, LinkState, backoff_s
from tests.integration.test_api import WAIT_S, ListSink, start, stop
from tests.softcell import soft_cell
from tests.tui.conftest import SIZE, notes, until


@dataclass
class Controller:
    """An engine that outlives its control socket: the socket's server can be stopped and started again."""

    path: Path
    engine: Engine
    service: ControlService
    server: ControlServer
    task: asyncio.Task[None] | None = None

    async def up(self, server: ControlServer | None = None) -> None:
        if server is not None:
            self.server = server
        self.task = await start(self.server)

    async def down(self) -> None:
        assert self.task is not None
        await stop(self.task)
        self.task = None


@pytest.fixture
async def controller(config_dir: Path, tmp_path: Path) -> AsyncIterator[Controller]:
    config = load_config(config_dir)
    sink = ListSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    engine_task = asyncio.get_running_loop().create_task(engine.run(), name="test:engine")
    await engine.wait_for(State.STOPPED, timeout=WAIT_S)
    service = ControlService(engine, identity=config.cell.identity, sink=sink)
    path = tmp_path / "cell.sock"
    controller = Controller(path, engine, service, ControlServer(path, service))
    await controller.up()
    try:
        yield controller
    finally:
        if controller.task is not None:
            await controller.down()
        await stop(engine_task)


class RecordingApp(CellApp):
    """The app, keeping every link state it is told."""

    def __init__(self, link: ControllerLink) -> None:
        super().__init__(link)
        self.states: list[LinkState] = []

    def link_state(self, state: LinkState) -> None:
        self.states.append(state)
        super().link_state(state)


def link_text(app: CellApp) -> str:
    return str(app.query_one("#hd-link", Static).content)


def test_backoff_doubles_from_a_fifth_of_a_second_to_two_seconds() -> None:
    assert [backoff_s(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff_s(100) == BACKOFF_MAX_S


async def test_the_link_says_the_controller_is_away_comes_back_by_itself_and_resumes(
    controller: Controller,
) -> None:
    link = ControllerLink(controller.path)
    app = RecordingApp(link)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: link.connected and link.status is not None, "the first status")
        assert link_text(app) == "connected" and link.resyncs == 1
        epoch = link.epoch

        # When the controller's socket goes away, then the header says so and requests say unreachable
        await controller.down()
        await until(pilot, lambda: "controller away - reconnecting (attempt" in link_text(app), "away")
        assert app.query_one("#header").has_class("-away")
        await pilot.press("r")
        await until(pilot, lambda: any("command refused: unreachable" in n for n in notes(app)), "refusal")

        # When it is back (the same server instance), then the link reconnects by itself and resumes the
        # event stream after the last event it saw, without a fresh snapshot
        await controller.up()
        await until(pilot, lambda: link.connected, "the link back up")
        assert link.resyncs == 1 and link.epoch == epoch and link_text(app) == "connected"
        assert not app.query_one("#header").has_class("-away")
        seen = link.since_seq or 0
        await pilot.press("r")
        await until(pilot, lambda: (link.status or {}).get("state") == "Idle", "Idle after the reset")
        assert (link.since_seq or 0) > seen

        # When it goes away again, then the attempts count afresh
        await controller.down()
        await until(pilot, lambda: not link.connected, "the link down again")
    last_up = max(i for i, s in enumerate(app.states) if s.connected)
    assert [s.attempt for s in app.states[last_up + 1 :]][:1] == [1], app.states


async def test_another_server_instance_gives_a_fresh_snapshot(controller: Controller) -> None:
    link = ControllerLink(controller.path)
    app = CellApp(link)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: link.connected and link.status is not None, "the first status")
        await controller.down()
        await until(pilot, lambda: not link.connected, "the link down")
        await controller.up(ControlServer(controller.path, controller.service))
        await until(pilot, lambda: link.connected and link.resyncs == 2, "a resync from the new server")
        assert link.epoch == controller.server.hub.epoch


class Recorder:
    """A LinkListener that keeps what it hears."""

    def __init__(self) -> None:
        self.states: list[bool] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.heard = asyncio.Event()

    def link_state(self, state: LinkState) -> None:
        self.states.append(state.connected)
        self.heard.set()

    def link_status(self, status: dict[str, Any]) -> None:
        self.statuses.append(status)
        self.heard.set()

    def link_event(self, push: dict[str, Any]) -> None:
        self.events.append(push)
        self.heard.set()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until ``predicate()`` holds, re-checking each time the link reports something."""
        try:
            async with asyncio.timeout(WAIT_S):
                while not predicate():
                    self.heard.clear()
                    await self.heard.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_burst_of_events_is_forwarded_whole_but_refreshes_the_status_only_a_few_times(
    controller: Controller,
) -> None:
    link = ControllerLink(controller.path)
    heard = Recorder()
    task = asyncio.get_running_loop().create_task(link.run(heard), name="test:link")
    try:
        await heard.until(lambda: link.connected and bool(heard.statuses), "the first status")
        before_events, before_statuses = len(heard.events), len(heard.statuses)
        burst = 60
        for n in range(burst):
            await controller.engine.alarms.raise_alarm(
                f"test:{n}", severity=Severity.WARNING, message="burst", source="test"
            )
            await asyncio.sleep(0.005)  # pacing the producer: the events arrive over >= 0.3 s, not at once
        await heard.until(lambda: len(heard.events) - before_events >= burst, "every event of the burst")
        await heard.until(
            lambda: len(heard.statuses[-1].get("alarms") or ()) == burst, "a status with the whole burst"
        )
        refreshes = len(heard.statuses) - before_statuses
        print(f"{burst} events -> {refreshes} status refreshes")
        assert 1 <= refreshes < burst // 3, refreshes
        assert [e["seq"] for e in heard.events] == sorted({e["seq"] for e in heard.events})
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=WAIT_S)
    assert task.cancelled()
