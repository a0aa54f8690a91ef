"""The TUI's live link to one controller: keeps the newest status, forwards events, reconnects by itself.

``ControllerLink.run`` is one supervisor loop that the app owns (a worker started on mount, cancelled on
exit): connect -> ``hello`` -> ``watch`` (resuming from the last sequence number and epoch after a reconnect)
-> a status refresh after every event (coalesced: at most one ``status`` request in flight and at most
``REFRESH_HZ`` per second) -> on any loss, capped backoff and again. It never writes to the terminal: the
TUI draws there (nothing is logged; what an operator needs to know reaches the listener).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cellctl.api.client import ConnectionLost, ControlClient, NotReachable, WatchDropped
from cellctl.errors import ApiError
from cellctl.tui.pane import Outcome

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 2.0
REFRESH_HZ = 10.0
"""Most status refreshes per second, however fast events arrive."""
REQUEST_TIMEOUT_S = 10.0
"""How long a request waits for its reply before the TUI says the controller did not answer."""
CONNECT_TIMEOUT_S = 5.0
"""How long connecting, ``hello`` and ``watch`` may take before the attempt counts as failed."""

UNREACHABLE = "unreachable"

LOSSES: tuple[type[Exception], ...] = (NotReachable, ConnectionLost, TimeoutError, ApiError, OSError)
"""What ends one connection and starts the backoff (a refused ``hello``/``watch`` included)."""


@dataclass(frozen=True, slots=True)
class LinkState:
    """Whether the controller answers; while away, which reconnect attempt is next and why it went away."""

    connected: bool
    attempt: int = 0
    reason: str = ""


class LinkListener(Protocol):
    """Who hears what the link learns (the app); called on the event loop, never from another thread."""

    def link_state(self, state: LinkState) -> None:
        """The link came up or went away."""

    def link_status(self, status: dict[str, Any]) -> None:
        """A new status snapshot."""

    def link_event(self, push: dict[str, Any]) -> None:
        """One pushed event: ``{"seq", "event": {"kind", "stream", "ts", "data"}}``."""


def backoff_s(attempt: int) -> float:
    """Delay before reconnect attempt ``attempt`` (1, 2, ...): doubles from 0.2 s, capped at 2 s."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, attempt - 1)))


class ControllerLink:
    """The real ``Link``: one control-socket connection at a time, kept up by ``run``."""

    def __init__(
        self,
        path: str | Path,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        refresh_hz: float = REFRESH_HZ,
    ) -> None:
        self.path = Path(path)
        self._request_timeout_s = request_timeout_s
        self._min_refresh_s = 1.0 / refresh_hz
        self._client: ControlClient | None = None
        self._status: dict[str, Any] | None = None
        self._state = LinkState(connected=False, attempt=0, reason="connecting")
        self._listener: LinkListener | None = None
        self._stale = asyncio.Event()
        self.hello: dict[str, Any] = {}
        """The ``hello`` reply of the current (or last) connection: server version, identity, caller."""
        self.since_seq: int | None = None
        """The newest event seen: a reconnect resumes after it (with ``epoch``) rather than resyncing."""
        self.epoch: str | None = None
        self.resyncs = 0
        """How many ``watch`` replies asked for a fresh snapshot (the first connection's included)."""

    # --- Link -------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the controller answers."""
        return self._state.connected

    @property
    def state(self) -> LinkState:
        """Up, or away with the next attempt's number and the reason."""
        return self._state

    @property
    def status(self) -> dict[str, Any] | None:
        """The newest status snapshot, None before the first."""
        return self._status

    @property
    def caller(self) -> dict[str, Any]:
        """Who the controller says this connection is (user, role, connection...), from ``hello``."""
        caller = self.hello.get("caller")
        return caller if isinstance(caller, dict) else {}

    @property
    def role(self) -> str | None:
        """This connection's role (viewer, operator, integrator), when the server tells it."""
        role = self.caller.get("role")
        return role if isinstance(role, str) else None

    async def request(self, cmd: str, **args: Any) -> Outcome:
        """Send one request; a refusal is ``Outcome(ok=False, code, message)`` and so is a lost controller
        (``unreachable``) or a reply that never came (``timeout``). A success refreshes the status."""
        client = self._client
        if client is None or not self._state.connected:
            return Outcome(False, code=UNREACHABLE, message=self._away_message())
        try:
            async with asyncio.timeout(self._request_timeout_s):
                result = await client.request(cmd, **args)
        except TimeoutError:
            return Outcome(
                False, code="timeout", message=f"no reply to {cmd} within {self._request_timeout_s:g} s"
            )
        except ConnectionLost as exc:
            return Outcome(False, code=UNREACHABLE, message=str(exc))
        except ApiError as exc:
            return Outcome(False, code=exc.code, message=str(exc))
        if cmd != "status":
            self._stale.set()
        return Outcome(True, result=result)

    # --- the supervisor ---------------------------------------------------------------------------------

    async def run(self, listener: LinkListener) -> None:
        """Keep a connection to the controller until cancelled, telling ``listener`` what happens."""
        self._listener = listener
        attempt = 0
        while True:
            reason = await self._serve_once()
            # Attempts count from the last time the controller answered.
            attempt = 1 if self._state.connected else attempt + 1
            self._set_state(LinkState(connected=False, attempt=attempt, reason=reason))
            await asyncio.sleep(backoff_s(attempt))

    async def _serve_once(self) -> str:
        """One connection from connect to loss; returns why it ended (cancellation propagates)."""
        try:
            async with ControlClient(self.path) as client:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    self.hello = await client.request("hello")
                    await self._watch(client)
                self._client = client
                self._set_state(LinkState(connected=True))
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._refresher(client), name="tui-link:refresh")
                        await self._forward(client)
                        raise ConnectionLost()
                finally:
                    self._client = None
        except LOSSES as exc:
            return _why(exc)
        except ExceptionGroup as group:
            # From the connection's task group: a loss there ends this connection; anything else is a bug.
            leaf = _leaf(group)
            if isinstance(leaf, LOSSES):
                return _why(leaf)
            raise
        raise AssertionError("a connection only ends by raising")  # pragma: no cover

    async def _watch(self, client: ControlClient) -> None:
        """Subscribe to events, resuming after the last one seen; a fresh snapshot when the server says so."""
        result = await client.watch(self.since_seq, self.epoch)
        self.epoch = client.epoch
        if result.get("resync"):
            self.resyncs += 1
            self.since_seq = client.last_seq
            snapshot = result.get("status")
            if isinstance(snapshot, dict):
                self._set_status(snapshot)
        else:
            client.last_seq = self.since_seq or 0
        # A resumed stream replays what was missed; a refresh covers what the snapshot may not.
        self._stale.set()

    async def _forward(self, client: ControlClient) -> None:
        """Forward every event and mark the status stale; re-watch on the same connection when dropped."""
        while True:
            try:
                async for push in client.events():
                    self.since_seq = push.seq
                    if self._listener is not None:
                        self._listener.link_event(push.model_dump(mode="json"))
                    self._stale.set()
                return
            except WatchDropped as dropped:
                self.since_seq = dropped.since_seq
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self._watch(client)

    async def _refresher(self, client: ControlClient) -> None:
        """One ``status`` request at a time whenever the status is stale, at most ``REFRESH_HZ`` a second."""
        loop = asyncio.get_running_loop()
        while True:
            await self._stale.wait()
            self._stale.clear()
            started = loop.time()
            async with asyncio.timeout(self._request_timeout_s):
                status = await client.request("status")
            self._set_status(status)
            pause = self._min_refresh_s - (loop.time() - started)
            if pause > 0:
                await asyncio.sleep(pause)

    # --- telling the listener ---------------------------------------------------------------------------

    def _set_status(self, status: dict[str, Any]) -> None:
        self._status = status
        if self._listener is not None:
            self._listener.link_status(status)

    def _set_state(self, state: LinkState) -> None:
        self._state = state
        if self._listener is not None:
            self._listener.link_state(state)

    def _away_message(self) -> str:
        state = self._state
        if state.attempt:
            return f"controller away ({state.reason}); reconnecting (attempt {state.attempt})"
        return "not connected to the controller yet"


def _leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first leaf of an exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _why(exc: BaseException) -> str:
    """Why a connection ended, in words for the header."""
    if isinstance(exc, TimeoutError):
        return "the controller did not answer in time"
    return str(exc) or type(exc).__name__
