"""OPC UA driver: a session per connection, one subscription feeding the tag cache, a liveness probe, writes.

Sessions are opened as the device's ``security`` says (opcua_session.py), and node references (NodeIds by
index or namespace URI, browse paths) are resolved against the server at every connect: a reference that does
not resolve makes its tag BAD with the reason, and the device's other tags still serve.

The only module of cellctl that imports asyncua (2.1). asyncua's own ``auto_reconnect`` is left off: it
re-activates the old session, starts at a 1 s delay and holds requests while it reconnects, where this
driver's contract needs a fresh session, every tag BAD and writes failing fast while the link is down.
So each connection is a new ``Client``; the supervisor loop in LinkedBackend owns reconnecting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.methods import call_method_full
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from asyncua.ua.uatypes import Double

from cellctl.core.clock import Clock
from cellctl.core.tags import Quality, Reading, TagValue
from cellctl.drivers._supervisor import WRITE_ONLY, Backoff, LinkedBackend, raise_if_cancelling
from cellctl.drivers._values import CodecError, coerce_received, to_engineering, to_raw
from cellctl.drivers.opcua_session import (
    COMM_ERRORS,
    SessionSettings,
    close_session,
    describe,
    open_session,
    resolve_refs,
)
from cellctl.errors import CommError, ConfigError, ConfigIssue, DeviceError, DeviceFault
from cellctl.schema.cell import Access, Datatype, DeviceConfig
from cellctl.schema.noderef import NodeRef, NodeRefError, parse_node_ref

__all__ = ["PROBE_INTERVAL_S", "VARIANT_TYPES", "OpcUaDriver"]

VARIANT_TYPES: dict[Datatype, ua.VariantType] = {
    Datatype.BOOL: ua.VariantType.Boolean,
    Datatype.INT16: ua.VariantType.Int16,
    Datatype.UINT16: ua.VariantType.UInt16,
    Datatype.INT32: ua.VariantType.Int32,
    Datatype.UINT32: ua.VariantType.UInt32,
    Datatype.FLOAT32: ua.VariantType.Float,
    Datatype.FLOAT64: ua.VariantType.Double,
    Datatype.STRING: ua.VariantType.String,
}
"""The Variant type a write of each datatype carries, so the server never has to guess."""

PROBE_INTERVAL_S = 1.0
"""How often the server's state is read to prove the link alive."""
PROBE_TIMEOUT_S = 1.0
"""How long a liveness probe may take; with the interval, a silent link is found within 2 s."""
_COMM_ERRORS = COMM_ERRORS

RefKey = tuple[str, str, str]
"""What a node reference belongs to: ("tag", name, "node") or ("method", name, "object" | "method")."""

_LINK_STATUSES = frozenset(
    getattr(StatusCodes, name)
    for name in (
        "BadCommunicationError",
        "BadConnectionClosed",
        "BadDisconnect",
        "BadNoCommunication",
        "BadNotConnected",
        "BadRequestInterrupted",
        "BadRequestTimeout",
        "BadSecureChannelClosed",
        "BadSecureChannelIdInvalid",
        "BadServerHalted",
        "BadServerNotConnected",
        "BadSessionClosed",
        "BadSessionIdInvalid",
        "BadSessionNotActivated",
        "BadShutdown",
        "BadTcpInternalError",
        "BadTimeout",
        "BadTooManyOperations",
    )
)
"""Bad statuses of a method call that say the link or session failed, not the method: CommError, not
DeviceFault. asyncua raises a service's and an operation's Bad status alike, so they are told by name."""


class OpcUaDriver(LinkedBackend):
    """An OPC UA device: subscribes to its readable tags, probes the server, writes with declared types."""

    def __init__(
        self,
        name: str,
        config: DeviceConfig,
        clock: Clock,
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        backoff: Backoff | None = None,
        resolve_path: Callable[[str], Path] = Path,
    ) -> None:
        """``resolve_path`` turns the security block's file names into paths (the cell file's
        ``LoadedConfig.resolve``; the working folder by default)."""
        if config.driver != "opcua":
            raise ValueError(f"device {name!r} uses driver {config.driver!r}, not opcua")
        write_only = [n for n, tag in config.tags.items() if tag.access == Access.WRITE]
        super().__init__(name, config.tags, clock, write_only=write_only, backoff=backoff)
        self._config = config
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._session = SessionSettings.of(name, config, resolve_path)
        issues: list[ConfigIssue] = []
        self._refs: dict[RefKey, NodeRef] = {}
        wanted: list[tuple[RefKey, str]] = []
        wanted += [(("tag", n, "node"), t.node or "") for n, t in config.tags.items()]
        for method_name, method in config.methods.items():
            wanted += [(("method", method_name, "object"), method.object)]
            wanted += [(("method", method_name, "method"), method.method)]
        for key, text in wanted:
            try:
                self._refs[key] = parse_node_ref(text)
            except NodeRefError as exc:
                where = ".".join(("devices", name, "tags" if key[0] == "tag" else "methods", *key[1:]))
                issues.append(ConfigIssue("<cell>", None, where, str(exc)))
        if issues:
            raise ConfigError(issues)
        self._datatypes = {n: Datatype(tag.datatype) for n, tag in config.tags.items()}
        self._readable = [n for n, tag in config.tags.items() if tag.access != Access.WRITE]
        # Filled from the references at every connect (a server may renumber its namespaces in between).
        self._node_ids: dict[str, ua.NodeId] = {}
        self._tags_of: dict[ua.NodeId, list[str]] = {}
        self._method_ids: dict[str, tuple[ua.NodeId, ua.NodeId]] = {}
        self._unresolved: dict[tuple[str, str], str] = {}
        self._client: Client | None = None
        self._nodes: dict[str, Node] = {}

    @property
    def config(self) -> DeviceConfig:
        """The device's configuration."""
        return self._config

    @property
    def connected(self) -> bool:
        """True while a session with the server is open and serving."""
        return self._client is not None

    @property
    def unresolved(self) -> dict[str, str]:
        """Tags (``"busy"``) and methods (``"method start_cycle"``) whose node reference did not resolve at
        the last connect, with the reason."""
        return {(n if kind == "tag" else f"method {n}"): why for (kind, n), why in self._unresolved.items()}

    # -------------------------------------------------------------------------------------------- run

    async def run(self) -> None:
        """Connect, subscribe, probe, and reconnect with backoff after any failure; until cancelled."""
        await self._supervise(self._serve)

    async def _serve(self) -> None:
        client = await open_session(self._session)  # CommError (SessionRefused included) when it cannot
        try:
            await self._resolve(client)
            nodes = {name: client.get_node(node_id) for name, node_id in self._node_ids.items()}
            subscription = await self._start(client, nodes)
            self._nodes = nodes
            self._client = client
            self._link_up()
            await self._serve_events(client, subscription)
        except CommError as exc:
            # Tell the truth before tidying up: closing a session over a dead link takes a while.
            self._client = None
            self._link_down(str(exc))
            raise
        finally:
            self._client = None
            self._nodes = {}
            await close_session(client)

    async def _resolve(self, client: Client) -> None:
        """Resolve every node reference on this server; one that does not resolve spoils only its tag or
        method (a config error of that tag, named in its reading and the log), never the link."""
        try:
            async with asyncio.timeout(self._config.timeouts.request_s * 2):
                resolved, failed = await resolve_refs(client, self._refs)
        except TimeoutError:
            raise CommError(self._device, "no reply while resolving node references") from None
        except _COMM_ERRORS as exc:
            raise CommError(self._device, f"resolving node references failed: {describe(exc)}") from exc
        self._node_ids = {key[1]: node_id for key, node_id in resolved.items() if key[0] == "tag"}
        self._tags_of = {}
        for tag in self._readable:
            if tag in self._node_ids:
                self._tags_of.setdefault(self._node_ids[tag], []).append(tag)
        self._method_ids = {
            m: (resolved[("method", m, "object")], resolved[("method", m, "method")])
            for m in self._config.methods
            if ("method", m, "object") in resolved and ("method", m, "method") in resolved
        }
        self._unresolved = {}
        for (kind, name, _part), reason in failed.items():
            self._unresolved.setdefault((kind, name), reason)
            if kind == "tag" and name in self._readable:
                self._store_bad(name, reason)
            self._log.warning("node reference unresolved", **{kind: name}, error=reason)

    async def _start(self, client: Client, nodes: dict[str, Node]) -> Subscription:
        """Seed the cache with one batched read, then subscribe to every readable node."""
        unique = list(self._tags_of)
        try:
            async with asyncio.timeout(self._config.timeouts.request_s * 2):
                interval = self._config.publishing_interval_ms
                handles: list[int | ua.StatusCode] = []
                if unique:  # a device of write-only tags has nothing to read or monitor
                    values = await client.read_attributes([client.get_node(n) for n in unique])
                    for node_id, value in zip(unique, values, strict=True):
                        self._apply(node_id, value)
                subscription = await client.create_subscription(interval, handler=None)
                if unique:
                    handles = await subscription.subscribe_data_change(
                        [nodes[self._tags_of[n][0]] for n in unique], sampling_interval=Double(interval)
                    )
        except TimeoutError:
            raise CommError(self._device, "no reply while subscribing") from None
        except _COMM_ERRORS as exc:
            raise CommError(self._device, f"subscribing failed: {exc!r}") from exc
        for node_id, handle in zip(unique, handles, strict=True):
            if isinstance(handle, ua.StatusCode):
                # A node the server does not know is a config problem of that tag, not a link failure.
                for tag in self._tags_of[node_id]:
                    self._store_bad(tag, f"server refused to monitor {node_id.to_string()}: {handle.name}")
                self._log.warning("cannot monitor node", node=node_id.to_string(), status=handle.name)
        return subscription

    async def _serve_events(self, client: Client, subscription: Subscription) -> None:
        """Apply data changes as they come and probe the server between them; CommError on link failure."""
        loop = asyncio.get_running_loop()
        probe_node = client.get_node(ObjectIds.Server_ServerStatus_State)
        next_probe = loop.time() + self._probe_interval_s
        while True:
            raise_if_cancelling()
            if client.state is not UaClientState.CONNECTED:
                raise CommError(self._device, f"connection lost ({client.state.value})")
            wait = next_probe - loop.time()
            if wait <= 0:
                await self._probe(probe_node)
                next_probe = loop.time() + self._probe_interval_s
                continue
            try:
                event = await subscription.next_event(wait)
            except StopAsyncIteration:
                raise CommError(self._device, "subscription closed") from None
            if isinstance(event, DataChangeEvent):
                value = event.data.monitored_item.Value
                self._apply(event.node.nodeid, value)
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if status.is_bad():
                    raise CommError(self._device, f"subscription lost: {status.name}")

    async def _probe(self, probe_node: Node) -> None:
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                state = await probe_node.read_value()
        except TimeoutError:
            raise CommError(self._device, f"server silent for {self._probe_timeout_s:g} s") from None
        except _COMM_ERRORS as exc:
            raise CommError(self._device, f"liveness probe failed: {exc!r}") from exc
        if state != ua.ServerState.Running:
            raise CommError(self._device, f"server state is {ua.ServerState(state).name}")

    # ------------------------------------------------------------------------------------------ values

    def _reading(self, tag: str, value: ua.DataValue | None) -> Reading:
        """A Reading from a DataValue: Good -> GOOD, Uncertain -> UNCERTAIN, Bad -> BAD without its value."""
        now = self._now()
        if value is None:
            return Reading.bad(now, "no value from the server")
        status = value.StatusCode if value.StatusCode is not None else ua.StatusCode()
        if status.is_bad():
            return Reading.bad(now, f"server reports {status.name}")
        quality = Quality.UNCERTAIN if status.is_uncertain() else Quality.GOOD
        config = self._config.tags[tag]
        datatype = self._datatypes[tag]
        raw = value.Value.Value if value.Value is not None else None
        try:
            checked = coerce_received(raw, datatype)
            engineering = to_engineering(checked, datatype, config.scale, config.offset)
        except CodecError as exc:
            return Reading.bad(now, str(exc))
        reason = f"server reports {status.name}" if quality is Quality.UNCERTAIN else ""
        return Reading(value=engineering, timestamp=now, quality=quality, reason=reason)

    def _apply(self, node_id: ua.NodeId, value: ua.DataValue | None) -> None:
        for tag in self._tags_of.get(node_id, ()):
            self._store(tag, self._reading(tag, value))

    # --------------------------------------------------------------------------------------- TagBackend

    async def read(self, tag: str) -> Reading:
        """Read the tag from the server now (status included); a BAD reading when that fails."""
        self._known(tag)
        if self._config.tags[tag].access == Access.WRITE:
            return Reading.bad(self._now(), WRITE_ONLY)
        client = self._client
        if client is None:
            return Reading.bad(self._now(), "not connected")
        node = self._nodes.get(tag)
        if node is None:
            return Reading.bad(self._now(), self._unresolved.get(("tag", tag), "node not resolved"))
        try:
            async with asyncio.timeout(self._config.timeouts.request_s):
                (value,) = await client.read_attributes([node])
        except TimeoutError:
            return Reading.bad(self._now(), f"no reply within {self._config.timeouts.request_s:g} s")
        except _COMM_ERRORS as exc:
            return Reading.bad(self._now(), f"read failed: {exc!r}")
        raise_if_cancelling()
        self._apply(self._node_ids[tag], value)
        return self._cache[tag]

    async def write(self, tag: str, value: TagValue) -> None:
        """Write a writable tag as its declared Variant type; CommError or DeviceFault if not taken."""
        self._known(tag)
        config = self._config.tags[tag]
        if not config.writable:
            raise DeviceError(self._device, "tag is read-only", tag=tag)
        try:
            raw = to_raw(value, self._datatypes[tag], config.scale, config.offset)
        except CodecError as exc:
            raise DeviceError(self._device, f"cannot write {value!r}: {exc}", tag=tag) from exc
        client = self._client
        if client is None:
            raise CommError(self._device, "not connected", tag=tag)
        node = self._nodes.get(tag)
        if node is None:
            reason = self._unresolved.get(("tag", tag), "node not resolved")
            raise DeviceFault(self._device, reason, tag=tag)
        # No source timestamp: many PLC servers refuse writes that carry one.
        data = ua.DataValue(ua.Variant(raw, VARIANT_TYPES[self._datatypes[tag]]))
        timeout = self._config.timeouts.request_s
        try:
            async with asyncio.timeout(timeout):
                (status,) = await client.write_values([node], [data], raise_on_partial_error=False)
        except TimeoutError:
            raise CommError(self._device, f"no reply to write within {timeout:g} s", tag=tag) from None
        except _COMM_ERRORS as exc:
            raise CommError(self._device, f"write failed: {exc!r}", tag=tag) from exc
        raise_if_cancelling()
        if not status.is_good():
            raise DeviceFault(self._device, f"server refused the write of {value!r}: {status.name}", tag=tag)

    async def call(self, method: str, args: Sequence[TagValue]) -> tuple[TagValue, ...]:
        """Call a configured method with Variants of its declared input types; its outputs as declared.

        DeviceError for an unknown method, a wrong argument count or type, or outputs that do not match the
        declaration; DeviceFault naming the Bad status the method returned; CommError when the link fails or
        no reply comes within the device's request timeout.
        """
        config = self._config.methods.get(method)
        if config is None:
            known = ", ".join(self._config.methods) or "none"
            raise DeviceError(self._device, f"no method {method!r} (methods: {known})")
        if len(args) != len(config.inputs):
            raise DeviceError(
                self._device, f"method {method!r} takes {len(config.inputs)} argument(s), not {len(args)}"
            )
        variants: list[ua.Variant] = []
        for index, (value, datatype) in enumerate(zip(args, config.inputs, strict=True), start=1):
            try:
                raw = to_raw(value, datatype)
            except CodecError as exc:
                raise DeviceError(self._device, f"method {method!r} argument {index}: {exc}") from exc
            variants.append(ua.Variant(raw, VARIANT_TYPES[datatype]))
        client = self._client
        if client is None:
            raise CommError(self._device, f"not connected: method {method!r} not called")
        ids = self._method_ids.get(method)
        if ids is None:
            reason = self._unresolved.get(("method", method), "node not resolved")
            raise DeviceFault(self._device, f"method {method!r}: {reason}")
        object_id, method_id = ids
        timeout = self._config.timeouts.request_s
        try:
            async with asyncio.timeout(timeout):
                result = await call_method_full(client.get_node(object_id), method_id, *variants)
        except TimeoutError:
            raise CommError(self._device, f"no reply to method {method!r} within {timeout:g} s") from None
        except UaStatusCodeError as exc:
            status = ua.StatusCode(exc.code)
            if exc.code in _LINK_STATUSES or client.state is not UaClientState.CONNECTED:
                raise CommError(self._device, f"method {method!r} failed: {status.name}") from exc
            raise DeviceFault(self._device, f"method {method!r} failed: {status.name}") from exc
        except _COMM_ERRORS as exc:
            raise CommError(self._device, f"method {method!r} failed: {exc!r}") from exc
        raise_if_cancelling()
        outputs = list(result.OutputArguments)
        if len(outputs) != len(config.outputs):
            raise DeviceError(
                self._device,
                f"method {method!r} returned {len(outputs)} output(s), "
                f"the config declares {len(config.outputs)}",
            )
        try:
            return tuple(
                coerce_received(value, datatype)
                for value, datatype in zip(outputs, config.outputs, strict=True)
            )
        except CodecError as exc:
            raise DeviceError(self._device, f"method {method!r} returned {exc}") from exc
