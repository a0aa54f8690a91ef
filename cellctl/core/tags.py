"""Typed tag handles over a backend: every value the engine sees is a Reading with a quality."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cellctl.errors import CommError, DeviceFault

TagValue = bool | int | float | str
"""What a tag holds once decoded: the driver converts protocol types to these."""


class Quality(StrEnum):
    """OPC UA-style quality: only GOOD values may decide anything."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of a tag: value, when it was taken (clock seconds) and how far to trust it."""

    value: TagValue | None
    timestamp: float
    quality: Quality
    reason: str = ""

    @property
    def usable(self) -> bool:
        """True when the value is GOOD and a finite number or a non-number value."""
        if self.quality is not Quality.GOOD or self.value is None:
            return False
        return not (isinstance(self.value, float) and not math.isfinite(self.value))

    @classmethod
    def bad(cls, timestamp: float, reason: str) -> Reading:
        """A reading that says the value is not known, and why."""
        return cls(value=None, timestamp=timestamp, quality=Quality.BAD, reason=reason)


ReadingCallback = Callable[[str, Reading], None]
"""Called with (tag name, reading) whenever a backend learns a new reading."""


class TagBackend(Protocol):
    """What a driver (or the soft backend) offers for the tags of one device."""

    @property
    def device(self) -> str:
        """Name of the device whose tags this backend serves."""
        ...

    async def read(self, tag: str) -> Reading:
        """Read a tag from the device now; link problems give a BAD reading, never an exception."""
        ...

    async def write(self, tag: str, value: TagValue) -> None:
        """Write a tag; raises CommError or DeviceFault when the device did not take it."""
        ...

    def last(self, tag: str) -> Reading:
        """The newest reading known without I/O (from a subscription or poll); BAD when none yet."""
        ...

    def watch(self, callback: ReadingCallback) -> Callable[[], None]:
        """Call back on every new reading of any tag of this device; returns the unsubscribe function."""
        ...

    async def call(self, method: str, args: Sequence[TagValue]) -> tuple[TagValue, ...]:
        """Call ``method`` (a key of the device's ``methods:`` map) with ``args``; return its outputs.

        Raises CommError when the link fails, DeviceFault when the device answers with a Bad status (named
        in the message), DeviceError for an unknown method or a wrong argument count or type.
        """
        ...


class Tag:
    """A named handle on one tag of one device, with the waits the handshakes need."""

    def __init__(self, backend: TagBackend, name: str) -> None:
        self.backend = backend
        self.name = name

    @property
    def qualified_name(self) -> str:
        """``device.tag``, as used in recipes and logs."""
        return f"{self.backend.device}.{self.name}"

    def __repr__(self) -> str:
        return f"Tag({self.qualified_name})"

    async def read(self) -> Reading:
        """Read the tag from the device."""
        return await self.backend.read(self.name)

    async def read_value(self) -> TagValue:
        """Read the tag and return its value, raising when the reading is not usable."""
        reading = await self.read()
        if not reading.usable:
            raise CommError(
                self.backend.device, f"no usable value ({reading.quality}: {reading.reason})", tag=self.name
            )
        assert reading.value is not None
        return reading.value

    async def write(self, value: TagValue) -> None:
        """Write a value to the tag."""
        await self.backend.write(self.name, value)

    def last(self) -> Reading:
        """The newest reading known without I/O."""
        return self.backend.last(self.name)

    async def wait_until(self, predicate: Callable[[TagValue], bool], timeout: float) -> TagValue:
        """Wait until a usable reading satisfies ``predicate``; raises DeviceFault after ``timeout`` s.

        Fed by the backend's subscription or poll, so no polling here; the current value is checked first.
        """
        changed = asyncio.Event()

        def on_reading(tag: str, _reading: Reading) -> None:
            if tag == self.name:
                changed.set()

        unsubscribe = self.backend.watch(on_reading)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    reading = self.last()
                    if reading.usable:
                        assert reading.value is not None
                        if predicate(reading.value):
                            return reading.value
                    await changed.wait()
        except TimeoutError:
            last = self.last()
            raise DeviceFault(
                self.backend.device,
                f"condition not met within {timeout:g} s (last {last.value!r}, {last.quality})",
                tag=self.name,
            ) from None
        finally:
            unsubscribe()

    async def wait_for_value(self, expected: TagValue, timeout: float) -> TagValue:
        """Wait until the tag equals ``expected`` (floats within 1e-6 relative)."""

        def matches(value: TagValue) -> bool:
            if isinstance(expected, float) or isinstance(value, float):
                if isinstance(value, bool) or isinstance(expected, bool) or isinstance(value, str):
                    return value == expected
                if isinstance(expected, str):
                    return False
                return math.isclose(float(value), float(expected), rel_tol=1e-6, abs_tol=1e-9)
            return value == expected

        try:
            return await self.wait_until(matches, timeout)
        except DeviceFault as exc:
            raise DeviceFault(
                self.backend.device, f"did not reach {expected!r}: {exc}", tag=self.name
            ) from None
