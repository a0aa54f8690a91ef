"""The per-server request gate where injected faults act on each client request (latency, hold, errors)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args


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

Malformation = Literal["byte_count", "short", "function_code", "transaction_id", "unit_id", "truncated"]
"""How a Modbus reply is spoiled on the wire:
``byte_count``: the byte count field says one register (or one byte of bits) less than the data carried;
``short``: one register (or one byte of bits) fewer than asked, with consistent lengths;
``function_code``: the reply of a sibling function (3 <-> 4, 1 <-> 2, 5 <-> 15, 6 <-> 16, 22 -> 16);
``transaction_id``: another transaction id; ``unit_id``: another unit id;
``truncated``: the first half of the frame only (its length field promises the rest)."""
MALFORMATIONS: tuple[Malformation, ...] = get_args(Malformation)

MalformRule = Callable[[Request], Malformation | None]
"""Returns how to spoil the reply to the request, or None to answer it as it is."""


class RequestGate:
    """What every request of one server passes through: added latency, a hold (blackhole), error rules."""

    def __init__(self) -> None:
        self.latency_s = 0.0
        self._rules: dict[int, Rule] = {}
        self._malform_rules: dict[int, MalformRule] = {}
        self._held_devices: dict[str, asyncio.Event] = {}
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

    def add_malformation(self, rule: MalformRule) -> Callable[[], None]:
        """Spoil the reply to every request ``rule`` picks until the returned function is called."""
        key = next(self._ids)
        self._malform_rules[key] = rule

        def remove() -> None:
            self._malform_rules.pop(key, None)

        return remove

    def malformation(self, request: Request) -> Malformation | None:
        """How the first malformation rule spoils the reply to ``request``, or None."""
        for rule in list(self._malform_rules.values()):
            kind = rule(request)
            if kind is not None:
                return kind
        return None

    def hold_device(self, device: str) -> None:
        """Hold the requests of one device unanswered (a unit behind a gateway gone silent)."""
        self._held_devices.setdefault(device, asyncio.Event())

    def release_device(self, device: str) -> None:
        """Let the held requests of ``device`` through."""
        opened = self._held_devices.pop(device, None)
        if opened is not None:
            opened.set()

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
        for opened in self._held_devices.values():
            opened.set()

    def reopened(self) -> None:
        """The server serves again (with the faults still set)."""
        self._closing = asyncio.Event()
        if self._held:
            self._open.clear()
        for device in self._held_devices:
            self._held_devices[device] = asyncio.Event()

    async def admit(self, request: Request) -> int | None:
        """Delay and hold ``request`` as the faults say; the first rule's error code, or None to serve it."""
        if self.latency_s > 0:
            try:
                async with asyncio.timeout(self.latency_s):
                    await self._closing.wait()
            except TimeoutError:
                pass
        await self._open.wait()
        device_held = self._held_devices.get(request.device or "")
        if device_held is not None:
            await device_held.wait()
        for rule in list(self._rules.values()):
            code = rule(request)
            if code is not None:
                return code
        return None
