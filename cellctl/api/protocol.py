"""The control API's wire format: versioned JSON-lines requests, replies and pushed events, and their parsing.

One message per line (UTF-8 JSON, ``\\n``-terminated, at most ``MAX_LINE`` bytes before the newline).

* client -> server: ``{"v": 1, "id": 7, "cmd": "submit", "args": {...}}``
* server -> client, exactly one per request, same id:
  ``{"v": 1, "id": 7, "ok": true, "result": {...}}`` or
  ``{"v": 1, "id": 7, "ok": false, "error": {"code": "job_error", "message": "..."}}``
  (``id`` is null when the line could not be parsed far enough to find one).
* server -> client after ``watch``: ``{"v": 1, "seq": 42, "event": {"kind", "stream", "ts", "data"}}``;
  ``seq`` increases by one per event of this server instance (``epoch``). ``seq`` 0 marks a notice about
  this connection only (``kind: "watch_dropped"`` when the watcher fell behind and was dropped).

Who may send what: the peer's ``Role`` (viewer < operator < integrator, from the cell file's ``api.roles``)
against ``MIN_ROLE``; below it a request gets ``not_allowed`` naming the role it needs. ``hello`` tells the
caller its role. A state-changing command (above viewer) also needs the control lease, held by one connection
at a time: taken when free, ``lease_held`` (naming the holder) otherwise; ``lease`` with ``{"action": "take" |
"release" | "show"}`` manages it (a strictly higher role takes it over) and ``status.lease`` shows the holder.
``devices`` answers ``{"devices": [{"device", "protocol", "state", "state_for_s", "error", "tags": [{"tag",
"value", "quality", "age_s"}]}]}``.

Robustness: a line that is not strict UTF-8 JSON (encoded surrogates and absurd nesting included) is
``bad_json``; text UTF-8 cannot carry (a lone ``\\ud800`` escape) is sent back escaped; no line stops the
server.

This module is shared by the server and every client (CLI, TUI): it imports nothing of the engine or schema.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from enum import Enum, StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticSerializationError

from cellctl.errors import ApiError

PROTOCOL_VERSION: Final = 1
"""The one protocol version this code speaks."""

MAX_LINE = 64 * 1024
"""Longest line (bytes, newline excluded) either side accepts; a longer one is refused with ``too_large``."""

NOTICE_SEQ = 0
"""``seq`` of a pushed notice that concerns this connection only and is not part of the event stream."""


class ErrorCode(StrEnum):
    """Machine-readable reasons a request failed."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    TOO_LARGE = "too_large"
    INVALID_TRANSITION = "invalid_transition"
    JOB_ERROR = "job_error"
    CONFIRM_REFUSED = "confirm_refused"
    INTERLOCK = "interlock"
    """Refused by an interlock or the e-stop (e.g. Reset while the e-stop is pressed)."""
    ALARM_REFUSED = "alarm_refused"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    OVERFLOW = "overflow"
    NOT_ALLOWED = "not_allowed"
    """The caller may not send this command (an MES over MQTT may only submit and cancel)."""
    RETAINED = "retained"
    """A command that arrived as a retained MQTT message: never executed (it would run at every reconnect)."""
    LEASE_HELD = "lease_held"
    """Another connection holds the control lease; the message names the holder and how to take over."""


class Role(StrEnum):
    """What a caller on the control socket may do, lowest first: viewer < operator < integrator."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    INTEGRATOR = "integrator"

    @property
    def rank(self) -> int:
        """Position in the order viewer < operator < integrator."""
        return _ROLE_ORDER.index(self)

    def at_least(self, other: Role) -> bool:
        """True when this role may do what ``other`` may."""
        return self.rank >= other.rank


_ROLE_ORDER: Final = (Role.VIEWER, Role.OPERATOR, Role.INTEGRATOR)


PACKML_COMMANDS: tuple[str, ...] = (
    "reset",
    "start",
    "stop",
    "hold",
    "unhold",
    "suspend",
    "unsuspend",
    "abort",
    "clear",
)
"""The PackML commands the ``command`` request accepts, by name."""

PackMLCommandName = Literal[
    "reset", "start", "stop", "hold", "unhold", "suspend", "unsuspend", "abort", "clear"
]

RequestId = StrictInt | Annotated[StrictStr, Field(max_length=128)]
"""A request id chosen by the client: an integer or a short string, echoed in the reply."""


class ProtocolError(ApiError):
    """A line or request that breaks the protocol; ``request_id`` is the id to answer with (None: unknown)."""

    def __init__(self, code: ErrorCode, message: str, *, request_id: int | str | None = None) -> None:
        super().__init__(code.value, message)
        self.request_id = request_id


# --- args of each command -------------------------------------------------------------------------------


class Args(BaseModel):
    """Base of the argument models: unknown keys are errors, so a typo never becomes a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoArgs(Args):
    """A command without arguments."""


class CommandArgs(Args):
    """``command``: one PackML command by name."""

    name: PackMLCommandName


class ModeArgs(Args):
    """``mode``: select the unit mode (in Stopped, Idle or Aborted; changeover follows a running plan)."""

    name: Literal["production", "maintenance", "manual"]


def parse_due(value: object) -> float | None:
    """A due time as epoch seconds: a number of epoch seconds, or ISO 8601 text with a timezone.

    ValueError (naming what is wrong) for a naive time, unparseable text, or a number that is not finite or
    negative. Used by the ``submit`` model and by clients that want to check before sending.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time: give epoch seconds or ISO 8601 text with a timezone")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{value!r} is not a time: epoch seconds must be a finite number >= 0")
        return seconds
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO 8601 time (e.g. 2026-11-28T14:00:00+01:00) nor epoch seconds"
            ) from None
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"{value!r} has no timezone: add one (e.g. Z or +01:00) so the time is not a guess"
            )
        return when.timestamp()
    raise ValueError(
        f"{type(value).__name__} is not a time: give epoch seconds or ISO 8601 text with a timezone"
    )


DueTime = Annotated[
    float | None,
    BeforeValidator(parse_due),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "format": "date-time"},
                {"type": "null"},
            ],
            "description": "Epoch seconds, or ISO 8601 text with a timezone.",
        }
    ),
]
"""An absolute due time: epoch seconds or ISO 8601 with a timezone on the wire, epoch seconds once parsed."""


class SubmitArgs(Args):
    """``submit``: an order; submitting the same order_id with the same content again returns the same job.

    ``due`` (optional): when the order should be finished, as epoch seconds or ISO 8601 with a timezone.
    ``part_parameters`` (optional): one parameter set per part, for orders of batch size one.
    """

    order_id: Annotated[str, Field(min_length=1, max_length=128)]
    variant: Annotated[str, Field(min_length=1, max_length=64)]
    quantity: Annotated[int, Field(ge=1, le=1_000_000)]
    parameters: dict[Annotated[str, Field(min_length=1, max_length=64)], float] = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = 0
    due: DueTime = None
    part_parameters: Annotated[
        list[dict[Annotated[str, Field(min_length=1, max_length=64)], float]], Field(max_length=10_000)
    ] = Field(default_factory=list)
    """Batch size one: one parameter set per part (exactly ``quantity`` of them), each over ``parameters``."""


class CancelArgs(Args):
    """``cancel``: one job, by its ``job_id`` or by the ``order_id`` that made it (exactly one of the two)."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["job_id"]}, {"required": ["order_id"]}]}
    )

    job_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    order_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CancelArgs:
        if (self.job_id is None) == (self.order_id is None):
            raise ValueError("give exactly one of job_id and order_id")
        return self


class ReorderArgs(Args):
    """``reorder``: the queue's new order, every queued job id exactly once."""

    job_ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=10_000)]


class ConfirmArgs(Args):
    """``confirm``: answer a step waiting for a person, with the evidence it asks for (a scanned id)."""

    step: Annotated[str, Field(min_length=1, max_length=128)]
    evidence: Annotated[str, Field(max_length=256)] | None = None


class AckArgs(Args):
    """``ack``: acknowledge a shown alarm (``status().alarms``); journaled with who."""

    alarm: Annotated[str, Field(min_length=1, max_length=128)]


class SignOffArgs(Args):
    """``sign_off``: end the open first-article qualification; ``note`` is journaled with who signed."""

    note: Annotated[str, Field(max_length=500)] = ""


class SpcArgs(Args):
    """``spc``: the control chart of one characteristic of one variant (points, limits, spec limits)."""

    variant: Annotated[str, Field(min_length=1, max_length=64)]
    characteristic: Annotated[str, Field(min_length=1, max_length=64)]


class WatchArgs(Args):
    """``watch``: push events to this connection; resume after ``since_seq`` of ``epoch`` when possible."""

    since_seq: Annotated[int, Field(ge=0)] | None = None
    epoch: Annotated[str, Field(max_length=64)] | None = None


class LeaseArgs(Args):
    """``lease``: ``show`` who holds the control lease, ``take`` it (higher roles take over), ``release``."""

    action: Literal["take", "release", "show"] = "show"


class JournalArgs(Args):
    """``journal``: entries with id > ``after_id``, at most ``limit`` of them, oldest first."""

    after_id: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


COMMANDS: dict[str, type[Args]] = {
    "hello": NoArgs,
    "status": NoArgs,
    "command": CommandArgs,
    "mode": ModeArgs,
    "submit": SubmitArgs,
    "cancel": CancelArgs,
    "reorder": ReorderArgs,
    "apply_proposal": NoArgs,
    "confirm": ConfirmArgs,
    "sign_off": SignOffArgs,
    "ack": AckArgs,
    "spc": SpcArgs,
    "watch": WatchArgs,
    "journal": JournalArgs,
    "devices": NoArgs,
    "lease": LeaseArgs,
}
"""Every command the server knows, with the model of its arguments."""

MIN_ROLE: dict[str, Role] = {
    "hello": Role.VIEWER,
    "status": Role.VIEWER,
    "watch": Role.VIEWER,
    "journal": Role.VIEWER,
    "spc": Role.VIEWER,
    "devices": Role.VIEWER,
    "lease": Role.VIEWER,  # show; take and release need an operator (``required_role``)
    "command": Role.OPERATOR,  # every PackML command, Abort included: stopping the cell is an operator's job
    "submit": Role.OPERATOR,
    "cancel": Role.OPERATOR,
    "reorder": Role.OPERATOR,
    "apply_proposal": Role.OPERATOR,
    "confirm": Role.OPERATOR,
    "ack": Role.OPERATOR,
    "sign_off": Role.OPERATOR,
    "mode": Role.INTEGRATOR,  # maintenance and manual modes bypass production rules
}
"""The lowest role that may send each command on the control socket (the one table of who may do what)."""


def required_role(cmd: str, args: Any) -> Role:
    """The lowest role that may send ``cmd`` with these raw ``args`` (lease take and release: operator)."""
    if cmd == "lease" and isinstance(args, dict) and args.get("action") in ("take", "release"):
        return Role.OPERATOR
    return MIN_ROLE.get(cmd, Role.INTEGRATOR)


def changes_state(cmd: str) -> bool:
    """True for a command that changes the cell or its orders: it needs the control lease."""
    return MIN_ROLE.get(cmd, Role.INTEGRATOR) is not Role.VIEWER


# --- messages -------------------------------------------------------------------------------------------


class Request(BaseModel):
    """A client's request; ``args`` is checked against the command's model by ``parse_args``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = PROTOCOL_VERSION
    id: RequestId
    cmd: Annotated[str, Field(min_length=1, max_length=64)]
    args: dict[str, Any] = Field(default_factory=dict)

    def encode(self) -> bytes:
        """The request as one line."""
        return self.model_dump_json().encode() + b"\n"


class ErrorBody(BaseModel):
    """Why a request failed: a code from ErrorCode (clients tolerate codes they do not know) and a message."""

    code: str
    message: str


class Reply(BaseModel):
    """The one answer to a request: ``result`` when ok, ``error`` otherwise."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = PROTOCOL_VERSION
    id: int | str | None
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Reply:
        if self.ok and (self.result is None or self.error is not None):
            raise ValueError("an ok reply carries a result and no error")
        if not self.ok and (self.error is None or self.result is not None):
            raise ValueError("a failed reply carries an error and no result")
        return self

    @classmethod
    def success(cls, request_id: int | str | None, result: dict[str, Any]) -> Reply:
        """An ok reply."""
        return cls(id=request_id, ok=True, result=result)

    @classmethod
    def failure(cls, request_id: int | str | None, code: ErrorCode | str, message: str) -> Reply:
        """A failed reply."""
        return cls(id=request_id, ok=False, error=ErrorBody(code=str(code), message=message))

    def encode(self) -> bytes:
        """The reply as one line; values JSON cannot hold (NaN, objects) are sent as null / their text."""
        return _json_line(self, exclude={"error"} if self.ok else {"result"})


class EventBody(BaseModel):
    """One recorded fact as pushed to watchers: the event's kind, stream, wall time and fields."""

    kind: str
    stream: str
    ts: float
    data: dict[str, Any] = Field(default_factory=dict)


class EventPush(BaseModel):
    """An event pushed to a watching connection, numbered by ``seq`` (0: a notice for this connection)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = PROTOCOL_VERSION
    seq: int
    event: EventBody

    @property
    def is_notice(self) -> bool:
        """True for a connection notice (e.g. the watcher was dropped), not an event of the stream."""
        return self.seq == NOTICE_SEQ

    def encode(self) -> bytes:
        """The push as one line."""
        return _json_line(self)


# --- parsing --------------------------------------------------------------------------------------------


def _json_line(model: BaseModel, exclude: set[str] | None = None) -> bytes:
    """``model`` as one JSON line; text that UTF-8 cannot carry (a lone surrogate, which JSON's ``\\ud800``
    escape lets a client send) is sent escaped rather than failing the reply."""
    try:
        text = model.model_dump_json(exclude=exclude, fallback=str)
    except PydanticSerializationError:
        data = model.model_dump(mode="json", exclude=exclude, fallback=str)
        text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return text.encode() + b"\n"


def _load_json(line: bytes) -> Any:
    try:
        # Strict UTF-8 first: json.loads(bytes) would let encoded surrogates (CESU-8) through.
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # JSONDecodeError is a ValueError; absurd nesting exhausts the recursion limit.
        raise ProtocolError(ErrorCode.BAD_JSON, f"line is not valid JSON: {_short(exc)}") from exc


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def describe(error: ValidationError, prefix: str = "") -> str:
    """A validation error as ``where: what; ...`` naming each offending field."""
    parts = []
    for issue in error.errors(include_url=False):
        where = ".".join(str(p) for p in (*((prefix,) if prefix else ()), *issue["loc"])) or "<message>"
        parts.append(f"{where}: {issue['msg']}")
    return "; ".join(parts)


def parse_request(line: bytes) -> Request:
    """One received line -> a Request of a known command; ProtocolError (bad_json, bad_request,
    unknown_command, too_large) otherwise, carrying the request id when one could be read."""
    if len(line) > MAX_LINE:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"line longer than {MAX_LINE} bytes")
    obj = _load_json(line)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"a request is a JSON object, got {type(obj).__name__}")
    raw_id = obj.get("id")
    request_id = raw_id if isinstance(raw_id, int | str) and not isinstance(raw_id, bool) else None
    if "v" not in obj:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"v: missing protocol version (this server speaks v={PROTOCOL_VERSION})",
            request_id=request_id,
        )
    version = obj["v"]
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"protocol version {version!r} is not supported: this server speaks v={PROTOCOL_VERSION}",
            request_id=request_id,
        )
    try:
        request = Request.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, describe(exc), request_id=request_id) from exc
    if request.cmd not in COMMANDS:
        raise ProtocolError(
            ErrorCode.UNKNOWN_COMMAND,
            f"unknown command {request.cmd!r}; known: {', '.join(COMMANDS)}",
            request_id=request.id,
        )
    return request


def parse_args(request: Request) -> Args:
    """The request's args validated against its command's model; ProtocolError naming the bad field."""
    model = COMMANDS.get(request.cmd)
    if model is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_COMMAND, f"unknown command {request.cmd!r}", request_id=request.id
        )
    try:
        return model.model_validate(request.args)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"{request.cmd}: {describe(exc, 'args')}", request_id=request.id
        ) from exc


def parse_server_line(line: bytes) -> Reply | EventPush:
    """One line from the server -> a Reply or an EventPush; ProtocolError if it is neither."""
    obj = _load_json(line)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"server sent a JSON {type(obj).__name__}, not an object")
    try:
        if "event" in obj:
            return EventPush.model_validate(obj)
        return Reply.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed server message: {describe(exc)}") from exc


class Overlong(Enum):
    """Marks, in the output of LineBuffer, a line that was longer than the limit and was thrown away."""

    LINE = "line"


class LineBuffer:
    """Splits a byte stream into lines and throws away, without holding it, any line longer than the limit."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | Overlong]:
        """Add received bytes; return the complete lines (without newline) and an Overlong per long line."""
        self._buf += data
        out: list[bytes | Overlong] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False  # the tail of a line already reported as overlong
            elif end - start > self._limit:
                out.append(Overlong.LINE)
            else:
                out.append(bytes(self._buf[start:end]))
            start = end + 1
        del self._buf[:start]
        if len(self._buf) > self._limit:
            # No newline within the limit: report it now and drop the rest of it as it arrives.
            if not self._discarding:
                out.append(Overlong.LINE)
            self._discarding = True
            self._buf.clear()
        return out

    def finish(self) -> bytes | None:
        """At end of stream: the unterminated last line, if any (None when empty or being discarded)."""
        rest = bytes(self._buf)
        self._buf.clear()
        if self._discarding or not rest:
            return None
        return rest
