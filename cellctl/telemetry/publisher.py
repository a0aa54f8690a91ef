"""Delivers the outbox to the MQTT broker at QoS 1, each stream in order, deleting rows only after PUBACK.

The only module that imports an MQTT library. One supervisor loop owns the connection: connect (with the
encoding's last will) -> subscribe to what the encoding and the inbound handlers listen to -> births once the
encoding is ready -> publish the outbox with a window of messages in flight -> on any link failure log once,
back off (capped, jittered), reconnect and resend what was not acknowledged. Consumers see each message at
least once; duplicates happen only within the window after a reconnect and carry the same ``msg_id``.
What goes on the wire is the encoding's business (``encoding.py``): UNS JSON by default.

Replay: rows queued before a session came up are backlog (``historical`` on the wire). Each stream is read
in id order (= seq order) from its own cursor, and each session starts every stream again at its oldest row
not yet deleted. A live row of a stream with no backlog waiting goes out at once, ahead of older backlog of
other streams; backlog goes out at ``mqtt.replay_rate`` msg/s at most and holds at most ``mqtt.replay_share``
of the window. The trade-off: a live row of a stream that still has backlog waits behind that backlog, because
order within a stream comes first; across streams, wire order is id order only while there is no backlog.
``mqtt.window`` messages are in flight on the wire at most (a slot is freed at the PUBACK), and at most
another window of acknowledged rows waits for its delete to commit: a crash resends at most two windows, a
broker outage at most one (acknowledged rows are deleted before the session ends).

A broker that refuses the login (bad user name or password, not authorised) or a certificate (its own failing
verification, or ours refused) is not an outage: retrying fast cannot help and looks like an attack, so it is
logged once at error level and retried every ``mqtt.refused_backoff_s``. Either way the state is reported
to ``on_link`` callbacks as a :class:`BrokerLink`; records keep going to the outbox meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from cellctl.core.clock import Clock, SystemClock
from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.cell import Identity, MqttConfig, MqttTls
from cellctl.schema.secrets import SecretFileError, read_secret_file
from cellctl.store import OutboxRow, Store
from cellctl.telemetry.encoding import Encoding, Inbound, Outgoing, Reaction
from cellctl.telemetry.uns import UnsJsonEncoding

WakeSource = asyncio.Event | Callable[[Callable[[], None]], object]
"""An event the recorder sets, or a registration function such as ``Recorder.add_listener``."""

_LINK_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError)
_STATUS_TIMEOUT_S = 1.0
_IDLE_POLL_S = 5.0
_INBOX_SIZE = 100
_MIN_BATCH = 100
"""Rows read per stream and read at least (a lane is read again at half of it: bounded memory, at most
streams x 1.5 batches of rows, whatever the backlog)."""
_PACE_BURST_S = 0.05
"""The replay may send this many seconds' worth of its rate at once after a pause."""
_PACE_TICK_S = 0.005
_WAKE_READ_S = 0.005
"""While rows wait to be sent, new rows are looked for at most this often (bounds a live row's wait)."""
"""When the replay waits for its rate, it waits for this many seconds' worth of messages (fewer timers)."""

_PROBE_PREFIX = "cellctl-liveness-probe/"

# CONNACK codes that say "you may not log in" (MQTT 3.1.1 and their MQTT 5 counterparts): identifier
# rejected, bad user name or password, not authorised, banned, bad authentication method.
_REFUSED_CONNACK = frozenset({2, 4, 5, 133, 134, 135, 138, 140})


class BrokerLinkState(StrEnum):
    """The publisher's link to its broker."""

    UP = "up"
    DOWN = "down"
    """An outage (network, broker gone, silent link): retried quickly, up to the network backoff cap."""
    REFUSED = "refused"
    """The broker refused the login or a certificate: retried slowly, every ``mqtt.refused_backoff_s``."""


@dataclass(frozen=True, slots=True)
class BrokerLink:
    """One report of the broker link: its state, why, when (wall clock) and when the next attempt is."""

    state: BrokerLinkState
    broker: str
    """``host:port``."""
    at: float
    reason: str = ""
    attempt: int = 0
    """Consecutive failed attempts (0 when up)."""
    retry_s: float | None = None
    """Delay before the next attempt (None when up)."""
    since: float = 0.0
    """When the link entered this state (the first report of a run of the same state)."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready data (the ``telemetry`` entry of the API status)."""
        return {
            "state": self.state.value,
            "broker": self.broker,
            "since": self.since,
            "reason": self.reason,
            "attempt": self.attempt,
            "retry_s": self.retry_s,
        }


LinkCallback = Callable[[BrokerLink], None]


def default_client_id(identity: Identity) -> str:
    """``cellctl-<enterprise>-<site>-<area>-<line>-<cell>``: one controller per cell holds the session."""
    levels = (identity.enterprise, identity.site, identity.area, identity.line, identity.cell)
    return "-".join(("cellctl", *levels))


@dataclass(frozen=True, slots=True)
class BrokerCheck:
    """What one trial connection to the broker found (``cellctl doctor``)."""

    connected: bool
    refused: bool
    """The broker (or its TLS) said no: a login or certificate to fix, not a network to look at."""
    reason: str = ""


async def check_broker(
    mqtt: MqttConfig, resolve_path: Callable[[str], Path], client_id: str, timeout: float
) -> BrokerCheck:
    """Connect once with the configured TLS and login, wait for the CONNACK, disconnect.

    ``client_id`` must differ from the controller's: a broker drops the older session of a repeated id, so
    checking with the controller's own would cut the running controller off. ConfigError when the password
    file or the TLS files cannot be loaded (as at ``cellctl run``).
    """
    password = _password(mqtt, resolve_path)
    tls = _TlsContext.build(mqtt.tls, resolve_path) if mqtt.tls is not None else None
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=password,
        identifier=client_id,
        clean_session=True,
        keepalive=mqtt.keepalive_s,
        timeout=timeout,
        tls_context=tls,
    )
    try:
        async with asyncio.timeout(timeout), client:
            pass
    except TimeoutError:
        return BrokerCheck(False, False, f"no answer (CONNACK) within {timeout:g} s")
    except _LINK_ERRORS as exc:
        refusal = _refusal(exc, tls.alert if tls is not None else None)
        if refusal is not None:
            return BrokerCheck(False, True, refusal)
        return BrokerCheck(False, False, str(exc) or type(exc).__name__)
    return BrokerCheck(True, False)


class OutboxPublisher:
    """Outbox -> broker at QoS 1, each stream in order, ``mqtt.window`` in flight; retries forever."""

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
        resolve_path: Callable[[str], Path] = Path,
    ) -> None:
        """Publish ``store``'s outbox to the broker of ``mqtt``; ``wake`` tells it new rows are queued.

        ``encoding`` puts rows on the wire (default: UNS JSON); ``inbound`` handlers answer commands.
        ``resolve_path`` turns the config's file names (TLS files, password file) into paths: pass the cell
        file's ``LoadedConfig.resolve``. The password file is read and the TLS files loaded here, at start:
        ConfigError (naming the key) when one cannot be used.
        """
        self._store = store
        self._mqtt = mqtt
        self._password = _password(mqtt, resolve_path)
        self._tls = _TlsContext.build(mqtt.tls, resolve_path) if mqtt.tls is not None else None
        self._broker = f"{mqtt.host}:{mqtt.port}"
        self._link_callbacks: list[LinkCallback] = []
        self._link: BrokerLink | None = None
        self._client_id = mqtt.client_id or default_client_id(identity)
        self._clock: Clock = clock or SystemClock()
        self._encoding: Encoding = encoding or UnsJsonEncoding(
            identity, self._client_id, started_ts=self._clock.wall()
        )
        self._inbound = tuple(inbound)
        self._ready = asyncio.Event()
        self._wire = _WireOrder()
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        if isinstance(wake, asyncio.Event):
            self._wake = wake
        else:
            self._wake = asyncio.Event()
            if wake is not None:
                wake(self.notify)
        self._progress = asyncio.Event()
        self._lanes: _Lanes | None = None
        """The session's read-ahead (None between sessions): rows in it are known to be queued."""
        self._flow: _Flow | None = None
        """The session's flow control (None between sessions)."""
        self._wake_read_at = 0.0
        self._connected = False
        self._delivered = 0
        self._last_error: str | None = None
        self._was_up = False
        self._log = structlog.get_logger("cellctl.telemetry").bind(
            cell=identity.cell, broker=self._broker, client_id=self._client_id, tls=self._tls is not None
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

    @property
    def link(self) -> BrokerLink | None:
        """The latest link report (None before the first attempt ended either way)."""
        return self._link

    def link_view(self) -> dict[str, object]:
        """The link as JSON-ready data; ``state`` is ``connecting`` before the first report."""
        if self._link is None:
            return {"state": "connecting", "broker": self._broker}
        return self._link.to_dict()

    def on_link(self, callback: LinkCallback) -> Callable[[], None]:
        """Call ``callback`` when the link comes up and after every failed attempt; returns the unsubscribe.

        Called in the publisher's task: keep it short and non-blocking (e.g. put the report on a queue).
        """
        self._link_callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._link_callbacks:
                self._link_callbacks.remove(callback)

        return unsubscribe

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
                    # Counting reads the whole outbox on the store thread, where the deletes queue behind
                    # it: not while rows are known to be waiting (read ahead, or sent and not deleted).
                    if not self._holds_rows() and await self._store.outbox_count() == 0:
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
            if self._tls is not None:
                self._tls.alert = None
            error: BaseException = aiomqtt.MqttError("session ended")
            try:
                async with self._cut_on_tls_alert():
                    await self._session()
            except* _LINK_ERRORS as group:
                error = _first_leaf(group)
            # A link error raised while we were being cancelled (the disconnect after the goodbye, a child
            # of the pump) replaces the CancelledError: the cancellation still wins.
            _raise_if_cancelling()
            # Backoff restarts after a session that was up, so a single drop is retried quickly.
            failures = 1 if self._was_up else failures + 1
            refusal = None if self._was_up else _refusal(error, self._tls.alert if self._tls else None)
            if refusal is not None:
                delay = self._refused_backoff()
                self._link_refused(refusal, attempt=failures, retry_s=delay)
            else:
                delay = self._backoff(failures - 1)
                self._link_failed(error, first=failures == 1, attempt=failures, retry_s=delay)
            await asyncio.sleep(delay)

    # --- internals -----------------------------------------------------------------------------------

    def _holds_rows(self) -> bool:
        """True while some row is read ahead or sent and not deleted: the outbox is not empty then."""
        lanes, flow = self._lanes, self._flow
        return lanes is not None and flow is not None and (flow.unsettled > 0 or lanes.has_rows())

    def _backoff(self, failures: int) -> float:
        """Exponential from ``backoff_base_s`` up to the cap, with half of it jittered."""
        delay = min(self._backoff_cap_s, self._backoff_base_s * 2.0 ** min(failures, 30))
        return delay / 2 + random.uniform(0, delay / 2)

    @contextlib.asynccontextmanager
    async def _cut_on_tls_alert(self) -> AsyncIterator[None]:
        """End the session (TimeoutError) as soon as the broker sends a TLS alert.

        With TLS 1.3 a broker refuses cellctl's certificate (or its absence) after the handshake; paho only
        sees a lost connection and aiomqtt would wait out its whole timeout for the CONNACK.
        """
        tls = self._tls
        if tls is None:
            yield
            return
        loop = asyncio.get_running_loop()
        active = True
        async with asyncio.timeout(None) as scope:

            def cut() -> None:
                if active:
                    scope.reschedule(loop.time())

            tls.on_alert = lambda: loop.call_soon_threadsafe(cut)
            try:
                yield
            finally:
                active = False
                tls.on_alert = None

    def _refused_backoff(self) -> float:
        """About ``mqtt.refused_backoff_s``, the last quarter jittered so cells do not retry together."""
        slow = self._mqtt.refused_backoff_s
        return random.uniform(0.75 * slow, slow)

    def _report(
        self, state: BrokerLinkState, reason: str = "", attempt: int = 0, retry_s: float | None = None
    ) -> None:
        now = self._clock.wall()
        since = self._link.since if self._link is not None and self._link.state is state else now
        self._link = BrokerLink(state, self._broker, now, reason, attempt, retry_s, since)
        for callback in tuple(self._link_callbacks):
            callback(self._link)

    def _link_failed(self, exc: BaseException, *, first: bool, attempt: int, retry_s: float) -> None:
        self._connected = False
        self._last_error = f"{type(exc).__name__}: {exc}"
        if first:
            # An outage is logged once when it starts; retries log at debug level only.
            self._log.warning("telemetry link down; retrying", error=self._last_error)
        else:
            self._log.debug("telemetry reconnect failed", error=self._last_error)
        self._report(BrokerLinkState.DOWN, self._last_error, attempt, retry_s)

    def _link_refused(self, reason: str, *, attempt: int, retry_s: float) -> None:
        self._connected = False
        previous = self._link
        self._last_error = reason
        if previous is None or previous.state is not BrokerLinkState.REFUSED or previous.reason != reason:
            # Logged once per refusal (not per attempt): it needs a person, who needs to read it only once.
            self._log.error(
                "broker refused the connection; retrying slowly",
                reason=reason,
                retry_every_s=self._mqtt.refused_backoff_s,
            )
        else:
            self._log.debug("broker refused the connection again", reason=reason)
        self._report(BrokerLinkState.REFUSED, reason, attempt, retry_s)

    def _client(self, will: Outgoing) -> aiomqtt.Client:
        window = self._mqtt.window
        client = aiomqtt.Client(
            self._mqtt.host,
            self._mqtt.port,
            username=self._mqtt.username,
            password=self._password,
            identifier=self._client_id,
            will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
            clean_session=True,
            # The broker drops us after 1.5 x keepalive of silence (and publishes the will); _probe sees a
            # silent link on our side within 1.5 x keepalive as well.
            keepalive=self._mqtt.keepalive_s,
            # The CONNACK or a PUBACK taking longer than that means the link is dead as well.
            timeout=2.0 * self._mqtt.keepalive_s,
            max_inflight_messages=window,
            # Without TCP_NODELAY, Nagle + delayed ACK stall a windowed QoS 1 stream at ~2k msg/s (PERF.md).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            tls_context=self._tls,
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
            self._report(BrokerLinkState.UP)
            try:
                _raise_if_cancelling()
                for topic in (*self._encoding.subscriptions(), *self._inbound_topics()):
                    await client.subscribe(topic, qos=1)
                if self._encoding.ready_on_connect():
                    self._ready.set()
                else:
                    self._ready.clear()
                _raise_if_cancelling()
                async with asyncio.TaskGroup() as liveness:
                    liveness.create_task(self._probe(client), name="telemetry:probe")
                    await self._pump(client)
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise
            finally:
                self._connected = False
                self._ready.clear()
                self._lanes = None
                if self._flow is not None:
                    await self._commit_acks(self._flow)
                    self._flow = None

    async def _probe(self, client: aiomqtt.Client) -> None:
        """Prove the link alive with a round trip every half keepalive, each allowed one keepalive.

        paho's own keepalive gives up on a silent link only after two to two-and-a-bit keepalives (its timer
        ticks once a second); this sees it within 1.5 x keepalive. The round trip is an UNSUBSCRIBE of a
        filter cellctl never subscribes: the broker answers it whatever its ACLs, and it changes nothing.
        """
        keepalive = float(self._mqtt.keepalive_s)
        while True:
            await asyncio.sleep(keepalive / 2)
            await client.unsubscribe(f"{_PROBE_PREFIX}{self._client_id}", timeout=keepalive)

    def _inbound_topics(self) -> list[str]:
        return [topic for handler in self._inbound for topic in handler.subscriptions()]

    async def _births(self, client: aiomqtt.Client) -> None:
        await self._send_in_order(client, lambda: self._encoding.births(self._clock.wall()))

    async def _send_in_order(self, client: aiomqtt.Client, encode: Callable[[], list[Outgoing]]) -> None:
        """Encode, then hand the messages to paho with no other encoding or hand-off in between.

        An encoding may number its messages as it builds them (Sparkplug ``seq``), and one call may build
        several (births, or births before a row's data): another row encoded and handed over between them
        would put the numbers on the wire out of order. Only the messages before the last are awaited while
        holding the wire; the last is handed over right after, in the same step (a woken waiter runs only once
        this task suspends), so single-message rows keep the window full.
        """
        async with self._wire.held():
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
        """Publish the outbox with a window in flight: live rows first, backlog rate-limited; never returns.

        Each stream is a lane read in id order from its own cursor; the next row is the oldest live lane head
        (wire order is id order while there is no backlog), else the oldest backlog head once the replay rate
        and the backlog's share of the window allow it. A lane whose head is backlog holds its live rows
        behind it: order in a stream comes first.
        """
        window = self._mqtt.window
        # Rows queued before this session came up are replayed backlog, marked historical on the wire.
        # A new session starts every lane at its oldest unacknowledged row.
        lanes = _Lanes(mark=await self._store.last_outbox_id(), batch=max(window, _MIN_BATCH))
        # Backlog holds at most its share of the window, so a live row finds a free slot at once.
        flow = _Flow(
            wire=window,
            replay=max(1, int(window * self._mqtt.replay_share)),
            settle_limit=2 * window,
            mark=lanes.mark,
        )
        self._lanes, self._flow = lanes, flow
        pace = _ReplayPace(self._mqtt.replay_rate)
        inbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(maxsize=_INBOX_SIZE)
        direct = _DirectPublish(client, flow.on_acked)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(client, inbox), name="telemetry:watch")
            tg.create_task(self._dispatch(client, inbox), name="telemetry:inbound")
            tg.create_task(self._acker(flow), name="telemetry:ack")
            await self._ready.wait()
            await self._births(client)
            self._wake.set()  # the first read looks at every stream
            read: asyncio.Task[None] | None = None
            while True:
                if read is None:
                    wanted = self._lanes_to_read(lanes)
                    if wanted is not None:
                        # Read ahead while the rows already read go out: a drain waited on the store for a
                        # quarter of its time when each read was awaited here (it queues behind the deletes).
                        read = tg.create_task(self._read(lanes, *wanted), name="telemetry:read")
                if read is not None and (read.done() or lanes.dry):
                    # A lane that ran dry may hold the oldest row: its place is known once it is read.
                    await read
                    read = None
                    continue
                row = lanes.live_head()
                backlog = row is None
                if row is None:
                    row = lanes.backlog_head()
                    if row is None:
                        if read is not None:
                            await read
                            read = None
                        elif not await self._woken_within(_IDLE_POLL_S):
                            # Look again now and then: a record cancelled after its commit never wakes us.
                            self._wake.set()
                        continue
                    delay = pace.delay()
                    if delay > 0:
                        # A live row arriving meanwhile wakes us and goes first.
                        await self._woken_within(delay)
                        continue
                if flow.blocked(backlog=backlog):
                    # Woken by a PUBACK or a delete, then the choice is made again: a live row may wait.
                    flow.freed.clear()
                    await flow.freed.wait()
                    continue
                if not self._ready.is_set():
                    await self._ready.wait()
                    continue
                lanes.pop(row)
                flow.take(backlog=backlog)
                if backlog:
                    pace.take()
                # Handed to paho right here, in this step, so the wire order is the order picked here.
                if self._wire.busy:
                    await self._publish(client, direct, row, historical=backlog)  # births are going out
                    continue
                messages = self._encoding.encode(row, publish_ts=self._clock.wall(), historical=backlog)
                if len(messages) == 1:
                    direct.publish(messages[0], row.id)
                    continue
                # Taken in the step it was seen free: nothing else is encoded before these are handed over.
                self._wire.busy = True
                try:
                    await self._hand_over(client, direct, row.id, messages)
                finally:
                    self._wire.give_back()

    def _lanes_to_read(self, lanes: _Lanes) -> tuple[list[str] | None, list[str]] | None:
        """The read to start now, if any: after a wake every stream, else the lanes running low.

        While rows are waiting to go, a wake is taken at most every ``_WAKE_READ_S``: a recorder wakes the
        publisher once per fact, and a store read per row would queue every publish behind a commit.
        """
        woke = self._wake.is_set()
        if not woke and not lanes.low:
            return None  # the per-row fast path: nothing new and no lane running low
        now = asyncio.get_running_loop().time()
        if woke and lanes.has_rows() and now - self._wake_read_at < _WAKE_READ_S:
            woke = False  # the flag stays set: read once the interval has passed or the lanes run low
        elif woke:
            self._wake.clear()
            self._wake_read_at = now
        streams, skip = lanes.to_read(woke=woke)
        if streams is not None and not streams:
            return None
        return streams, skip

    async def _read(self, lanes: _Lanes, streams: list[str] | None, skip: list[str]) -> None:
        """One store call reading ahead ``streams`` (None: all but ``skip``) from their cursors."""
        batches = await self._store.outbox_by_stream(lanes.cursors(), lanes.batch, streams=streams, skip=skip)
        lanes.fill(batches, read=streams, skipped=skip)

    async def _woken_within(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for new rows; True if woken."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
                return True
        return False

    async def _publish(
        self, client: aiomqtt.Client, direct: _DirectPublish, row: OutboxRow, *, historical: bool
    ) -> None:
        """Wait for the wire, then encode ``row`` and hand its messages over (the pump's path while births or
        another row's messages are going out)."""
        async with self._wire.held():
            messages = self._encoding.encode(row, publish_ts=self._clock.wall(), historical=historical)
            await self._hand_over(client, direct, row.id, messages)

    async def _hand_over(
        self, client: aiomqtt.Client, direct: _DirectPublish, row_id: int, messages: list[Outgoing]
    ) -> None:
        """Hand a row's messages to paho, the caller holding the wire; the row is settled at the last one's
        PUBACK. The messages before the last (an encoding's births before a row's data) are awaited, as in
        :meth:`_send_in_order`; the last goes to paho directly."""
        for message in messages[:-1]:
            await _send(client, message, bounded=False)
        if messages:
            direct.publish(messages[-1], row_id)
        else:
            direct.done(row_id)  # nothing to send: the row is done

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

    async def _acker(self, flow: _Flow) -> None:
        """Delete acknowledged rows in groups: whatever arrived while the last commit ran goes in the next."""
        while True:
            await flow.acks_ready.wait()
            flow.acks_ready.clear()
            await self._commit_acks(flow)

    async def _commit_acks(self, flow: _Flow) -> None:
        ids, flow.acked = flow.acked, []
        if not ids:
            return
        await self._store.ack(ids)
        self._delivered += len(ids)
        flow.settled(len(ids))
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


async def _send(client: aiomqtt.Client, message: Outgoing, *, bounded: bool = True) -> None:
    """Publish one message and wait for its PUBACK; ``bounded`` False waits without aiomqtt's timeout.

    Outbox rows wait unbounded: a dead link is caught by the liveness probe and the message stream, and
    aiomqtt's per-publish timeout costs a task and a timer per message (a third of the publish path).
    """
    timeout = None if bounded else math.inf
    await client.publish(
        message.topic, message.payload, qos=message.qos, retain=message.retain, timeout=timeout
    )
    # aiomqtt can swallow a cancellation that lands with the PUBACK (see _raise_if_cancelling).
    _raise_if_cancelling()


class _DirectPublish:
    """Outbox messages handed to paho directly, each PUBACK calling back: no task, event or timer each.

    aiomqtt's ``publish`` costs an ``asyncio.Event``, a wait and a scan of its pending calls per message,
    most of the drain's time. This is the one place that reaches into aiomqtt's private paho client
    (``Client._client``, aiomqtt 2.5; ``tests/integration/test_publisher_direct.py`` fails if that
    changes). paho calls ``on_publish`` from aiomqtt's socket reader, on the event loop's thread; the
    wrapper settles our messages, and hands the others to aiomqtt's handler (births, replies, goodbye).

    A PUBACK that never comes (the link dropped) calls nothing: the session ends through the message stream
    or the liveness probe, this object goes with it, and the rows not deleted are sent again next session.
    """

    def __init__(self, client: aiomqtt.Client, on_acked: Callable[[int], None]) -> None:
        """Install the PUBACK hook on ``client``'s paho client (connected: its callbacks are set).

        ``on_acked(token)`` is called at the PUBACK of each message handed over with that token.
        """
        self._paho = client._client  # private: see the class docstring
        self._on_acked = on_acked
        self._tokens: dict[int, int] = {}
        aiomqtt_on_publish = self._paho.on_publish
        tokens = self._tokens

        def on_publish(*args: Any, **kwargs: Any) -> None:
            # paho's on_publish(client, userdata, mid, reason_code, properties) for its VERSION2 callbacks.
            token = tokens.pop(args[2], None)
            if token is not None:
                on_acked(token)
            elif aiomqtt_on_publish is not None:
                aiomqtt_on_publish(*args, **kwargs)

        self._paho.on_publish = on_publish

    def publish(self, message: Outgoing, token: int) -> None:
        """Hand ``message`` to paho now; ``on_acked(token)`` follows at its PUBACK. MqttCodeError if paho
        refused it.

        paho may already count it published when this returns (QoS 0): then ``on_acked`` is called at once.
        """
        info = self._paho.publish(message.topic, message.payload, message.qos, message.retain)
        if info.rc != 0:  # MQTT_ERR_SUCCESS; MQTT_ERR_NO_CONN when the link is gone
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if info.is_published():
            self._on_acked(token)
        else:
            self._tokens[info.mid] = token

    def done(self, token: int) -> None:
        """Settle ``token`` with nothing handed over (a row its encoding sends nothing for)."""
        self._on_acked(token)

    @property
    def waiting(self) -> int:
        """Messages handed over whose PUBACK has not come yet."""
        return len(self._tokens)


def _password(mqtt: MqttConfig, resolve_path: Callable[[str], Path]) -> str | None:
    if mqtt.password_file is None:
        return mqtt.password
    try:
        return read_secret_file(resolve_path(mqtt.password_file))
    except SecretFileError as exc:
        raise ConfigError([_issue("mqtt.password_file", str(exc))]) from exc


def _issue(key: str, message: str) -> ConfigIssue:
    return ConfigIssue(file="<cell file>", line=None, path=key, message=message)


class _AlertRecordingSocket(ssl.SSLSocket):
    """Keeps the TLS error a read raised on its context: with TLS 1.3 a broker refuses a client certificate
    only after the handshake, and paho turns that read error into a plain lost connection."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            context = self.context
            if isinstance(context, _TlsContext):
                context.alert = exc
                if context.on_alert is not None:
                    context.on_alert()
            raise


class _TlsContext(ssl.SSLContext):
    """A client context that always verifies the broker's chain and name (``server_name`` if given)."""

    server_name: str | None = None
    alert: ssl.SSLError | None = None
    """The TLS error of the latest connection's reads, if any."""
    on_alert: Callable[[], object] | None = None
    """Called (in whichever thread reads) when a read raised a TLS error."""

    @classmethod
    def build(cls, tls: MqttTls, resolve_path: Callable[[str], Path]) -> _TlsContext:
        """Load the CA (or the system's CAs) and the client certificate; ConfigError naming the bad file."""
        context = cls(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED and check_hostname on
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.sslsocket_class = _AlertRecordingSocket
        context.server_name = tls.server_name
        try:
            if tls.ca_file is None:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cafile=str(resolve_path(tls.ca_file)))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([_issue("mqtt.tls.ca_file", f"cannot load the CA: {exc}")]) from exc
        if tls.cert_file is not None and tls.key_file is not None:
            try:
                context.load_cert_chain(
                    str(resolve_path(tls.cert_file)), str(resolve_path(tls.key_file)), tls.key_password
                )
            except (OSError, ssl.SSLError) as exc:
                message = f"cannot load the client certificate and key: {exc}"
                raise ConfigError([_issue("mqtt.tls.cert_file", message)]) from exc
        return context

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap as usual, checking the configured ``server_name`` instead of the host connected to."""
        if self.server_name is not None:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def _refusal(error: BaseException, alert: ssl.SSLError | None) -> str | None:
    """Why the broker refused us, when ``error`` (a failed connect) is a refusal rather than an outage."""
    if isinstance(error, aiomqtt.MqttCodeError):
        rc = error.rc
        code = rc if isinstance(rc, int) or rc is None else rc.value
        if code in _REFUSED_CONNACK:
            return f"the broker refused the login: {rc if not isinstance(rc, int) else error}"
    cause: BaseException | None = error
    seen = 0
    # aiomqtt re-raises connect errors as MqttError(str(exc)) from None: the ssl error is the context.
    while cause is not None and seen < 5:
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or str(cause)
            return f"the broker's certificate failed verification: {why}"
        if isinstance(cause, ssl.SSLError) and _is_alert(cause):
            return f"the broker refused the TLS handshake: {_alert_text(cause)}"
        cause = cause.__cause__ or cause.__context__
        seen += 1
    if alert is not None and _is_alert(alert):
        return f"the broker refused the TLS session: {_alert_text(alert)}"
    return None


# What the broker's TLS alerts mean for the person fixing it (the raw reason follows in brackets).
_ALERTS = {
    "CERTIFICATE_REQUIRED": "it requires a client certificate (mqtt.tls.cert_file, key_file)",
    "UNKNOWN_CA": "it does not trust the CA of cellctl's client certificate",
    "BAD_CERTIFICATE": "it rejected cellctl's client certificate",
    "CERTIFICATE_EXPIRED": "it says cellctl's client certificate has expired",
    "CERTIFICATE_REVOKED": "it says cellctl's client certificate is revoked",
    "UNSUPPORTED_CERTIFICATE": "it cannot use cellctl's client certificate",
    "ACCESS_DENIED": "access denied",
    "HANDSHAKE_FAILURE": "a client certificate missing or refused, or no cipher in common",
    "PROTOCOL_VERSION": "no TLS version in common",
}


def _alert_text(exc: ssl.SSLError) -> str:
    reason = exc.reason or str(exc)
    meaning = next((text for key, text in _ALERTS.items() if reason.upper().endswith(key)), None)
    return f"{meaning} ({reason})" if meaning else reason


def _is_alert(exc: ssl.SSLError) -> bool:
    """A TLS alert from the broker (certificate required, unknown CA, ...), not a connection that broke."""
    return "ALERT" in (exc.reason or "")


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


@dataclass(slots=True)
class _Lane:
    """One stream's rows read ahead, in id order, and its read cursor."""

    after_id: int = 0
    """The last id read (a new session starts at 0: every unacknowledged row is sent again)."""
    rows: deque[OutboxRow] = field(default_factory=deque)
    more: bool = True
    """Rows may be waiting past ``after_id``: the last read was full, or new rows were recorded since."""


class _Lanes:
    """The publisher's read-ahead for one session: a lane per stream, at most ``batch`` rows each."""

    def __init__(self, *, mark: int, batch: int) -> None:
        self.mark = mark
        """Rows with ids up to this were queued before the session came up: backlog."""
        self.batch = batch
        self._low = batch // 2
        """A lane with this many rows or fewer left is read ahead (if more may wait)."""
        self._lanes: dict[str, _Lane] = {}
        self.dry = False
        """Some lane ran out of rows read ahead while more may wait in the store."""
        self.low = False
        """Some lane is running low on rows read ahead while more may wait in the store (or ran dry)."""

    def to_read(self, *, woke: bool) -> tuple[list[str] | None, list[str]]:
        """(streams to read, None for all; streams to skip): the lanes running low, or every lane but those
        with enough rows read ahead after a wake."""
        if woke:
            for lane in self._lanes.values():
                lane.more = True
            return None, [stream for stream, lane in self._lanes.items() if len(lane.rows) > self._low]
        return [s for s, lane in self._lanes.items() if lane.more and len(lane.rows) <= self._low], []

    def cursors(self) -> dict[str, int]:
        """The last id read per stream."""
        return {stream: lane.after_id for stream, lane in self._lanes.items()}

    def fill(
        self, batches: dict[str, list[OutboxRow]], *, read: list[str] | None, skipped: list[str]
    ) -> None:
        """Take what the store returned for the streams ``read`` (None: all but ``skipped``)."""
        names = set(self._lanes) - set(skipped) if read is None else set(read)
        for stream in names | set(batches):
            lane = self._lanes.setdefault(stream, _Lane())
            rows = batches.get(stream, [])
            lane.rows.extend(rows)
            if rows:
                lane.after_id = rows[-1].id
            lane.more = len(rows) >= self.batch
        self.dry = any(lane.more and not lane.rows for lane in self._lanes.values())
        self.low = any(lane.more and len(lane.rows) <= self._low for lane in self._lanes.values())

    def has_rows(self) -> bool:
        """True while some lane holds a row read ahead and not sent yet."""
        return any(lane.rows for lane in self._lanes.values())

    def live_head(self) -> OutboxRow | None:
        """The oldest head row that is live (its lane has no backlog left), if any."""
        best: OutboxRow | None = None
        for lane in self._lanes.values():
            if lane.rows:
                head = lane.rows[0]
                if head.id > self.mark and (best is None or head.id < best.id):
                    best = head
        return best

    def backlog_head(self) -> OutboxRow | None:
        """The oldest head row that is backlog, if any."""
        best: OutboxRow | None = None
        for lane in self._lanes.values():
            if lane.rows:
                head = lane.rows[0]
                if head.id <= self.mark and (best is None or head.id < best.id):
                    best = head
        return best

    def pop(self, row: OutboxRow) -> None:
        """Take ``row`` (a lane's head) off its lane."""
        lane = self._lanes[row.stream]
        popped = lane.rows.popleft()
        assert popped is row, "only a lane's head may be sent"
        if lane.more and len(lane.rows) <= self._low:
            self.low = True
            if not lane.rows:
                self.dry = True


class _WireOrder:
    """Who may encode and hand messages over: one owner at a time, so numbered messages (Sparkplug ``seq``)
    reach the wire in the order they were numbered.

    A flag, not an ``asyncio.Lock``: the pump sees it free and takes it in the same step, with no await (a
    lock just released may already be promised to a waiter that has not run yet).
    """

    def __init__(self) -> None:
        self.busy = False
        self._freed = asyncio.Event()

    async def take(self) -> None:
        """Wait until the wire is free and take it."""
        while self.busy:
            self._freed.clear()
            await self._freed.wait()
        self.busy = True

    def give_back(self) -> None:
        """Free the wire for the next owner."""
        self.busy = False
        self._freed.set()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The wire taken for the block."""
        await self.take()
        try:
            yield
        finally:
            self.give_back()


@dataclass(slots=True)
class _Flow:
    """One session's flow control, kept in counters: no task, lock or semaphore per message.

    A row takes a slot on the wire (freed at its PUBACK), a backlog slot if it is backlog (its share of the
    window, freed at the PUBACK too), and stays unsettled until its delete commits: at most another window of
    acknowledged rows waits for its delete, what a crash would send again besides those in flight. The wire
    slot is not held until the delete: one store round trip longer kept part of the window empty (the drain
    ran at 0.33-0.39 of raw paho that way, 0.44-0.48 freed at the PUBACK).
    """

    wire: int
    """Free slots on the wire."""
    replay: int
    """Free slots for backlog."""
    settle_limit: int
    mark: int
    """Rows with ids up to this are backlog."""
    unsettled: int = 0
    """Rows handed to paho and not deleted yet."""
    acked: list[int] = field(default_factory=list)
    """Rows acknowledged and not yet in a delete."""
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a slot is freed (the pump waits on it when blocked)."""
    acks_ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when rows were acknowledged (the acker waits on it)."""

    def blocked(self, *, backlog: bool) -> bool:
        """True when a row (backlog or not) may not be handed over now."""
        return self.wire <= 0 or self.unsettled >= self.settle_limit or (backlog and self.replay <= 0)

    def take(self, *, backlog: bool) -> None:
        """A row is handed over."""
        self.wire -= 1
        self.unsettled += 1
        if backlog:
            self.replay -= 1

    def on_acked(self, row_id: int) -> None:
        """The row's PUBACK came (or it had nothing to send): its slots are free, its delete is due."""
        self.wire += 1
        if row_id <= self.mark:
            self.replay += 1
        self.acked.append(row_id)
        self.freed.set()
        self.acks_ready.set()

    def settled(self, count: int) -> None:
        """``count`` acknowledged rows were deleted."""
        self.unsettled -= count
        self.freed.set()


class _ReplayPace:
    """A token bucket over the loop's clock: backlog goes out at ``rate`` messages per second at most.

    The loop's clock, not the publisher's injected one: it paces real waits on the real network.
    """

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(1.0, rate * _PACE_BURST_S)
        self._tick = min(self._burst, max(1.0, rate * _PACE_TICK_S))
        self._loop = asyncio.get_running_loop()
        self._tokens = self._burst
        self._at = self._loop.time()

    def delay(self) -> float:
        """0 when a message may go now, else seconds until a tick's worth of messages may."""
        now = self._loop.time()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            return 0.0
        return (self._tick - self._tokens) / self._rate

    def take(self) -> None:
        """One message went."""
        self._tokens -= 1.0
