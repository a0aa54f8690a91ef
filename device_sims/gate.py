"""The per-server request gate where injected faults act on each client request (latency, hold, errors)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Request:
    """One client request as a fault rule sees it."""

    protocol: Literal["modbus", "opcua"]
    device: str | None
    write: bool
    table: str | None = None
    address: int | None = None
    count: int = 0
    tags: tuple[str, ...] = ()

    def covers(self, address: int) -> bool:
        """True when the request touches ``address`` of its table."""
        return self.address is not None and self.address <= address < self.address + max(self.count, 1)


Rule = Callable[[Request], int | None]
"""Returns a protocol error code for the request (Modbus exception code, OPC UA status code) or None."""


class RequestGate:
    """What every request of one server passes through: added latency, a hold (blackhole), error rules."""

    def __init__(self) -> None:
        self.latency_s = 0.0
        self._rules: dict[int, Rule] = {}
        self._ids = itertools.count(1)
        self._held = False
        self._open = asyncio.Event()
        self._open.set()
        self._closing = asyncio.Event()

    def add_rule(self, rule: Rule) -> Callable[[], None]:
        """Apply ``rule`` to every request until the returned function is called."""
        key = next(self._ids)
        self._rules[key] = rule

        def remove() -> None:
            self._rules.pop(key, None)

        return remove

    def hold(self) -> None:
        """Hold every request unanswered (a blackhole) until ``release``."""
        self._held = True
        self._open.clear()

    def release(self) -> None:
        """Let held requests through."""
        self._held = False
        self._open.set()

    def closing(self) -> None:
        """The server is going away: wake every waiting request so nothing outlives it."""
        self._closing.set()
        self._open.set()

    def reopened(self) -> None:
        """The server serves again (with the faults still set)."""
        self._closing = asyncio.Event()
        if self._held:
            self._open.clear()

    async def admit(self, request: Request) -> int | None:
        """Delay and hold ``request`` as the faults say; the first rule's error code, or None to serve it."""
        if self.latency_s > 0:
            try:
                async with asyncio.timeout(self.latency_s):
                    await self._closing.wait()
            except TimeoutError:
                pass
        await self._open.wait()
        for rule in list(self._rules.values()):
            code = rule(request)
            if code is not None:
                return code
        return None
