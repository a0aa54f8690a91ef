"""Test helpers for one pane: a small ``SocketLink`` over ControlClient (a stand-in for the real link of
``cellctl.tui.link``), a ``FakeLink`` with canned, time-free replies for snapshots, and an app that mounts one
pane and feeds it the link's status and events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Footer

from cellctl.api.client import ControlClient
from cellctl.errors import ApiError
from cellctl.tui.pane import Link, Outcome, Pane

WAIT_S = 5.0

READS = frozenset({"status", "spc", "hello", "journal"})
"""Requests that change nothing: no status refresh after them."""


class SocketLink:
    """One connection to a controller: requests as Outcomes, the status refreshed after every request that
    may change something and after every pushed event (which also goes to ``on_event``)."""

    def __init__(self, path: Path) -> None:
        self._client = ControlClient(path)
        self._status: dict[str, Any] | None = None
        self._connected = False
        self.ready = asyncio.Event()
        self.on_status: Callable[[dict[str, Any]], None] = lambda _status: None
        self.on_event: Callable[[dict[str, Any]], None] = lambda _push: None
        self.sent: list[tuple[str, dict[str, Any]]] = []

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def status(self) -> dict[str, Any] | None:
        return self._status

    async def request(self, cmd: str, **args: Any) -> Outcome:
        self.sent.append((cmd, args))
        try:
            result = await self._client.request(cmd, **args)
        except ApiError as exc:
            outcome = Outcome(False, code=exc.code, message=str(exc))
        else:
            outcome = Outcome(True, result)
        if cmd not in READS:
            await self.refresh()
        return outcome

    async def refresh(self) -> None:
        try:
            status = await self._client.request("status")
        except ApiError:
            return
        self._status = status
        self.on_status(status)

    async def run(self) -> None:
        """Connect, watch, and follow the events until cancelled (the app's exit)."""
        async with self._client:
            await self._client.watch()
            self._connected = True
            await self.refresh()
            self.ready.set()
            changed = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._refresher(changed), name="test:link-refresh")
                async for push in self._client.events():
                    self.on_event(push.model_dump(mode="json"))
                    changed.set()

    async def _refresher(self, changed: asyncio.Event) -> None:
        """One status request at a time, however fast events come (a burst costs one refresh)."""
        while True:
            await changed.wait()
            changed.clear()
            await self.refresh()


class FakeLink:
    """A controller that answers from canned data: ``status`` as given, ``replies[cmd]`` for other commands
    (an ``unknown_command`` refusal for the rest); every request is kept in ``sent``."""

    def __init__(self, status: dict[str, Any], replies: dict[str, Outcome] | None = None) -> None:
        self._status = status
        self.replies = dict(replies or {})
        self.sent: list[tuple[str, dict[str, Any]]] = []

    @property
    def connected(self) -> bool:
        return True

    @property
    def status(self) -> dict[str, Any] | None:
        return self._status

    async def request(self, cmd: str, **args: Any) -> Outcome:
        self.sent.append((cmd, args))
        if cmd == "status":
            return Outcome(True, self._status)
        return self.replies.get(cmd, Outcome(False, code="unknown_command", message=f"no canned {cmd!r}"))


class PaneApp(App[None]):
    """One pane and the footer, fed with the link's status and events (the real app has tabs)."""

    def __init__(self, make: Callable[[Link], Pane], link: SocketLink | FakeLink) -> None:
        super().__init__()
        self.link = link
        self.pane = make(link)

    def compose(self) -> ComposeResult:
        yield self.pane
        yield Footer()

    def on_mount(self) -> None:
        if isinstance(self.link, SocketLink):
            # Through the app's message queue, as a real app would: none reaches the pane after exit.
            self.link.on_status = lambda status: self.call_later(self.pane.show, status)
            self.link.on_event = lambda push: self.call_later(self.pane.event, push)
            self.run_worker(self.link.run(), name="test:link", exit_on_error=True)


async def until(pilot: Pilot[Any], condition: Callable[[], bool], what: str = "the condition") -> None:
    """Let the app run until ``condition()`` holds; AssertionError after WAIT_S."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                await pilot.pause(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def notifications(app: App[Any]) -> list[str]:
    """The texts of the notifications the app shows now: ``title: message``."""
    return [f"{n.title}: {n.message}" for n in app._notifications]
