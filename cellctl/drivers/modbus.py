"""Modbus TCP driver: one connection per device, poll groups of coalesced block reads feeding the tag cache,
typed writes with optional read-back verification, and a defined reaction to every exception code.

The only module of cellctl that imports pymodbus (3.16). Register encoding lives in the pure modbus_codec and
the order of block reads in the pure modbus_poll. pymodbus' own reconnect is switched off
(``reconnect_delay=0``) and its retries set to 0: the supervisor loop in LinkedBackend owns reconnecting, and
each request is bounded by the device's ``request_s``.

Reactions to exception codes (docs/integrator.md, "Modbus devices", is the table integrators read):
1 illegal function: the block's tags BAD ("configuration mismatch"), the block benched with a backoff (1 s
  doubling to 60 s, tried again on every reconnect), logged once as an error; a write raises at once.
2 illegal data address / 3 illegal data value on a read: a coalesced block is split into one read per tag
  (a bridged gap may be what the device refused), then as 1 for what is still refused; on a write: raised at
  once, never retried.
4 server device failure: the block's tags BAD, read again next poll; a write raises.
6 server device busy: asked again after a short, doubling delay within the request's ``request_s``, then as 4.
10 / 11 gateway errors: the unit is unreachable: a link failure (CommError) of this device only: every tag
  BAD, health DOWN, reconnect with backoff; other devices, even at the same endpoint, are untouched.
Other codes (5, 8, unknown): as 4.
A reply that does not fit its request (function code, byte count, register count, write echo) is never
decoded: the block's tags go BAD (a write raises CommError); replies with another transaction or unit id are
not taken at all, so the request times out and the link is reconnected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
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
    Encoded,
    RawData,
    ReadBlock,
    Registers,
    TagCodec,
    plan_reads,
)
from cellctl.drivers.modbus_poll import (
    MISMATCH_RETRY_CAP_S,
    MISMATCH_RETRY_START_S,
    PollGroupPlan,
    PollSchedule,
)
from cellctl.errors import (
    CommError,
    ConfigError,
    ConfigIssue,
    DeviceError,
    ModbusExceptionError,
    ModbusGatewayError,
    ModbusIllegalAddress,
    ModbusIllegalFunction,
    ModbusIllegalValue,
    WriteVerifyError,
)
from cellctl.schema.cell import Access, DeviceConfig, ModbusTable

__all__ = ["BUSY_RETRY_START_S", "ModbusDriver"]

BUSY_RETRY_START_S = 0.02
"""First delay before asking a busy device (exception 6) again; it doubles, within the request timeout."""
BUSY_RETRY_CAP_S = 0.5
"""Longest delay between two tries of a request the device answered busy."""
GUARD_SLACK = 0.1
"""Share of ``request_s`` a poll request may run over before it is given up (see ``_request``)."""
MISMATCH = "configuration mismatch"
"""Reason prefix of tags whose block the device refuses as not existing (exceptions 1, 2, 3 on a read)."""

_READ_FUNCTION = {
    ModbusTable.COIL: 1,
    ModbusTable.DISCRETE_INPUT: 2,
    ModbusTable.HOLDING_REGISTER: 3,
    ModbusTable.INPUT_REGISTER: 4,
}
_BUSY = 6
_Reader = Callable[..., Awaitable[ModbusPDU]]


class _MalformedReply(Exception):
    """The reply does not fit its request (function code, byte count, register count, echo)."""


@dataclass(slots=True)
class _BlockState:
    """What the tag cache holds of one polled block: the reply its tags' readings came from, and when the
    device last confirmed it.

    While ``raw`` is set, every tag of the block has the reading ``raw`` gives, so an equal reply changes
    nothing but freshness: ``read_at``, which ``last()`` hands out as the readings' timestamp. Any reading
    stored another way (a read on demand, a refusal, the link going down) clears ``raw``.
    """

    block: ReadBlock  # kept so the id() keying the state is never reused
    spans: tuple[tuple[TagCodec, int, int], ...]
    raw: RawData | None = None
    read_at: float = 0.0


def _read_what(block: ReadBlock) -> str:
    return f"read of {block.count} {block.table.value}(s) at {block.start}"


def _unit(bits: bool) -> str:
    return "bit(s)" if bits else "register(s)"


class ModbusDriver(LinkedBackend):
    """A Modbus TCP device: polls its readable tags in coalesced blocks per poll group, writes its writable
    tags (reading back those marked ``verify``)."""

    def __init__(
        self,
        name: str,
        config: DeviceConfig,
        clock: Clock,
        *,
        max_gap_registers: int = DEFAULT_MAX_GAP_REGISTERS,
        max_gap_bits: int = DEFAULT_MAX_GAP_BITS,
        backoff: Backoff | None = None,
        mismatch_retry_s: tuple[float, float] = (MISMATCH_RETRY_START_S, MISMATCH_RETRY_CAP_S),
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
            if tag.poll_group is not None and tag.poll_group not in config.poll_groups:
                where = f"devices.{name}.tags.{tag_name}.poll_group"
                issues.append(ConfigIssue("<cell>", None, where, f"unknown poll group {tag.poll_group!r}"))
        if issues:
            raise ConfigError(issues)
        intervals: dict[str | None, float] = {None: config.poll_interval_s}
        intervals.update({group: g.interval_s for group, g in config.poll_groups.items()})
        members: dict[str | None, list[TagCodec]] = {group: [] for group in intervals}
        for tag_name, tag in config.tags.items():
            if tag.access != Access.WRITE:
                members[tag.poll_group].append(self._codecs[tag_name])
        gaps = {"max_gap_registers": max_gap_registers, "max_gap_bits": max_gap_bits}
        start, cap = mismatch_retry_s
        self._schedule = PollSchedule(
            [
                PollGroupPlan(group, intervals[group], tuple(plan_reads(codecs, **gaps)))
                for group, codecs in members.items()
            ],
            mismatch_retry_start_s=start,
            mismatch_retry_cap_s=cap,
        )
        self._client: AsyncModbusTcpClient | None = None
        # The read method of each table, bound to the client they were made for (built once per connection).
        self._readers: tuple[AsyncModbusTcpClient | None, dict[ModbusTable, _Reader]] = (None, {})
        self._states: dict[int, _BlockState] = {}
        self._tag_states: dict[str, list[_BlockState]] = {}
        self._block_errors: dict[tuple[ModbusTable, int, int], str] = {}
        self._bad_frames: set[int] = set()

    @property
    def config(self) -> DeviceConfig:
        """The device's configuration."""
        return self._config

    @property
    def blocks(self) -> tuple[ReadBlock, ...]:
        """The block reads of every poll group (fastest group first)."""
        return self._schedule.blocks

    def group_blocks(self, group: str | None = None) -> tuple[ReadBlock, ...]:
        """The block reads of one poll group (None: the tags polled at ``poll_interval_s``)."""
        return self._schedule.group_blocks(group)

    @property
    def connected(self) -> bool:
        """True while a connection to the device is open."""
        return self._client is not None and self._client.connected

    # -------------------------------------------------------------------------------------------- run

    async def run(self) -> None:
        """Connect, poll each group at its rate, back off and reconnect after a failure; forever."""
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
            trace_packet=self._check_frame,
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
            self._bad_frames.clear()
            # One full cycle of every group before the link counts as up, so UP means every tag was read.
            now = asyncio.get_running_loop().time()
            self._schedule.restart(now)
            while (block := self._schedule.next_block(now)) is not None:
                await self._poll_block(client, block)
            self._link_up()
            await self._poll_forever(client, lost)
        finally:
            self._client = None
            client.close()

    async def _poll_forever(self, client: AsyncModbusTcpClient, lost: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        block: ReadBlock | None = None
        try:
            # One timeout for all the poll requests of this connection (see _request), off while idle.
            async with asyncio.timeout(None) as guard:
                while True:
                    raise_if_cancelling()
                    if lost.is_set() or not client.connected:
                        raise CommError(self._device, "connection closed by the device")
                    block = self._schedule.next_block(loop.time())
                    if block is not None:
                        await self._poll_block(client, block, guard)
                        continue
                    guard.reschedule(None)
                    due = self._schedule.next_due()
                    try:
                        if due == float("inf"):
                            await lost.wait()  # nothing to poll (only write-only tags)
                        else:
                            async with asyncio.timeout_at(due):
                                await lost.wait()
                    except TimeoutError:
                        pass
        except TimeoutError:
            what = "poll" if block is None else _read_what(block)
            timeout = self._config.timeouts.request_s
            raise CommError(self._device, f"no reply to {what} within {timeout:g} s") from None

    async def _poll_block(
        self, client: AsyncModbusTcpClient, block: ReadBlock, guard: asyncio.Timeout | None = None
    ) -> None:
        """Read one block into the cache; the reaction to a refusal is the module docstring's table."""
        try:
            raw = await self._read_block(client, block, guard)
        except ModbusGatewayError:
            raise  # the unit is unreachable: a link failure, the supervisor's to handle
        except (ModbusIllegalFunction, ModbusIllegalAddress, ModbusIllegalValue) as exc:
            if not isinstance(exc, ModbusIllegalFunction) and len(self._schedule.split(block)) > 1:
                self._log.warning(
                    "block read refused; reading its tags one by one",
                    table=block.table.value,
                    start=block.start,
                    count=block.count,
                    error=str(exc),
                )
                return
            delay = self._schedule.bench(block, asyncio.get_running_loop().time())
            self._block_refused(block, f"{MISMATCH}: {self._reason(exc)}", mismatch=True, retry_s=delay)
            return
        except ModbusExceptionError as exc:
            self._block_refused(block, self._reason(exc))
            return
        except _MalformedReply as exc:
            self._block_refused(block, str(exc))
            return
        self._schedule.accepted(block)
        # No await between the reply and the cache update: a write's read-back can never be overtaken
        # by an older poll reply.
        state = self._states.get(id(block))
        if state is None:
            state = self._new_state(block)
        self._apply_polled(state, raw)

    def _new_state(self, block: ReadBlock) -> _BlockState:
        start = block.start
        spans = tuple((tag, tag.address - start, tag.end - start) for tag in block.tags)
        state = _BlockState(block, spans)
        self._states[id(block)] = state
        for tag in block.tags:
            self._tag_states.setdefault(tag.name, []).append(state)
        return state

    def _apply_polled(self, state: _BlockState, raw: RawData) -> None:
        """Take a polled block's reply: an equal reply only refreshes; otherwise only the tags whose
        registers changed are decoded and stored (so watchers hear of changes only)."""
        block = state.block
        previous = state.raw
        if previous is not None and (raw == previous or self._same_tags(state, previous, raw)):
            if self._block_errors:
                self._block_accepted(block)
            state.read_at = self._now()
            return
        if previous is None:
            self._apply_block(block, raw)
        else:
            if self._block_errors:
                self._block_accepted(block)
            for tag, lo, hi in state.spans:
                if raw[lo:hi] != previous[lo:hi]:
                    self._apply_tag(tag, raw[lo:hi])
        # Set after the stores: each store clears the raw of the blocks holding its tag.
        state.raw = raw
        state.read_at = self._now()

    @staticmethod
    def _same_tags(state: _BlockState, previous: RawData, raw: RawData) -> bool:
        """True when every tag's part of a bit reply is unchanged (only the padding differs)."""
        if not state.block.bits or len(raw) == len(previous):
            return False
        return all(raw[lo:hi] == previous[lo:hi] for _tag, lo, hi in state.spans)

    def _apply_tag(self, tag: TagCodec, part: RawData) -> None:
        try:
            value = tag.decode(part)
        except CodecError as exc:
            self._store_bad(tag.name, f"cannot decode: {exc}")
        else:
            self._store_value(tag.name, value)

    def _reason(self, exc: DeviceError) -> str:
        """An error's text without the leading device name (a tag's reason names no device)."""
        text = str(exc)
        prefix = f"{self._device}: "
        return text[len(prefix) :] if text.startswith(prefix) else text

    def _block_refused(
        self, block: ReadBlock, reason: str, *, mismatch: bool = False, retry_s: float | None = None
    ) -> None:
        key = (block.table, block.start, block.count)
        if self._block_errors.get(key) != reason:
            where = {"table": block.table.value, "start": block.start, "count": block.count}
            if mismatch:
                # Config and device disagree: nothing fixes that but a person, so it is alarm-worthy.
                tags = [tag.name for tag in block.tags]
                self._log.error(
                    "modbus configuration mismatch", **where, tags=tags, error=reason, retry_s=retry_s
                )
            else:
                self._log.warning("read refused", **where, error=reason)
        self._block_errors[key] = reason
        for tag in block.tags:
            self._store_bad(tag.name, reason)

    def _block_accepted(self, block: ReadBlock) -> None:
        key = (block.table, block.start, block.count)
        if key in self._block_errors:
            del self._block_errors[key]
            self._log.info("read accepted again", table=block.table.value, start=block.start)

    def _apply_block(self, block: ReadBlock, raw: RawData) -> None:
        if self._block_errors:
            self._block_accepted(block)
        for name, value in block.decode(raw).items():
            if isinstance(value, CodecError):
                self._store_bad(name, f"cannot decode: {value}")
            else:
                self._store_value(name, value)

    # ------------------------------------------------------------------------------------------- I/O

    def _check_frame(self, sending: bool, data: bytes) -> bytes:
        """pymodbus' packet hook: note each read reply whose byte count disagrees with its frame length.

        pymodbus ignores the byte count of a bit reply, so this is the only place such a reply is caught.
        """
        if not sending and len(data) >= 9 and data[7] in (1, 2, 3, 4):
            length = int.from_bytes(data[4:6], "big")
            if len(data) >= 6 + length and data[8] != length - 3:
                self._bad_frames.add(int.from_bytes(data[0:2], "big"))
        return data

    async def _request(
        self,
        request: str | ReadBlock,
        call: Callable[[], Awaitable[ModbusPDU]],
        tag: str | None = None,
        guard: asyncio.Timeout | None = None,
    ) -> ModbusPDU:
        """One request within ``request_s``; link failures become CommError.

        ``request`` is what to call the request in an error (a block: its read, worded only when needed).
        A busy device (exception 6) is asked again after a short, doubling delay while ``request_s`` lasts;
        its last busy reply is returned when it does not.

        ``guard`` is the poll loop's timeout, whose TimeoutError the poll loop turns into CommError. Arming a
        timeout for every request costs about as much CPU as pymodbus' whole read, so the guard is only
        pushed on when it would fire before this request's deadline, by ``GUARD_SLACK`` of ``request_s``
        at once: a poll request is given up between ``request_s`` and ``(1 + GUARD_SLACK) * request_s``.
        """
        timeout = self._config.timeouts.request_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if guard is not None:
            when = guard.when()
            if when is None or when < deadline:
                guard.reschedule(deadline + GUARD_SLACK * timeout)
        delay = BUSY_RETRY_START_S
        while True:
            try:
                if guard is not None:
                    reply = await call()
                else:
                    async with asyncio.timeout_at(deadline):
                        reply = await call()
            except TimeoutError:
                what = request if isinstance(request, str) else _read_what(request)
                raise CommError(self._device, f"no reply to {what} within {timeout:g} s", tag=tag) from None
            except (ModbusException, OSError) as exc:
                what = request if isinstance(request, str) else _read_what(request)
                raise CommError(self._device, f"{what} failed: {exc}", tag=tag) from exc
            raise_if_cancelling()
            if not (reply.isError() and reply.exception_code == _BUSY) or loop.time() + delay >= deadline:
                return reply
            await asyncio.sleep(delay)
            delay = min(2 * delay, BUSY_RETRY_CAP_S)

    async def _read_block(
        self, client: AsyncModbusTcpClient, block: ReadBlock, guard: asyncio.Timeout | None = None
    ) -> RawData:
        """Read one block: CommError when the link failed, ModbusExceptionError when the device refused,
        _MalformedReply when the reply does not fit the request."""
        owner, readers = self._readers
        if owner is not client:
            readers = {
                ModbusTable.COIL: client.read_coils,
                ModbusTable.DISCRETE_INPUT: client.read_discrete_inputs,
                ModbusTable.HOLDING_REGISTER: client.read_holding_registers,
                ModbusTable.INPUT_REGISTER: client.read_input_registers,
            }
            self._readers = (client, readers)
        reader = readers[block.table]
        unit = self._config.unit_id
        reply = await self._request(
            block, lambda: reader(block.start, count=block.count, device_id=unit), guard=guard
        )
        bad_frame = reply.transaction_id in self._bad_frames
        if self._bad_frames:
            self._bad_frames.clear()  # requests are one at a time: any other mark is stale
        if reply.isError():
            what = _read_what(block)
            raise ModbusExceptionError.of(self._device, reply.exception_code, f"device refused the {what}")
        if reply.function_code != _READ_FUNCTION[block.table]:
            what = _read_what(block)
            raise _MalformedReply(f"malformed reply to the {what}: function code {reply.function_code}")
        if bad_frame:
            raise _MalformedReply(
                f"malformed reply to the {_read_what(block)}: byte count disagrees with the frame length"
            )
        # pymodbus builds a new list for every reply, so it is ours to keep (the block state holds it).
        raw: RawData = reply.bits if block.bits else reply.registers
        try:
            block.check(raw)
        except CodecError as exc:
            raise _MalformedReply(f"malformed reply: {exc}") from None
        return raw

    # --------------------------------------------------------------------------------------- TagBackend

    def last(self, tag: str) -> Reading:
        """The newest reading known without I/O, stamped with the last read that confirmed it; BAD until
        the first poll."""
        reading = super().last(tag)
        states = self._tag_states.get(tag)
        if states:
            for state in states:
                if state.raw is not None and state.read_at > reading.timestamp:
                    # Confirmed by a later equal reply: the same reading, as fresh as that reply.
                    reading = replace(reading, timestamp=state.read_at)
                    self._cache[tag] = reading
        return reading

    def _store(self, tag: str, reading: Reading) -> None:
        states = self._tag_states.get(tag)
        if states:
            for state in states:
                state.raw = None
        super()._store(tag, reading)

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
            return Reading.bad(self._now(), self._reason(exc))
        except ModbusExceptionError as exc:
            self._store_bad(tag, self._reason(exc))
            return self._cache[tag]
        except _MalformedReply as exc:
            self._store_bad(tag, str(exc))
            return self._cache[tag]
        self._schedule.accepted(block)
        self._apply_block(block, raw)
        return self._cache[tag]

    async def write(self, tag: str, value: TagValue) -> None:
        """Write a declared-writable tag; DeviceError for bad input, CommError, ModbusExceptionError (a
        DeviceFault) when the device did not take it, WriteVerifyError when a ``verify`` read-back differs."""
        codec = self._codec(tag)
        config = self._config.tags[tag]
        if not config.writable:
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
                function, call = 5, partial(client.write_coil, codec.address, on, device_id=unit)
            case Registers(words=(word,)):
                function, call = 6, partial(client.write_register, codec.address, word, device_id=unit)
            case Registers(words=words):
                function = 16
                call = partial(client.write_registers, codec.address, list(words), device_id=unit)
            case BitMask(and_mask=and_mask, or_mask=or_mask):
                function = 22
                call = partial(
                    client.mask_write_register,
                    address=codec.address,
                    and_mask=and_mask,
                    or_mask=or_mask,
                    device_id=unit,
                )
        what = f"write of {value!r}"
        reply = await self._request(what, call, tag)
        if reply.isError():
            error = ModbusExceptionError.of(
                self._device, reply.exception_code, f"device refused the {what}", tag=tag
            )
            self._log.warning("write refused", tag=tag, error=str(error))
            raise error
        if reply.function_code != function or reply.address != codec.address:
            # The device's echo does not match: whether it wrote anything is unknown.
            raise CommError(
                self._device,
                f"malformed reply to the {what}: function {reply.function_code} at {reply.address}, "
                f"expected function {function} at {codec.address}",
                tag=tag,
            )
        if config.verify:
            await self._verify(client, tag, codec, encoded, value)
        elif config.access == Access.READ_WRITE:
            # Read it back now so waits and last() see the written value without waiting for the next poll.
            await self.read(tag)

    async def _verify(
        self, client: AsyncModbusTcpClient, tag: str, codec: TagCodec, encoded: Encoded, value: TagValue
    ) -> None:
        """Read a written tag back and compare the registers (or bit) with what was sent."""
        block = ReadBlock(codec.table, codec.address, codec.width, (codec,))
        try:
            raw = await self._read_block(client, block)
        except (CommError, ModbusExceptionError, _MalformedReply) as exc:
            reason = self._reason(exc) if isinstance(exc, DeviceError) else str(exc)
            self._store_bad(tag, reason)
            raise WriteVerifyError(
                self._device, f"wrote {value!r} but could not read it back: {reason}", tag=tag, written=value
            ) from exc
        self._schedule.accepted(block)
        self._apply_block(block, raw)
        match encoded:
            case Coil(on=on):
                same = bool(raw[0]) == on
            case BitMask(or_mask=or_mask):
                assert codec.bit is not None
                same = bool(int(raw[0]) >> codec.bit & 1) == bool(or_mask)
            case Registers(words=words):
                same = [int(w) for w in raw] == list(words)
        if not same:
            read_back = self._cache[tag].value
            self._log.warning("write not verified", tag=tag, written=value, read_back=read_back)
            raise WriteVerifyError(
                self._device,
                f"wrote {value!r}, read back {read_back!r}",
                tag=tag,
                written=value,
                read_back=read_back,
            )

    async def call(self, method: str, args: Sequence[TagValue]) -> tuple[TagValue, ...]:
        """Modbus has no methods: always DeviceError."""
        raise DeviceError(self._device, "this device has no methods")

    def _codec(self, tag: str) -> TagCodec:
        self._known(tag)
        return self._codecs[tag]
