"""Fixtures and helpers of the TUI tests: a real controller on soft devices behind a real socket, an app that
hosts one pane on a link (the real ``ControllerLink`` or a canned ``FakeLink``), and condition waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Footer

from cellctl.core.events import JobEvent, JobStatus
from cellctl.drivers.soft import SoftDriver
from cellctl.engine import OrderRequest, State
from cellctl.schema.load import load_config
from cellctl.tui.link import ControllerLink, LinkState
from cellctl.tui.pane import Link, Outcome, Pane
from tests.integration.test_api import WAIT_S, Cell, serving
from tests.softcell import soft_cell

SIZE = (80, 24)

SnapCompare = Callable[..., bool]
"""The ``snap_compare`` fixture of pytest-textual-snapshot."""


@dataclass
class Live:
    """A controller the TUI talks to, and the soft devices under it (to press the e-stop...)."""

    cell: Cell
    devices: dict[str, SoftDriver]

    @property
    def path(self) -> Path:
        return self.cell.path


@pytest.fixture
async def live(config_dir: Path, tmp_path: Path) -> AsyncIterator[Live]:
    config = load_config(config_dir)
    devices = soft_cell(config.cell)
    async with serving(config, devices, tmp_path) as cell:
        yield Live(cell, devices)


@pytest.fixture
def cell(live: Live) -> Cell:
    """The controller of ``live``, for the tests that do not touch its devices."""
    return live.cell


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times are shown in local time: pin it so the screenshots do not depend on the machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def start_order(cell: Cell, order: OrderRequest) -> str:
    """Submit ``order`` (as the MES), reset the cell to Idle and start it; the job's id."""
    job = await cell.engine.submit(order, by="mes")
    await cell.engine.command("reset", by="op")
    await cell.engine.wait_for(State.IDLE, timeout=WAIT_S)
    await cell.engine.command("start", by="op")
    return job.job_id


def completed(cell: Cell, job_id: str) -> bool:
    """The controller journaled the job as completed."""
    return any(
        isinstance(e, JobEvent) and e.job_id == job_id and e.status is JobStatus.COMPLETED
        for e in cell.sink.events
    )


class RecordingLink(ControllerLink):
    """The real link, keeping every request it is asked to send in ``sent`` (to see what a pane asked)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def request(self, cmd: str, **args: Any) -> Outcome:
        self.sent.append((cmd, args))
        return await super().request(cmd, **args)


class PaneApp(App[None]):
    """One pane and the footer on ``link``; with a ``ControllerLink`` the app runs it and is its listener, as
    ``CellApp`` is (the real app has the header and tabs). Nothing reaches the pane once the app stops
    running: the link may report until its worker is cancelled, while the pane's widgets are taken down."""

    def __init__(self, make: Callable[[Link], Pane], link: Link) -> None:
        super().__init__()
        self.link = link
        self.pane = make(link)
        self.statuses = 0
        """How many status snapshots the link has shown the pane."""

    def compose(self) -> ComposeResult:
        yield self.pane
        yield Footer()

    def on_mount(self) -> None:
        if isinstance(self.link, ControllerLink):
            self.run_worker(self.link.run(self), name="tui-link", group="link", exit_on_error=True)

    def link_state(self, state: LinkState) -> None:
        """Nothing to show: the tests wait for ``link.connected``."""

    def link_status(self, status: dict[str, Any]) -> None:
        if self.is_running:
            self.statuses += 1
            self.pane.show(status)

    def link_event(self, push: dict[str, Any]) -> None:
        if self.is_running:
            self.pane.event(push)


def linked(app: PaneApp) -> bool:
    """The app's link is up and has the first status."""
    return app.link.connected and app.link.status is not None


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Let the app run until ``predicate()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await pilot.pause(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def on_top(app: App[Any], screen: type[Screen[Any]]) -> bool:
    """True once a screen of type ``screen`` is on top and mounted: a pushed screen is ``app.screen`` at once,
    before its widgets are composed and its ``on_mount`` has run (keys and queries then find nothing)."""
    return isinstance(app.screen, screen) and app.screen.is_mounted


def notes(app: App[Any]) -> list[str]:
    """The notifications shown so far, as ``title: message``."""
    return [f"{n.title}: {n.message}" for n in app._notifications]
