"""Modbus TCP driver: one connection per device, coalesced block polls feeding the tag cache, typed writes.

The only module of cellctl that imports pymodbus (3.16). Register encoding lives in the pure modbus_codec.
pymodbus' own reconnect is switched off (``reconnect_delay=0``) and its retries set to 0: the supervisor
loop in LinkedBackend owns reconnecting, and each request is bounded by the device's ``request_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from cellctl.core.clock import Clock
from cellctl.core.tags import Reading, TagValue
from cellctl.drivers._supervisor import WRITE_ONLY, Backoff, LinkedBackend, raise_if_cancelling
from cellctl.drivers.modbus_codec import (
    DEFAULT_MAX_GAP_BITS,
    DEFAULT_MAX_GAP_REGISTERS,
    BitMask,
    CodecError,
    Coil,
    RawData,
    ReadBlock,
    Registers,
    TagCodec,
    plan_reads,
)
from cellctl.errors import CommError, ConfigError, ConfigIssue, DeviceError, DeviceFault
from cellctl.schema.cell import Access, DeviceConfig, ModbusTable

__all__ = ["ModbusDriver"]

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
_READ_FUNCTION = {
    ModbusTable.COIL: 1,
    ModbusTable.DISCRETE_INPUT: 2,
    ModbusTable.HOLDING_REGISTER: 3,
    ModbusTable.INPUT_REGISTER: 4,
}


class _RefusedRead(Exception):
    """The device answered a read with an exception code or a reply that does not fit the request."""


def _exception_text(code: int) -> str:
    return f"exception code {code} ({_EXCEPTION_NAMES.get(code, 'unknown')})"


class ModbusDriver(LinkedBackend):
    """A Modbus TCP device: polls its readable tags in coalesced blocks and writes its writable tags."""

    def __init__(
        self,
        name: str,
        config: DeviceConfig,
        clock: Clock,
        *,
        max_gap_registers: int = DEFAULT_MAX_GAP_REGISTERS,
        max_gap_bits: int = DEFAULT_MAX_GAP_BITS,
        backoff: Backoff | None = None,
    ) -> None:
        if config.driver != "modbus":
            raise ValueError(f"device {name!r} uses driver {config.driver!r}, not modbus")
        write_only = [n for n, tag in config.tags.items() if tag.access == Access.WRITE]
        super().__init__(name, config.tags, clock, write_only=write_only, backoff=backoff)
        self._config = config
        self._host, self._port = config.host_port
        issues: list[ConfigIssue] = []
        self._codecs: dict[str, TagCodec] = {}
        for tag_name, tag in config.tags.items():
            try:
                self._codecs[tag_name] = TagCodec.from_config(tag_name, tag)
            except CodecError as exc:
                issues.append(ConfigIssue("<cell>", None, f"devices.{name}.tags.{tag_name}", str(exc)))
        if issues:
            raise ConfigError(issues)
        readable = [self._codecs[n] for n, tag in config.tags.items() if tag.access != Access.WRITE]
        self._blocks = plan_reads(readable, max_gap_registers=max_gap_registers, max_gap_bits=max_gap_bits)
        self._client: AsyncModbusTcpClient | None = None
        self._block_errors: dict[tuple[ModbusTable, int, int], str] = {}

    @property
    def config(self) -> DeviceConfig:
        """The device's configuration."""
        return self._config

    @property
    def blocks(self) -> tuple[ReadBlock, ...]:
        """The block reads of one poll cycle."""
        return tuple(self._blocks)

    @property
    def connected(self) -> bool:
        """True while a connection to the device is open."""
        return self._client is not None and self._client.connected

    # -------------------------------------------------------------------------------------------- run

    async def run(self) -> None:
        """Connect, poll every ``poll_interval_s``, back off and reconnect after a failure; forever."""
        await self._supervise(self._serve)

    async def _serve(self) -> None:
        lost = asyncio.Event()

        def on_connect(up: bool) -> None:
            if not up:
                lost.set()

        timeouts = self._config.timeouts
        client = AsyncModbusTcpClient(
            self._host,
            port=self._port,
            name=f"cellctl:{self._device}",
            timeout=max(timeouts.connect_s, timeouts.request_s),
            retries=0,
            reconnect_delay=0,
            trace_connect=on_connect,
        )
        try:
            try:
                async with asyncio.timeout(timeouts.connect_s):
                    connected = await client.connect()
            except TimeoutError:
                raise CommError(
                    self._device,
                    f"connect to {self._host}:{self._port} timed out after {timeouts.connect_s:g} s",
                ) from None
            if not connected:
                raise CommError(self._device, f"cannot connect to {self._host}:{self._port}")
            self._client = client
            await self._poll_cycle(client)
            self._link_up()
            await self._poll_forever(client, lost)
        finally:
            self._client = None
            self._block_errors.clear()
            client.close()

    async def _poll_forever(self, client: AsyncModbusTcpClient, lost: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self._config.poll_interval_s
        due = loop.time()
        while True:
            raise_if_cancelling()
            due += interval
            # A fixed rate, but never a burst to catch up after a slow cycle.
            due = max(due, loop.time())
            try:
                async with asyncio.timeout_at(due):
                    await lost.wait()
            except TimeoutError:
                pass
            if lost.is_set() or not client.connected:
                raise CommError(self._device, "connection closed by the device")
            await self._poll_cycle(client)

    async def _poll_cycle(self, client: AsyncModbusTcpClient) -> None:
        for block in self._blocks:
            try:
                raw = await self._read_block(client, block)
            except _RefusedRead as exc:
                self._block_refused(block, str(exc))
                continue
            # No await between the reply and the cache update: a write's read-back can never be overtaken
            # by an older poll reply.
            self._apply_block(block, raw)

    def _block_refused(self, block: ReadBlock, reason: str) -> None:
        key = (block.table, block.start, block.count)
        if self._block_errors.get(key) != reason:
            self._log.warning("read refused", table=block.table.value, start=block.start, error=reason)
        self._block_errors[key] = reason
        for tag in block.tags:
            self._store_bad(tag.name, reason)

    def _apply_block(self, block: ReadBlock, raw: RawData) -> None:
        key = (block.table, block.start, block.count)
        if self._block_errors and key in self._block_errors:
            del self._block_errors[key]
            self._log.info("read accepted again", table=block.table.value, start=block.start)
        for name, value in block.decode(raw).items():
            if isinstance(value, CodecError):
                self._store_bad(name, f"cannot decode: {value}")
            else:
                self._store_value(name, value)

    # ------------------------------------------------------------------------------------------- I/O

    async def _request(
        self, what: str, call: Callable[[], Awaitable[ModbusPDU]], tag: str | None = None
    ) -> ModbusPDU:
        """Run one request within ``request_s``; link failures become CommError."""
        timeout = self._config.timeouts.request_s
        try:
            async with asyncio.timeout(timeout):
                reply = await call()
        except TimeoutError:
            raise CommError(self._device, f"no reply to {what} within {timeout:g} s", tag=tag) from None
        except (ModbusException, OSError) as exc:
            raise CommError(self._device, f"{what} failed: {exc}", tag=tag) from exc
        raise_if_cancelling()
        return reply

    async def _read_block(self, client: AsyncModbusTcpClient, block: ReadBlock) -> RawData:
        """Read one block; CommError when the link failed, _RefusedRead when the reply is unusable."""
        unit = self._config.unit_id
        what = f"read of {block.count} {block.table.value}(s) at {block.start}"
        reader: Callable[..., Awaitable[ModbusPDU]] = {
            ModbusTable.COIL: client.read_coils,
            ModbusTable.DISCRETE_INPUT: client.read_discrete_inputs,
            ModbusTable.HOLDING_REGISTER: client.read_holding_registers,
            ModbusTable.INPUT_REGISTER: client.read_input_registers,
        }[block.table]
        reply = await self._request(what, partial(reader, block.start, count=block.count, device_id=unit))
        if reply.isError():
            raise _RefusedRead(f"device refused the {what}: {_exception_text(reply.exception_code)}")
        if reply.function_code != _READ_FUNCTION[block.table]:
            raise _RefusedRead(f"malformed reply to the {what}: function code {reply.function_code}")
        raw: RawData = list(reply.bits) if block.bits else list(reply.registers)
        try:
            block.slice(raw)
        except CodecError as exc:
            raise _RefusedRead(f"malformed reply: {exc}") from None
        return raw

    # --------------------------------------------------------------------------------------- TagBackend

    async def read(self, tag: str) -> Reading:
        """Read the tag from the device now; a BAD reading (never an exception) when that fails."""
        codec = self._codec(tag)
        if self._config.tags[tag].access == Access.WRITE:
            return Reading.bad(self._now(), WRITE_ONLY)
        client = self._client
        if client is None or not client.connected:
            return Reading.bad(self._now(), "not connected")
        block = ReadBlock(codec.table, codec.address, codec.width, (codec,))
        try:
            raw = await self._read_block(client, block)
        except CommError as exc:
            # The link's failure is the supervisor's to report; this caller only learns the value is unknown.
            return Reading.bad(self._now(), str(exc))
        except _RefusedRead as exc:
            self._store_bad(tag, str(exc))
            return self._cache[tag]
        self._apply_block(block, raw)
        return self._cache[tag]

    async def write(self, tag: str, value: TagValue) -> None:
        """Write a declared-writable tag; DeviceError for bad input, CommError or DeviceFault if not taken."""
        codec = self._codec(tag)
        if not self._config.tags[tag].writable:
            raise DeviceError(self._device, "tag is read-only", tag=tag)
        try:
            encoded = codec.encode(value)
        except CodecError as exc:
            raise DeviceError(self._device, f"cannot write {value!r}: {exc}", tag=tag) from exc
        client = self._client
        if client is None or not client.connected:
            raise CommError(self._device, "not connected", tag=tag)
        unit = self._config.unit_id
        call: Callable[[], Awaitable[ModbusPDU]]
        match encoded:
            case Coil(on=on):
                call = partial(client.write_coil, codec.address, on, device_id=unit)
            case Registers(words=(word,)):
                call = partial(client.write_register, codec.address, word, device_id=unit)
            case Registers(words=words):
                call = partial(client.write_registers, codec.address, list(words), device_id=unit)
            case BitMask(and_mask=and_mask, or_mask=or_mask):
                call = partial(
                    client.mask_write_register,
                    address=codec.address,
                    and_mask=and_mask,
                    or_mask=or_mask,
                    device_id=unit,
                )
        reply = await self._request(f"write of {value!r}", call, tag)
        if reply.isError():
            raise DeviceFault(
                self._device, f"device refused the write: {_exception_text(reply.exception_code)}", tag=tag
            )
        if self._config.tags[tag].access == Access.READ_WRITE:
            # Read it back now so waits and last() see the written value without waiting for the next poll.
            await self.read(tag)

    def _codec(self, tag: str) -> TagCodec:
        self._known(tag)
        return self._codecs[tag]
