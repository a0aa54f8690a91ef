"""Delivers the outbox to the MQTT broker at QoS 1 in id order, deleting rows only after the broker's PUBACK.

The only module that imports an MQTT library. One supervisor loop owns the connection: connect (with the
encoding's last will) -> subscribe to what the encoding and the inbound handlers listen to -> births once the
encoding is ready -> publish the outbox with a window of messages in flight -> on any link failure log once,
back off (capped, jittered), reconnect and resend what was not acknowledged. Consumers see each message at
least once; duplicates happen only within the window after a reconnect and carry the same ``msg_id``.
What goes on the wire is the encoding's business (``encoding.py``): UNS JSON by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable, Sequence

import aiomqtt
import structlog

from cellctl.core.clock import Clock, SystemClock
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.store import OutboxRow, Store
from cellctl.telemetry.encoding import Encoding, Inbound, Outgoing, Reaction
from cellctl.telemetry.uns import UnsJsonEncoding

WakeSource = asyncio.Event | Callable[[Callable[[], None]], object]
"""An event the recorder sets, or a registration function such as ``Recorder.add_listener``."""

_LINK_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError)
_STATUS_TIMEOUT_S = 1.0
_IDLE_POLL_S = 5.0
_INBOX_SIZE = 100


def default_client_id(identity: Identity) -> str:
    """``cellctl-<enterprise>-<site>-<area>-<line>-<cell>``: one controller per cell holds the session."""
    levels = (identity.enterprise, identity.site, identity.area, identity.line, identity.cell)
    return "-".join(("cellctl", *levels))


class OutboxPublisher:
    """Outbox -> broker at QoS 1, in id order, ``mqtt.window`` messages in flight; retries forever."""

    def __init__(
        self,
        store: Store,
        mqtt: MqttConfig,
        identity: Identity,
        *,
        wake: WakeSource | None = None,
        clock: Clock | None = None,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        encoding: Encoding | None = None,
        inbound: Sequence[Inbound] = (),
    ) -> None:
        """Publish ``store``'s outbox to the broker of ``mqtt``; ``wake`` tells it new rows are queued.

        ``encoding`` puts rows on the wire (default: UNS JSON); ``inbound`` handlers answer commands.
        """
        self._store = store
        self._mqtt = mqtt
        self._client_id = mqtt.client_id or default_client_id(identity)
        self._clock: Clock = clock or SystemClock()
        self._encoding: Encoding = encoding or UnsJsonEncoding(
            identity, self._client_id, started_ts=self._clock.wall()
        )
        self._inbound = tuple(inbound)
        self._ready = asyncio.Event()
        self._wire_order = asyncio.Lock()
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        if isinstance(wake, asyncio.Event):
            self._wake = wake
        else:
            self._wake = asyncio.Event()
            if wake is not None:
                wake(self.notify)
        self._progress = asyncio.Event()
        self._pending_acks: list[int] = []
        self._acks_ready = asyncio.Event()
        self._connected = False
        self._delivered = 0
        self._last_error: str | None = None
        self._was_up = False
        self._log = structlog.get_logger("cellctl.telemetry").bind(
            cell=identity.cell, broker=f"{mqtt.host}:{mqtt.port}", client_id=self._client_id
        )

    # --- read-only stats ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a broker session is up."""
        return self._connected

    @property
    def delivered(self) -> int:
        """Messages acknowledged by the broker and deleted from the outbox since start."""
        return self._delivered

    @property
    def last_error(self) -> str | None:
        """The latest link failure, kept after recovery for diagnosis; None if there never was one."""
        return self._last_error

    @property
    def client_id(self) -> str:
        """The MQTT client id in use."""
        return self._client_id

    # --- control -------------------------------------------------------------------------------------

    def notify(self) -> None:
        """Tell the publisher that new rows are in the outbox (cheap; safe to call often)."""
        self._wake.set()

    async def flush(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for the outbox to empty (``run`` must be running); True if it did."""
        self._progress.clear()
        if await self._store.outbox_count() == 0:
            return True
        self.notify()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._progress.wait()
                    self._progress.clear()
                    if await self._store.outbox_count() == 0:
                        return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff, forever; returns only by cancellation.

        Cancelling it is the clean stop: the retained ``offline`` status is published before disconnecting.
        """
        if not self._mqtt.enabled:
            self._log.info("telemetry disabled")
            await asyncio.Event().wait()
        failures = 0
        while True:
            self._was_up = False
            error: BaseException = aiomqtt.MqttError("session ended")
            try:
                await self._session()
            except* _LINK_ERRORS as group:
                error = _first_leaf(group)
            # A link error raised while we were being cancelled (the disconnect after the goodbye, a child
            # of the pump) replaces the CancelledError: the cancellation still wins.
            _raise_if_cancelling()
            # Backoff restarts after a session that was up, so a single drop is retried quickly.
            failures = 1 if self._was_up else failures + 1
            self._link_failed(error, first=failures == 1)
            await asyncio.sleep(self._backoff(failures - 1))

    # --- internals -----------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        """Exponential from ``backoff_base_s`` up to the cap, with half of it jittered."""
        delay = min(self._backoff_cap_s, self._backoff_base_s * 2.0 ** min(failures, 30))
        return delay / 2 + random.uniform(0, delay / 2)

    def _link_failed(self, exc: BaseException, *, first: bool) -> None:
        self._connected = False
        self._last_error = f"{type(exc).__name__}: {exc}"
        if first:
            # An outage is logged once when it starts; retries log at debug level only.
            self._log.warning("telemetry link down; retrying", error=self._last_error)
        else:
            self._log.debug("telemetry reconnect failed", error=self._last_error)

    def _client(self, will: Outgoing) -> aiomqtt.Client:
        window = self._mqtt.window
        client = aiomqtt.Client(
            self._mqtt.host,
            self._mqtt.port,
            username=self._mqtt.username,
            password=self._mqtt.password,
            identifier=self._client_id,
            will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
            clean_session=True,
            keepalive=self._mqtt.keepalive_s,
            # A publish or the CONNACK taking longer than this means the link is dead even if TCP is quiet.
            timeout=max(10.0, 2.0 * self._mqtt.keepalive_s),
            max_inflight_messages=window,
            # Without TCP_NODELAY, Nagle + delayed ACK stall a windowed QoS 1 stream at ~2k msg/s (PERF.md).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # aiomqtt warns above this many pending calls; a full window is our normal state, not a concern.
        client.pending_calls_threshold = window + 10
        return client

    async def _session(self) -> None:
        """One connection: subscribe, births once ready, then pump until the link fails or is cancelled."""
        client = self._client(await self._encoding.will())
        async with client:
            self._connected = True
            self._was_up = True
            self._log.info("telemetry link up", error_before=self._last_error)
            try:
                _raise_if_cancelling()
                for topic in (*self._encoding.subscriptions(), *self._inbound_topics()):
                    await client.subscribe(topic, qos=1)
                if self._encoding.ready_on_connect():
                    self._ready.set()
                else:
                    self._ready.clear()
                _raise_if_cancelling()
                await self._pump(client)
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise
            finally:
                self._connected = False
                self._ready.clear()
                await self._commit_acks()

    def _inbound_topics(self) -> list[str]:
        return [topic for handler in self._inbound for topic in handler.subscriptions()]

    async def _births(self, client: aiomqtt.Client) -> None:
        await self._send_in_order(client, lambda: self._encoding.births(self._clock.wall()))

    async def _send_in_order(self, client: aiomqtt.Client, encode: Callable[[], list[Outgoing]]) -> None:
        """Encode, then hand the messages to paho with no other encoding or hand-off in between.

        An encoding may number its messages as it builds them (Sparkplug ``seq``), and one call may build
        several (births, or births before a row's data): another row encoded and handed over between them
        would put the numbers on the wire out of order. Only the messages before the last are awaited under
        the lock; the last is handed over right after the release, in the same step (a woken waiter runs only
        once this task suspends), so single-message rows keep the window full.
        """
        async with self._wire_order:
            messages = encode()
            for message in messages[:-1]:
                await _send(client, message)
        if messages:
            await _send(client, messages[-1])

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Clean stop: a graceful disconnect suppresses the will, so the encoding says goodbye itself."""
        message = self._encoding.goodbye(self._clock.wall())
        if message is None:
            return
        try:
            async with asyncio.timeout(_STATUS_TIMEOUT_S):
                await _send(client, message)
        except _LINK_ERRORS as exc:
            self._log.warning("could not publish goodbye", error=f"{type(exc).__name__}: {exc}")

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish rows in id order with a window in flight; returns only by an exception."""
        window = asyncio.Semaphore(self._mqtt.window)
        after_id = 0  # a new session resends every row not yet acknowledged
        # Rows queued before this session came up are replayed backlog, marked historical on the wire.
        backlog_mark = await self._store.last_outbox_id()
        inbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(maxsize=_INBOX_SIZE)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(client, inbox), name="telemetry:watch")
            tg.create_task(self._dispatch(client, inbox), name="telemetry:inbound")
            tg.create_task(self._acker(), name="telemetry:ack")
            await self._ready.wait()
            await self._births(client)
            while True:
                self._wake.clear()
                rows = await self._store.outbox_batch(self._mqtt.window, after_id=after_id)
                if not rows:
                    # Also look again now and then: a record cancelled after its commit never wakes us.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_IDLE_POLL_S):
                            await self._wake.wait()
                    continue
                for row in rows:
                    await window.acquire()
                    await self._ready.wait()
                    # Tasks start in creation order and hand their message to paho in their first step,
                    # so the wire order is the id order.
                    tg.create_task(
                        self._publish(client, row, window, historical=row.id <= backlog_mark),
                        name=f"telemetry:publish:{row.id}",
                    )
                    after_id = row.id

    async def _publish(
        self, client: aiomqtt.Client, row: OutboxRow, window: asyncio.Semaphore, *, historical: bool
    ) -> None:
        await self._send_in_order(
            client,
            lambda: self._encoding.encode(row, publish_ts=self._clock.wall(), historical=historical),
        )
        window.release()
        self._pending_acks.append(row.id)
        self._acks_ready.set()

    async def _dispatch(self, client: aiomqtt.Client, inbox: asyncio.Queue[tuple[str, bytes, bool]]) -> None:
        """Hand subscribed messages to the encoding or an inbound handler, one at a time, in arrival order."""
        encoding_filters = tuple(self._encoding.subscriptions())
        while True:
            topic, payload, retained = await inbox.get()
            if any(aiomqtt.Topic(topic).matches(f) for f in encoding_filters):
                await self._react(client, self._encoding.on_message(topic, payload))
                continue
            for handler in self._inbound:
                if any(aiomqtt.Topic(topic).matches(f) for f in handler.subscriptions()):
                    for reply in await handler.handle(topic, payload, retained=retained):
                        await _send(client, reply)
                    break

    async def _react(self, client: aiomqtt.Client, reaction: Reaction) -> None:
        if reaction is Reaction.READY and not self._ready.is_set():
            self._log.info("telemetry host ready")
            self._ready.set()
        elif reaction is Reaction.REBIRTH and self._ready.is_set():
            self._log.info("rebirth requested")
            await self._births(client)
        elif reaction is Reaction.NOT_READY:
            self._ready.clear()
            await self._goodbye(client)
            raise aiomqtt.MqttError("host went offline")

    async def _acker(self) -> None:
        """Delete acknowledged rows in groups: whatever arrived while the last commit ran goes in the next."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready.clear()
            await self._commit_acks()

    async def _commit_acks(self) -> None:
        ids, self._pending_acks = self._pending_acks, []
        if not ids:
            return
        await self._store.ack(ids)
        self._delivered += len(ids)
        self._progress.set()

    async def _watch(self, client: aiomqtt.Client, inbox: asyncio.Queue[tuple[str, bytes, bool]]) -> None:
        """Queue subscribed messages; raise as soon as the link drops (aiomqtt leaves publishes waiting)."""
        async for message in client.messages:
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload).encode()
            if inbox.full():
                # A flood of commands must not grow memory: the sender gets no reply and retries.
                self._log.warning("inbound message dropped: too many waiting", topic=str(message.topic))
                continue
            inbox.put_nowait((str(message.topic), data, bool(message.retain)))
        raise aiomqtt.MqttError("message stream ended")


async def _send(client: aiomqtt.Client, message: Outgoing) -> None:
    await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
    # aiomqtt can swallow a cancellation that lands with the PUBACK (see _raise_if_cancelling).
    _raise_if_cancelling()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    aiomqtt waits with ``asyncio.wait_for``, which on Python 3.11 returns the result instead of raising when
    the awaited operation completes in the same loop turn as the cancellation; the request stays counted.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
