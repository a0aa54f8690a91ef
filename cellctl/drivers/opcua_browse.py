"""Browsing an OPC UA server's address space to a depth, so an integrator can write a cell file's tag map.

One session (secured like a device's, opcua_session.py); every level of the tree is one Browse request (with
BrowseNext for long reference lists) and the data types and access levels of its variables one Read each. The
standard nodes of namespace 0 below the start (the Server object and its kin) are listed but not descended
into unless asked, as integrators look for their device's nodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds

from cellctl.drivers.opcua_session import (
    COMM_ERRORS,
    SessionRefused,
    SessionSettings,
    close_session,
    describe,
    open_session,
    resolve_refs,
)
from cellctl.errors import CommError
from cellctl.schema.noderef import BrowseName, BrowsePathRef, NodeIdRef, NodeRefError, parse_node_ref

__all__ = ["BrowseResult", "BrowsedNode", "browse"]

MAX_NODES = 20_000
"""Browsing stops after this many nodes (a guard against a huge address space and a large depth)."""

_READ = 0x01
_WRITE = 0x02


@dataclass(frozen=True, slots=True)
class BrowsedNode:
    """One node found: where it sits in the tree and what a tag map needs to know of it."""

    depth: int
    """1 for a child of the start node, 2 for a grandchild, ..."""
    node_id: str
    """NodeId with the server's namespace index, e.g. ``ns=2;s=Robot1.Busy``."""
    reference: str
    """The same NodeId by namespace URI, e.g. ``nsu=urn:acme:robot;s=Robot1.Busy`` (what a cell file should
    use), or the NodeId itself in namespace 0 or a namespace the server does not list."""
    path: str
    """Browse path from the Objects folder (empty when the start is not below it by the path taken)."""
    browse_name: str
    """``<namespace index>:<name>``."""
    node_class: str
    data_type: str
    """Name of a variable's data type (e.g. ``UInt16``), a NodeId for a non-standard one; empty otherwise."""
    access: str
    """A variable's access for this session: ``r``, ``w``, ``rw`` or ``-``; empty for other nodes."""


@dataclass(frozen=True, slots=True)
class BrowseResult:
    """The nodes found, in tree order, and the server's namespaces by index."""

    namespaces: tuple[str, ...]
    nodes: tuple[BrowsedNode, ...]
    truncated: bool
    """True when MAX_NODES were found before the depth was reached."""


@dataclass
class _Found:
    """A node found while browsing, with its children once they are known."""

    node: BrowsedNode
    node_id: ua.NodeId
    segments: tuple[BrowseName, ...] | None
    children: list[_Found]


async def browse(
    settings: SessionSettings, *, depth: int = 3, start: str | None = None, all_namespaces: bool = False
) -> BrowseResult:
    """Open a session and list the node tree below ``start`` (a node reference; the Objects folder by
    default) to ``depth`` levels.

    CommError when the server cannot be reached, SessionRefused when it refuses the session or ``start``
    does not resolve.
    """
    if depth < 1:
        raise ValueError("depth must be at least 1")
    client = await open_session(settings)
    try:
        async with asyncio.timeout(settings.request_timeout_s * (depth + 2) * 4):
            return await _browse(client, settings, depth, start, all_namespaces)
    except TimeoutError:
        raise CommError(settings.name, "the server stopped answering while browsing") from None
    except COMM_ERRORS as exc:
        raise CommError(settings.name, f"browsing failed: {describe(exc)}") from exc
    finally:
        await close_session(client)


async def _browse(
    client: Client, settings: SessionSettings, depth: int, start: str | None, all_namespaces: bool
) -> BrowseResult:
    namespaces = tuple(await client.get_namespace_array())
    start_id = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
    start_segments: tuple[BrowseName, ...] | None = ()
    if start is not None:
        try:
            ref = parse_node_ref(start)
        except NodeRefError as exc:
            raise SessionRefused(settings.name, str(exc)) from None
        resolved, failed = await resolve_refs(client, {"start": ref})
        if failed:
            raise SessionRefused(settings.name, failed["start"])
        start_id = resolved["start"]
        start_segments = ref.segments if isinstance(ref, BrowsePathRef) else None
    roots: list[_Found] = []
    level: list[tuple[ua.NodeId, tuple[BrowseName, ...] | None, list[_Found]]] = [
        (start_id, start_segments, roots)
    ]
    count = 0
    truncated = False
    for current_depth in range(1, depth + 1):
        if not level:
            break
        references = await _children(client, [node_id for node_id, _, _ in level])
        found_level: list[_Found] = []
        for (_, segments, siblings), descriptions in zip(level, references, strict=True):
            for description in descriptions:
                if count >= MAX_NODES:
                    truncated = True
                    break
                found = _describe(description, current_depth, segments, namespaces)
                siblings.append(found)
                found_level.append(found)
                count += 1
        await _fill_variables(client, found_level)
        level = [
            (f.node_id, f.segments, f.children)
            for f in found_level
            if all_namespaces or f.node_id.NamespaceIndex != 0
        ]
        if truncated:
            break
    ordered: list[BrowsedNode] = []

    def walk(nodes: list[_Found]) -> None:
        for found in nodes:
            ordered.append(found.node)
            walk(found.children)

    walk(roots)
    return BrowseResult(namespaces, tuple(ordered), truncated)


async def _children(client: Client, node_ids: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    """The forward hierarchical references of each node, in one Browse (plus BrowseNext while continued)."""
    params = ua.BrowseParameters()
    params.NodesToBrowse = [
        ua.BrowseDescription(
            NodeId=node_id,
            BrowseDirection=ua.BrowseDirection.Forward,
            ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences)),
            ResultMask=ua.UInt32(ua.BrowseResultMask.All),
        )
        for node_id in node_ids
    ]
    results = await client.uaclient.browse(params)
    children: list[list[ua.ReferenceDescription]] = []
    for result in results:
        refs = list(result.References) if result.StatusCode.is_good() else []
        continuation = result.ContinuationPoint
        while continuation:
            more = ua.BrowseNextParameters()
            more.ContinuationPoints = [continuation]
            (next_result,) = await client.uaclient.browse_next(more)
            refs += next_result.References
            continuation = next_result.ContinuationPoint
        children.append(refs)
    return children


def _describe(
    ref: ua.ReferenceDescription,
    depth: int,
    parent: tuple[BrowseName, ...] | None,
    namespaces: tuple[str, ...],
) -> _Found:
    target = ref.NodeId
    node_id = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
    name = ref.BrowseName
    name_index = name.NamespaceIndex
    uri = namespaces[name_index] if name_index < len(namespaces) else None
    segment = BrowseName(uri if uri is not None and name_index else name_index, str(name.Name))
    segments = None if parent is None else (*parent, segment)
    node = BrowsedNode(
        depth=depth,
        node_id=node_id.to_string(),
        reference=_by_uri(node_id, namespaces),
        path=str(BrowsePathRef(segments)) if segments else "",
        browse_name=f"{name_index}:{name.Name}",
        node_class=ua.NodeClass(ref.NodeClass).name,
        data_type="",
        access="",
    )
    return _Found(node, node_id, segments, [])


def _by_uri(node_id: ua.NodeId, namespaces: tuple[str, ...]) -> str:
    text = node_id.to_string()
    index = node_id.NamespaceIndex
    if index == 0 or index >= len(namespaces):
        return text
    identifier = text.split(";", 1)[1]  # to_string() puts "ns=<index>;" first
    return str(NodeIdRef(namespaces[index], identifier))


async def _fill_variables(client: Client, found: list[_Found]) -> None:
    """Read the data type and access level of the variables among ``found`` (one Read each)."""
    variables = [f for f in found if f.node.node_class == "Variable"]
    if not variables:
        return
    ids = [f.node_id for f in variables]
    types = await client.uaclient.read_attributes(ids, AttributeIds.DataType)
    levels = await client.uaclient.read_attributes(ids, AttributeIds.UserAccessLevel)
    for item, data_type, level in zip(variables, types, levels, strict=True):
        item.node = _with_variable(item.node, data_type, level)


def _with_variable(node: BrowsedNode, data_type: ua.DataValue, level: ua.DataValue) -> BrowsedNode:
    type_name = ""
    type_id = data_type.Value.Value if data_type.Value is not None else None
    if isinstance(type_id, ua.NodeId):
        identifier = type_id.Identifier
        standard = type_id.NamespaceIndex == 0 and isinstance(identifier, int)
        type_name = (ObjectIdNames.get(int(identifier), "") if standard else "") or type_id.to_string()
    bits = level.Value.Value if level.Value is not None else None
    access = ""
    if isinstance(bits, int):
        access = ("r" if bits & _READ else "") + ("w" if bits & _WRITE else "") or "-"
    return dataclasses.replace(node, data_type=type_name, access=access)
