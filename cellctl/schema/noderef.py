"""Node references of the cell file: the text of a tag's ``node`` (or a method's) parsed into what it names.

Three forms (docs/integrator.md, "Connecting OPC UA devices"):

* ``ns=2;s=Robot1.Busy`` - a NodeId with a namespace index (``ns=`` left out means namespace 0);
* ``nsu=urn:acme:robot;s=Robot1.Busy`` - a NodeId whose namespace is named by its URI, looked up in the
  server's NamespaceArray at every connect, so a server that numbers its namespaces differently still works;
* ``/Objects/<urn:acme:robot>Robot1/<urn:acme:robot>Busy`` - a browse path from the Objects folder; each
  segment is a browse name, prefixed by its namespace as ``<uri>`` or ``2:`` (no prefix: namespace 0).
  ``&`` escapes the next character, so ``&/``, ``&<`` and ``&&`` put those characters in a name.

The identifier after ``ns=``/``nsu=`` is ``i=<number>``, ``s=<text>``, ``g=<guid>`` or ``b=<base64>``, as in
OPC UA Part 6 §5.3.1.10. Parsing is pure; resolving a reference against a server is the OPC UA driver's job.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass

__all__ = ["BrowseName", "BrowsePathRef", "NodeIdRef", "NodeRef", "NodeRefError", "parse_node_ref"]

Namespace = int | str
"""A namespace by index (int) or by URI (str)."""

PATH_ROOT = "/Objects/"
"""Where every browse path starts."""

_UINT32_MAX = 2**32 - 1
_NSU = re.compile(r"^nsu=(?P<uri>.+?);(?P<id>[isgb]=.*)$", re.DOTALL)
_NS = re.compile(r"^ns=(?P<index>\d+);(?P<id>.*)$", re.DOTALL)
_INDEX_PREFIX = re.compile(r"^(\d+):")


class NodeRefError(ValueError):
    """A node reference that cannot be parsed; the message says why."""


@dataclass(frozen=True, slots=True)
class NodeIdRef:
    """A NodeId: namespace (index or URI) and identifier text such as ``s=Robot1.Busy`` or ``i=1001``."""

    namespace: Namespace
    identifier: str

    def __str__(self) -> str:
        if isinstance(self.namespace, str):
            return f"nsu={self.namespace};{self.identifier}"
        return f"ns={self.namespace};{self.identifier}" if self.namespace else self.identifier


@dataclass(frozen=True, slots=True)
class BrowseName:
    """One segment of a browse path: a qualified name whose namespace is an index or a URI."""

    namespace: Namespace
    name: str

    def __str__(self) -> str:
        name = _escape(self.name)
        if isinstance(self.namespace, str):
            return f"<{self.namespace}>{name}"
        if self.namespace:
            return f"{self.namespace}:{name}"
        # A name of namespace 0 that looks like an index prefix keeps its meaning only escaped.
        return "&" + name if _INDEX_PREFIX.match(name) else name


@dataclass(frozen=True, slots=True)
class BrowsePathRef:
    """A browse path from the Objects folder: the browse names of each node on the way, in order."""

    segments: tuple[BrowseName, ...]

    def __str__(self) -> str:
        return PATH_ROOT + "/".join(str(s) for s in self.segments)


NodeRef = NodeIdRef | BrowsePathRef
"""What a ``node`` text names."""


def parse_node_ref(text: str) -> NodeRef:
    """Parse a node reference; NodeRefError saying what is wrong when ``text`` is none of the three forms."""
    if text != text.strip() or not text:
        raise NodeRefError(f"{text!r} is empty or has spaces around it")
    if text.startswith("/"):
        return _parse_path(text)
    match = _NSU.match(text)
    if match is not None:
        return NodeIdRef(match["uri"], _identifier(match["id"], text))
    if text.startswith("nsu="):
        raise NodeRefError(f"{text!r}: write nsu=<namespace uri>;<i=, s=, g= or b=><identifier>")
    match = _NS.match(text)
    if match is not None:
        return NodeIdRef(int(match["index"]), _identifier(match["id"], text))
    if text.startswith("ns="):
        raise NodeRefError(f"{text!r}: write ns=<namespace index>;<i=, s=, g= or b=><identifier>")
    return NodeIdRef(0, _identifier(text, text))


def _identifier(ident: str, text: str) -> str:
    kind, eq, value = ident.partition("=")
    if not eq or kind not in ("i", "s", "g", "b"):
        raise NodeRefError(
            f"{text!r} is not a node reference: write ns=<index>;s=<name>, nsu=<uri>;s=<name> "
            f"(or i=, g=, b= identifiers) or a browse path {PATH_ROOT}..."
        )
    if not value:
        raise NodeRefError(f"{text!r}: the identifier after {kind}= is empty")
    if kind == "i" and not (value.isdigit() and int(value) <= _UINT32_MAX):
        raise NodeRefError(f"{text!r}: a numeric identifier (i=) is a whole number 0..{_UINT32_MAX}")
    if kind == "g":
        try:
            uuid.UUID(value)
        except ValueError:
            example = "72962b91-fa75-4ae6-8d28-b404dc7daf63"
            raise NodeRefError(f"{text!r}: g= needs a GUID like {example}") from None
    if kind == "b":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise NodeRefError(f"{text!r}: b= needs base64 text") from None
    return f"{kind}={value}"


def _parse_path(text: str) -> BrowsePathRef:
    if not text.startswith(PATH_ROOT):
        raise NodeRefError(f"{text!r}: a browse path starts at the Objects folder: {PATH_ROOT}...")
    rest = text[len(PATH_ROOT) :]
    if not rest:
        raise NodeRefError(f"{text!r}: the browse path names no node below {PATH_ROOT}")
    return BrowsePathRef(tuple(_parse_segment(raw, text) for raw in _split(rest, text)))


def _split(rest: str, text: str) -> list[str]:
    """Split at unescaped '/', keeping escapes in the parts (the segment parser needs to see them)."""
    parts: list[str] = []
    current = ""
    escaped = False
    in_uri = False  # a '<uri>' prefix is taken whole: namespace URIs often hold '/'
    for char in rest:
        if in_uri:
            current += char
            in_uri = char != ">"
        elif escaped:
            current += char
            escaped = False
        elif char == "<" and not current:
            current += char
            in_uri = True
        elif char == "&":
            current += char
            escaped = True
        elif char == "/":
            parts.append(current)
            current = ""
        else:
            current += char
    if escaped:
        raise NodeRefError(f"{text!r}: '&' at the end escapes nothing")
    if in_uri:
        raise NodeRefError(f"{text!r}: '<' opens a namespace uri that no '>' closes")
    parts.append(current)
    if any(not p for p in parts):
        raise NodeRefError(f"{text!r}: a browse path has an empty segment ('//' or a trailing '/')")
    return parts


def _parse_segment(raw: str, text: str) -> BrowseName:
    namespace: Namespace = 0
    rest = raw
    if raw.startswith("<"):
        uri, close, rest = raw[1:].partition(">")
        if not close or not uri:
            raise NodeRefError(f"{text!r}: segment {raw!r} needs '<namespace uri>' before the name")
        namespace = uri
    else:
        match = _INDEX_PREFIX.match(raw)
        if match is not None:
            namespace = int(match[1])
            rest = raw[match.end() :]
    name = _unescape(rest)
    if not name:
        raise NodeRefError(f"{text!r}: segment {raw!r} has no name")
    return BrowseName(namespace, name)


def _unescape(raw: str) -> str:
    out = ""
    escaped = False
    for char in raw:
        if escaped or char != "&":
            out += char
            escaped = False
        else:
            escaped = True
    return out


def _escape(name: str) -> str:
    return "".join("&" + c if c in "&/<" else c for c in name)
