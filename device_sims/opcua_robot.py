"""Simulated OPC UA equipment (the robot): an asyncua Server exposing one device's tags at the cell's NodeIds.

Client writes reach the device through the server's PostWrite callback (only writes from client sessions,
and only those the server accepted: wrong variant types and writes to read-only nodes are refused by asyncua
itself). Device changes are written back into the address space, so client subscriptions fire.
The methods of the cell file's ``methods:`` are served at their NodeIds on the device's object; a call is
checked against the declared input types and handed to ``DeviceSim.call``.

Node references of the cell file name where each tag lives: a NodeId by index or by namespace URI (the
device's own namespace ``urn:cellctl:sim:<device>`` is always index 2), or a browse path from the Objects
folder, whose objects the simulator creates. Security is optional (``SimSecurity``): a certificate and key,
the policies offered, and a user list that turns anonymous access off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as asyncua_version
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import structlog
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509

from cellctl.core.tags import TagValue
from cellctl.schema.cell import Datatype, MethodConfig
from cellctl.schema.noderef import BrowseName, BrowsePathRef, Namespace, NodeIdRef, NodeRef, parse_node_ref
from device_sims.behaviour import CommandRefused, DeviceSim
from device_sims.gate import Request, RequestGate

_log = structlog.get_logger(__name__)

CACHE_ENV = "CELLCTL_SIMS_CACHE"
"""Environment variable naming the folder of the cached OPC UA standard address space."""

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


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _now() -> ua.DateTime:
    return cast(ua.DateTime, datetime.now(UTC))


def endpoint_with(endpoint: str, host: str, port: int) -> str:
    """``endpoint`` with its host and port replaced."""
    parts = urlsplit(endpoint)
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def _cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return (
        Path(tempfile.gettempdir()) / f"cellctl-sims-{uid}" / f"asyncua-{asyncua_version('asyncua')}-py{py}"
    )


async def new_server() -> Server:
    """An initialised asyncua Server whose standard address space comes from a shelf cached on disk.

    Filling the standard address space takes over a second per server; asyncua can instead read nodes
    lazily from a shelf (``init(shelf_file=...)``). The shelf is built once per machine (per asyncua and
    Python version) and published by an atomic rename, so concurrent test processes never read a
    half-written one. asyncua tells a finished shelf by a file at the shelf's own path, which the dbm in
    use may not create; the marker written once the shelf is complete is that file.
    """
    final = _cache_dir()
    shelf = final / "aspace"
    if shelf.is_file():
        server = Server()
        try:
            await server.init(shelf_file=shelf)
            return server
        except Exception as exc:  # a stale or damaged cache must not stop the simulator
            _log.warning("sim.opcua_cache_unusable", path=str(shelf), error=repr(exc))
    server = Server()
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="staging-", dir=_ensure(final.parent)))
    try:
        # No shelf at this path yet: asyncua fills the address space from code, then writes the shelf.
        await server.init(shelf_file=staging / "aspace")
        await asyncio.to_thread((staging / "aspace").touch)
        await asyncio.to_thread(_publish, staging, final)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    return server


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _publish(staging: Path, final: Path) -> None:
    # A directory rename is atomic; when another process published first, keep theirs.
    with contextlib.suppress(OSError):
        staging.rename(final)


SECURE_POLICIES = (
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
)
"""Names (``ua.SecurityPolicyType``) of the policies a secured simulator offers by default."""


@dataclass(frozen=True)
class SimSecurity:
    """How a simulated OPC UA server is secured.

    ``certificate`` (.der or .pem) and ``private_key`` are the server's; its application URI is taken from
    the certificate. ``policies`` are ``ua.SecurityPolicyType`` names (add ``"NoSecurity"`` to offer an open
    endpoint too). With ``users`` (name -> password) only those users get a session; anonymous access is off.
    """

    certificate: Path
    private_key: Path
    policies: tuple[str, ...] = SECURE_POLICIES
    users: Mapping[str, str] | None = None


class _Users:
    """asyncua user manager of a secured simulator: a fixed list of users and passwords."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self,
        iserver: object,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def _namespaces(ref: NodeRef) -> list[Namespace]:
    if isinstance(ref, NodeIdRef):
        return [ref.namespace]
    return [segment.namespace for segment in ref.segments]


class OpcUaDeviceServer:
    """An OPC UA server for one simulated device, on the endpoint path of the cell file."""

    protocol = "opcua"

    def __init__(
        self,
        sim: DeviceSim,
        host: str,
        port: int,
        gate: RequestGate | None = None,
        security: SimSecurity | None = None,
    ) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self.gate = gate or RequestGate()
        self.security = security
        """Read when the server is first built (the first start)."""
        self._ns: dict[str, int] = {}
        self._server: Server | None = None
        self._listening = False
        self._nodes: dict[str, ua.NodeId] = {}
        self._tags_by_node: dict[ua.NodeId, str] = {}
        self._status: dict[str, ua.StatusCode] = {}
        self._method_status: dict[str, ua.StatusCode] = {}
        self._pending: collections.deque[tuple[str, TagValue]] = collections.deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pump: asyncio.Task[None] | None = None
        self._unwatch = sim.watch(self._changed)
        self.log = _log.bind(device=sim.name)

    @property
    def devices(self) -> tuple[str, ...]:
        """The device served here."""
        return (self.sim.name,)

    @property
    def endpoint(self) -> str:
        """The endpoint URL clients connect to."""
        return endpoint_with(self.sim.config.endpoint, self.host, self.port)

    @property
    def running(self) -> bool:
        """True while listening."""
        return self._listening

    @property
    def namespace_uri(self) -> str:
        """The device's own namespace, always index 2 on this server."""
        return f"urn:cellctl:sim:{self.sim.name}"

    def node_id(self, text: str) -> ua.NodeId:
        """The NodeId a NodeId reference of the cell file (``ns=``, ``nsu=``) names on this server."""
        ref = parse_node_ref(text)
        if not isinstance(ref, NodeIdRef):
            raise ValueError(f"{text!r}: the simulator serves this at a NodeId only, not a browse path")
        return self._node_id(ref)

    def _node_id(self, ref: NodeIdRef) -> ua.NodeId:
        return ua.NodeId.from_string(f"ns={self._index(ref.namespace)};{ref.identifier}")

    def _index(self, namespace: Namespace) -> int:
        return namespace if isinstance(namespace, int) else self._ns[namespace]

    async def _register_namespaces(self, server: Server, refs: Iterable[NodeRef]) -> None:
        """Index 2 is the device's own namespace, then fillers up to the highest ``ns=`` index the references
        use, then every namespace URI they name (one already there keeps its index)."""
        indexes = {2}
        uris: list[str] = []
        for ref in refs:
            for namespace in _namespaces(ref):
                if isinstance(namespace, int):
                    indexes.add(namespace)
                else:
                    uris.append(namespace)
        for index in range(2, max(indexes) + 1):
            uri = self.namespace_uri + ("" if index == 2 else f":{index}")
            got = await server.register_namespace(uri)
            if got != index:
                raise RuntimeError(f"namespace {uri} got index {got}, expected {index}")
        for uri in uris:
            await server.register_namespace(uri)
        self._ns = {uri: index for index, uri in enumerate(await server.get_namespace_array())}

    async def _secure(self, server: Server) -> None:
        security = self.security
        if security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            return
        server.set_security_policy([ua.SecurityPolicyType[name] for name in security.policies])
        await server.load_certificate(str(security.certificate))
        await server.load_private_key(str(security.private_key))
        certificate = server.iserver.certificate
        uris = _certificate_uris(certificate) if certificate is not None else []
        if uris:
            # Clients check the certificate names the server's application URI.
            await server.set_application_uri(uris[0])
        if security.users is not None:
            server.iserver.set_user_manager(_Users(security.users))  # type: ignore[arg-type]
            server.set_identity_tokens([ua.UserNameIdentityToken])

    async def _path_parent(
        self, segments: tuple[BrowseName, ...], parents: dict[tuple[BrowseName, ...], Node]
    ) -> Node:
        """The object at ``segments`` below the Objects folder, created (with its parents) when missing."""
        node = parents.get(segments)
        if node is None:
            parent = await self._path_parent(segments[:-1], parents)
            last = segments[-1]
            index = self._index(last.namespace)
            nodeid = ua.NodeId.from_string(f"ns={index};s={self.sim.name}:{BrowsePathRef(segments)}")
            node = await parent.add_object(nodeid, ua.QualifiedName(last.name, index))
            parents[segments] = node
        return node

    async def _build(self) -> Server:
        # Built once per server object and kept across stop/start: a restart keeps the device's values.
        server = await new_server()
        server.disable_clock(True)  # its 1 s clock task would make stop() wait up to a second
        await self._secure(server)
        server.set_server_name(f"cellctl simulator {self.sim.name}")
        server.set_endpoint(self.endpoint)
        refs = {tag: parse_node_ref(str(cfg.node)) for tag, cfg in self.sim.config.tags.items()}
        method_refs = [
            parse_node_ref(ref)
            for method in self.sim.config.methods.values()
            for ref in (method.object, method.method)
        ]
        await self._register_namespaces(server, [*refs.values(), *method_refs])
        folder = await server.nodes.objects.add_object(self._object_node_id(), self.sim.name)
        parents: dict[tuple[BrowseName, ...], Node] = {
            (): server.nodes.objects,
            (BrowseName(self.namespace_uri, self.sim.name),): folder,
        }
        for tag, cfg in self.sim.config.tags.items():
            ref = refs[tag]
            if isinstance(ref, BrowsePathRef):
                parent = await self._path_parent(ref.segments[:-1], parents)
                index = self._index(ref.segments[-1].namespace)
                nodeid = ua.NodeId.from_string(f"ns={index};s={self.sim.name}.{tag}")
                name = ua.QualifiedName(ref.segments[-1].name, index)
            else:
                parent = folder
                nodeid = self._node_id(ref)
                name = ua.QualifiedName(tag, nodeid.NamespaceIndex)
            vtype = VARIANT_TYPES[cfg.datatype]
            variable = await parent.add_variable(nodeid, name, ua.Variant(self.sim.published(tag), vtype))
            if cfg.writable:
                await variable.set_writable()
            self._nodes[tag] = nodeid
            self._tags_by_node[nodeid] = tag
        await self._add_methods(folder)
        server.subscribe_server_callback(CallbackType.PostWrite, self._post_write)
        server.subscribe_server_callback(CallbackType.PreWrite, self._pre_write)
        server.subscribe_server_callback(CallbackType.PreRead, self._pre_read)
        return server

    async def start(self) -> None:
        """Listen on the endpoint (building the address space the first time); OSError when the port is
        taken."""
        if self._listening:
            return
        if self._server is None:
            self._server = await self._build()
            self._pump = asyncio.get_running_loop().create_task(
                self._pump_loop(), name=f"sim:{self.sim.name}:opcua_publish"
            )
        self._server.set_endpoint(self.endpoint)
        # start() describes the endpoints again each time; without this a restarted server lists them twice.
        self._server.iserver.endpoints.clear()
        await self._server.start()
        self._listening = True
        self.gate.reopened()
        self.log.info("sim.listening", endpoint=self.endpoint)

    async def stop(self) -> None:
        """Stop listening: every session is lost; the address space and port are kept for a restart."""
        if not self._listening or self._server is None:
            return
        self._listening = False
        self.gate.closing()
        # OPC UA (Part 4 §6.7) keeps a session with subscriptions after its link drops, and asyncua's stop()
        # leaves those sessions' tasks running: a restarted server must lose them, as a real PLC does.
        for session in list(self._server.iserver._external_sessions.values()):
            await session.close_session()
        await self._server.stop()
        self.log.info("sim.stopped", endpoint=self.endpoint)

    def drop_connections(self) -> int:
        """Abort every client connection (the server keeps listening); returns how many were dropped."""
        if self._server is None or self._server.bserver is None or not self._listening:
            return 0
        clients = list(self._server.bserver.clients)
        for client in clients:
            if client.transport is not None:
                client.transport.abort()
        return len(clients)

    async def aclose(self) -> None:
        """Stop, end the publishing task and forget the device."""
        await self.stop()
        self._unwatch()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        self._server = None

    # -- device -> address space ----------------------------------------------------------------------------
    def _changed(self, tag: str, value: TagValue) -> None:
        if tag in self._nodes:
            self._pending.append((tag, value))
            self._wake.set()

    async def _pump_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._lock:
            while self._pending:
                tag, value = self._pending.popleft()
                if tag not in self._status:
                    await self._write_node(tag, value)

    async def _write_node(self, tag: str, value: TagValue) -> None:
        assert self._server is not None
        now = _now()
        vtype = VARIANT_TYPES[self.sim.config.tags[tag].datatype]
        datavalue = ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now)
        await self._server.write_attribute_value(self._nodes[tag], datavalue)

    async def set_status(self, tag: str, status: str) -> None:
        """Serve ``tag`` with a Bad/Uncertain status code named like ``BadSensorFailure`` until cleared.

        ``tag`` may name a method of the cell file's ``methods:``: every call of it then returns the status.
        """
        if self._server is None:
            raise RuntimeError("the server is not started")
        code = ua.StatusCode(getattr(StatusCodes, status))
        if tag in self.sim.config.methods and tag not in self._nodes:
            self._method_status[tag] = code
            return
        self._status[tag] = code
        now = _now()
        await self._server.write_attribute_value(
            self._nodes[tag], ua.DataValue(StatusCode=code, SourceTimestamp=now, ServerTimestamp=now)
        )

    async def clear_status(self, tag: str) -> None:
        """Serve ``tag``'s value again with a Good status (or let its method run again)."""
        self._method_status.pop(tag, None)
        if self._status.pop(tag, None) is not None and self._server is not None:
            await self._write_node(tag, self.sim.published(tag))

    # -- clients -> device ----------------------------------------------------------------------------------
    def _request(self, params: Any, write: bool) -> Request:
        items = params.NodesToWrite if write else params.NodesToRead
        tags = tuple(self._tags_by_node[i.NodeId] for i in items if i.NodeId in self._tags_by_node)
        return Request(protocol="opcua", device=self.sim.name, write=write, count=len(items), tags=tags)

    async def _pre_read(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if event.is_external:
            await self.gate.admit(self._request(event.request_params, write=False))

    async def _pre_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if event.is_external:
            await self.gate.admit(self._request(event.request_params, write=True))

    async def _post_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if not event.is_external:
            return
        params: ua.WriteParameters = event.request_params
        results: list[ua.StatusCode] = event.response_params
        for item, status in zip(params.NodesToWrite, results, strict=True):
            tag = self._tags_by_node.get(item.NodeId)
            if tag is None or item.AttributeId != AttributeIds.Value or not status.is_good():
                continue
            variant = item.Value.Value if item.Value is not None else None
            if variant is None or variant.Value is None:
                continue
            self.sim.client_write(tag, variant.Value)
        # Publish what the write caused before the client gets its reply, as a PLC scan would.
        await self._flush()

    # -- methods --------------------------------------------------------------------------------------------
    def _object_node_id(self) -> ua.NodeId | int:
        """The NodeId of the device's object: the one its methods are called on, else a fresh one in ns 2."""
        for method in self.sim.config.methods.values():
            return self.node_id(method.object)
        return 2

    async def _add_methods(self, folder: Node) -> None:
        """Add each configured method, on the device's object or on another object the config names."""
        objects: dict[ua.NodeId, Node] = {folder.nodeid: folder}
        for name, method in self.sim.config.methods.items():
            object_id = self.node_id(method.object)
            parent = objects.get(object_id)
            if parent is None:
                parent = await folder.add_object(
                    object_id, ua.QualifiedName(name + "Object", object_id.NamespaceIndex)
                )
                objects[object_id] = parent
            method_id = self.node_id(method.method)
            await parent.add_method(
                method_id,
                ua.QualifiedName(name, method_id.NamespaceIndex),
                self._method_handler(name, method),
                [VARIANT_TYPES[d] for d in method.inputs],
                [VARIANT_TYPES[d] for d in method.outputs],
            )

    def _method_handler(self, name: str, method: MethodConfig) -> Callable[..., Awaitable[Any]]:
        async def handler(_parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
            request = Request(protocol="opcua", device=self.sim.name, write=True, count=1, tags=(name,))
            code = await self.gate.admit(request)
            if code is not None:
                return _status(code)
            if name in self._method_status:
                return self._method_status[name]
            if len(args) != len(method.inputs):
                few = len(args) < len(method.inputs)
                return _status(StatusCodes.BadArgumentsMissing if few else StatusCodes.BadTooManyArguments)
            if any(v.VariantType != VARIANT_TYPES[d] for v, d in zip(args, method.inputs, strict=True)):
                return _status(StatusCodes.BadTypeMismatch)
            try:
                outputs = self.sim.call(name, tuple(v.Value for v in args))
            except CommandRefused as exc:
                self.log.info("sim.call_refused", method=name, reason=exc.reason)
                bad = StatusCodes.BadInvalidArgument if exc.bad_argument else StatusCodes.BadInvalidState
                return _status(bad)
            finally:
                # Publish what the call caused before the client gets its reply, as for a write.
                await self._flush()
            return [ua.Variant(v, VARIANT_TYPES[d]) for v, d in zip(outputs, method.outputs, strict=True)]

        return handler


def _certificate_uris(certificate: Any) -> list[str]:
    """The URIs among a certificate's subject alternative names."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(names.get_values_for_type(x509.UniformResourceIdentifier))


def quiet_asyncua(level: int = logging.WARNING) -> None:
    """Tone down asyncua's per-connection info logging (used by the command line)."""
    logging.getLogger("asyncua").setLevel(level)
