"""The write inhibit: the one gate every command to a device passes, shut from the instant of an e-stop edge.

The engine's profiles see each device through a ``GuardedBackend``; a write or method call made while the
inhibit is set raises ``WriteInhibited`` before anything is sent (reads pass). A task that is already being
cancelled gets ``CancelledError`` instead, so an abort's cancellation is not turned into a device failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from cellctl.core.tags import Reading, ReadingCallback, TagBackend, TagValue
from cellctl.errors import WriteInhibited


class WriteInhibit:
    """Set on an e-stop edge (synchronously, in the reading callback); lifted only by an accepted Reset."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self.refused = 0
        """Commands refused since the engine started (tests and the log count them)."""

    @property
    def active(self) -> bool:
        """True while no command may leave."""
        return self._reason is not None

    @property
    def reason(self) -> str:
        """Why commands are inhibited ("" when they are not)."""
        return self._reason or ""

    def set(self, reason: str) -> None:
        """Inhibit every command from now on (the first reason stands)."""
        if self._reason is None:
            self._reason = reason

    def lift(self) -> None:
        """Allow commands again."""
        self._reason = None

    def check(self, device: str, what: str) -> None:
        """Raise if ``what`` (a write or call) may not be sent to ``device`` now."""
        if self._reason is None:
            return
        self.refused += 1
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        raise WriteInhibited(device, f"{what} not sent: {self._reason}")


class GuardedBackend:
    """A TagBackend whose writes and method calls pass the write inhibit first; reads go straight through."""

    def __init__(self, backend: TagBackend, inhibit: WriteInhibit) -> None:
        self._backend = backend
        self._inhibit = inhibit

    @property
    def device(self) -> str:
        """The device's name."""
        return self._backend.device

    @property
    def inner(self) -> TagBackend:
        """The backend behind the gate."""
        return self._backend

    async def read(self, tag: str) -> Reading:
        """Read through."""
        return await self._backend.read(tag)

    async def write(self, tag: str, value: TagValue) -> None:
        """Write unless inhibited."""
        self._inhibit.check(self.device, f"write {tag}={value!r}")
        await self._backend.write(tag, value)

    def last(self, tag: str) -> Reading:
        """The newest reading known."""
        return self._backend.last(tag)

    def watch(self, callback: ReadingCallback) -> Callable[[], None]:
        """Watch through."""
        return self._backend.watch(callback)

    async def call(self, method: str, args: Sequence[TagValue]) -> tuple[TagValue, ...]:
        """Call unless inhibited."""
        self._inhibit.check(self.device, f"call {method}")
        return await self._backend.call(method, args)
