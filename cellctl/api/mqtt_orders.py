"""Orders from a plant MES over MQTT: each command on the command topic runs at most once and gets one reply.

Topics, under the cell's UNS root ``<root>`` = ``{enterprise}/{site}/{area}/{line}/{cell}``:

* requests on ``<root>/cmd/order`` (one topic: the command is named in the payload; ``<root>/cmd/+`` would
  also take the replies under ``<root>/cmd/reply``),
* replies on ``<root>/cmd/reply``, or on the request's ``reply_to`` when that lies under ``<root>/cmd/reply``
  or under one of ``mqtt.commands.reply_prefixes`` (never any other topic: a sender cannot make the cell
  publish where it likes).

Request ``OrderCommand``: ``{"v": 1, "id": "<command id>", "cmd": "submit" | "cancel", "args": {...}}``; the
args are the control API's (``SubmitArgs``, ``CancelArgs``: by ``order_id``) checked by the same code. Reply
``OrderReply``: ``{"schema": "cellctl.cmd-reply/1", "v": 1, "id": ..., "ok": true, "result": {...},
"ts": ...}`` or ``... "ok": false, "error": {"code", "message"}``.

Exactly once:

* a command id is claimed in the store before the command runs and its reply stored after
  (``cellctl.store.commands``): a repeat (QoS 1 redelivery, an MES retry) gets the stored reply and the
  engine is not called. Ids are remembered for ``mqtt.commands.remember_s`` (7 days) and at most
  ``remember_max`` (10,000) of them; past that a repeat runs again, and a submit then still finds its order's
  job (the engine keeps one job per order id).
* a message that arrives retained never runs (it would run again at every reconnect): it is answered
  ``retained`` and cleared from the broker (an empty retained message on its topic, which this handler
  ignores). A command published with retain on while the cell is connected reaches it as a live message
  (MQTT 3.1.1) and runs once; its retained copy, seen at the next connect, gets that command's stored reply
  and is cleared.
* a malformed command (no JSON, wrong types, NaN, unknown keys or command, too large) changes nothing, not
  even the remembered ids: its error reply names the field, with ``id`` null when no id could be read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from cellctl.api.protocol import (
    COMMANDS,
    MAX_LINE,
    PROTOCOL_VERSION,
    ErrorBody,
    ErrorCode,
    ProtocolError,
    Reply,
    Request,
    describe,
    parse_args,
)
from cellctl.api.service import MES_COMMANDS, MesCaller, Requester
from cellctl.core.clock import Clock, SystemClock
from cellctl.errors import StoreError
from cellctl.schema.cell import Identity, MqttCommandsConfig
from cellctl.store.commands import ClaimState, CommandClaim
from cellctl.telemetry.encoding import Outgoing
from cellctl.telemetry.topics import topic_root

REPLY_SCHEMA: Final = "cellctl.cmd-reply/1"
ORDER_TOPIC: Final = "cmd/order"
"""Where commands arrive, under the cell's topic root."""
REPLY_TOPIC: Final = "cmd/reply"
"""Where replies go by default, under the cell's topic root."""
"""The ``schema`` of every reply (versioned like the telemetry payloads)."""

MAX_PAYLOAD: Final = MAX_LINE
"""Largest command accepted (bytes), as on the control socket; a larger one is answered ``too_large``."""

MAX_COMMAND_ID: Final = 128
_MAX_TOPIC: Final = 256
_FORBIDDEN_IN_TOPIC = frozenset("+#\x00")

log = structlog.get_logger("cellctl.api.mqtt")


class OrderCommand(BaseModel):
    """A command from the MES on ``<root>/cmd/order``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = Field(description="Protocol version.")
    id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_COMMAND_ID)] = Field(
        description="The MES's id of this command, unique per command; a repeat gets the first reply."
    )
    cmd: Annotated[
        StrictStr, Field(min_length=1, max_length=64, json_schema_extra={"enum": ["submit", "cancel"]})
    ]
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="As the control API's: submit {order_id, variant, quantity, parameters, priority, due, "
        "part_parameters}; cancel {order_id} (or job_id).",
    )
    reply_to: Annotated[StrictStr, Field(min_length=1, max_length=_MAX_TOPIC)] | None = Field(
        default=None,
        description="Topic for the reply, under <root>/cmd/reply or a configured reply prefix.",
    )


class OrderReply(BaseModel):
    """The one reply to an ``OrderCommand`` (``result`` when ``ok``, ``error`` otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_id: Literal["cellctl.cmd-reply/1"] = Field(default=REPLY_SCHEMA, alias="schema")
    v: Literal[1] = PROTOCOL_VERSION
    id: str | None = Field(description="The command's id; null when the command had no readable id.")
    ok: bool
    result: dict[str, Any] | None = Field(default=None, description="The job (submit, cancel).")
    error: ErrorBody | None = None
    ts: float = Field(description="When the reply was made (epoch seconds).")

    def encode(self) -> bytes:
        """The reply's JSON; values JSON cannot hold (NaN) go out as null."""
        exclude = {"error"} if self.ok else {"result"}
        return self.model_dump_json(by_alias=True, exclude=exclude, fallback=str).encode()


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of a command (``"cmd-order"``, with the args of each ``cmd``) and of its reply
    (``"cmd-reply"``), in the dialect pydantic generates (2020-12)."""
    request = OrderCommand.model_json_schema(mode="validation")
    defs: dict[str, Any] = request.setdefault("$defs", {})
    branches = []
    for cmd in sorted(MES_COMMANDS, reverse=True):  # submit, cancel
        model = COMMANDS[cmd]
        sub = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[model.__name__] = sub
        branches.append(
            {
                "if": {"properties": {"cmd": {"const": cmd}}, "required": ["cmd"]},
                "then": {"properties": {"args": {"$ref": f"#/$defs/{model.__name__}"}}, "required": ["args"]},
            }
        )
    request["allOf"] = branches
    reply = OrderReply.model_json_schema(mode="serialization", by_alias=True)
    # As sent: every envelope field, and exactly one of result (ok) and error (not ok).
    reply["required"] = ["schema", "v", "id", "ok", "ts"]
    reply["oneOf"] = [
        {"properties": {"ok": {"const": True}}, "required": ["result"], "not": {"required": ["error"]}},
        {"properties": {"ok": {"const": False}}, "required": ["error"], "not": {"required": ["result"]}},
    ]
    return {"cmd-order": request, "cmd-reply": reply}


class CommandService(Protocol):
    """What the handler needs of the control service (``ControlService``)."""

    async def handle(self, request: Request, caller: Requester) -> Reply:
        """Answer one request; never raises for a refused or bad request."""
        ...


class CommandLog(Protocol):
    """Where handled command ids and their replies are kept (``Store``)."""

    async def claim_command(
        self, source: str, command_id: str, *, now: float, keep_s: float, keep_rows: int
    ) -> CommandClaim:
        """Claim a command id in one transaction."""
        ...

    async def finish_command(self, source: str, command_id: str, reply: str, *, now: float) -> None:
        """Store a claimed command's reply."""
        ...

    async def command_reply(self, source: str, command_id: str) -> str | None:
        """The stored reply of a handled command id, claiming nothing."""
        ...


class _Refused(Exception):
    """A command answered with an error before anything ran (nothing is remembered of it)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class MqttOrders:
    """Answers the MES's ``submit`` and ``cancel`` commands through the control service, once per command id.

    An ``Inbound`` handler of the publisher: it sees topics and bytes only and returns the replies to publish.
    """

    def __init__(
        self,
        service: CommandService,
        log_store: CommandLog,
        identity: Identity,
        config: MqttCommandsConfig,
        *,
        clock: Clock | None = None,
    ) -> None:
        """Serve the cell of ``identity``; ``log_store`` remembers handled command ids (the Store)."""
        root = topic_root(identity)
        self._service = service
        self._store = log_store
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._request_topic = f"{root}/{ORDER_TOPIC}"
        self._reply_topic = f"{root}/{REPLY_TOPIC}"
        self._reply_prefixes = (self._reply_topic, *config.reply_prefixes)
        self._source = MesCaller(config.by).by
        # The publisher hands over one message at a time; the lock keeps claim-run-store one step anyway.
        self._lock = asyncio.Lock()
        self._log = log.bind(source=self._source)

    @property
    def request_topic(self) -> str:
        """Where the MES sends commands."""
        return self._request_topic

    @property
    def reply_topic(self) -> str:
        """Where replies go unless a request names its own ``reply_to``."""
        return self._reply_topic

    def subscriptions(self) -> Sequence[str]:
        """The command topic."""
        return (self._request_topic,)

    async def handle(self, topic: str, payload: bytes, *, retained: bool) -> list[Outgoing]:
        """Answer one message on the command topic; never raises (a bad command gets an error reply)."""
        if not payload:
            # An empty message is how a retained command is cleared (by us or by hand): nothing to answer.
            self._log.debug("empty message on the command topic ignored", topic=topic, retained=retained)
            return []
        try:
            async with self._lock:
                return await self._answer(topic, payload, retained=retained)
        except Exception:
            # The link must keep serving; the command's outcome is unknown to the sender, who may retry.
            self._log.exception("mqtt command failed", topic=topic)
            return [self._reply(None, self._reply_topic, code=ErrorCode.INTERNAL, message="internal error")]

    async def _answer(self, topic: str, payload: bytes, *, retained: bool) -> list[Outgoing]:
        clear = [Outgoing(topic, b"", retain=True)] if retained else []
        if len(payload) > MAX_PAYLOAD:
            self._log.warning("mqtt command refused: too large", size=len(payload), retained=retained)
            message = f"command of {len(payload)} bytes; at most {MAX_PAYLOAD} are accepted"
            return [*clear, self._reply(None, self._reply_topic, code=ErrorCode.TOO_LARGE, message=message)]
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self._log.warning("mqtt command refused: not JSON", error=str(exc)[:200], retained=retained)
            message = f"the command is not JSON: {str(exc)[:200]}"
            return [*clear, self._reply(None, self._reply_topic, code=ErrorCode.BAD_JSON, message=message)]
        if not isinstance(raw, dict):
            self._log.warning("mqtt command refused: not an object", got=type(raw).__name__)
            message = f"a command is a JSON object, got {type(raw).__name__}"
            return [*clear, self._reply(None, self._reply_topic, code=ErrorCode.BAD_REQUEST, message=message)]
        command_id = _readable_id(raw.get("id"))
        try:
            reply_topic = self._reply_to(raw.get("reply_to"))
        except _Refused as exc:
            self._log.warning("mqtt command refused", command_id=command_id, error=str(exc))
            return [*clear, self._reply(command_id, self._reply_topic, code=exc.code, message=str(exc))]
        if retained:
            # Published with retain on while we were connected, it arrived live (MQTT 3.1.1) and ran: its
            # retained copy comes back at the next connect, and is answered as the command was.
            stored = await self._stored_reply(command_id)
            if stored is not None:
                self._log.info("retained copy of a handled mqtt command cleared", command_id=command_id)
                return [*clear, Outgoing(reply_topic, stored.encode())]
            self._log.warning("retained mqtt command not run; cleared from the broker", command_id=command_id)
            message = (
                "a retained command is never run (it would run again at every reconnect): "
                "publish commands with retain off"
            )
            return [*clear, self._reply(command_id, reply_topic, code=ErrorCode.RETAINED, message=message)]
        try:
            command, request, caller = self._parse(raw)
        except _Refused as exc:
            self._log.warning("mqtt command refused", command_id=command_id, error=str(exc))
            return [self._reply(command_id, reply_topic, code=exc.code, message=str(exc))]
        return [await self._run(command, request, caller, reply_topic)]

    async def _stored_reply(self, command_id: str | None) -> str | None:
        if command_id is None:
            return None
        try:
            return await self._store.command_reply(self._source, command_id)
        except StoreError as exc:
            self._log.error("mqtt command lookup failed", command_id=command_id, error=str(exc))
            return None

    def _reply_to(self, value: object) -> str:
        """The reply topic a request asks for, or the default; _Refused naming ``reply_to`` if not allowed."""
        if value is None:
            return self._reply_topic
        if not isinstance(value, str) or not value or len(value) > _MAX_TOPIC:
            raise _Refused(
                ErrorCode.BAD_REQUEST, f"reply_to: a topic of 1-{_MAX_TOPIC} characters, got {value!r}"
            )
        if _FORBIDDEN_IN_TOPIC.intersection(value):
            raise _Refused(ErrorCode.BAD_REQUEST, f"reply_to: {value!r} holds '+', '#' or NUL")
        if not any(value == p or value.startswith(p + "/") for p in self._reply_prefixes):
            allowed = ", ".join(f"{p}[/...]" for p in self._reply_prefixes)
            raise _Refused(ErrorCode.BAD_REQUEST, f"reply_to: {value!r} is not under {allowed}")
        return value

    def _parse(self, raw: dict[str, Any]) -> tuple[OrderCommand, Request, MesCaller]:
        """The command checked as the control API checks it (nothing runs); _Refused naming the field."""
        try:
            command = OrderCommand.model_validate(raw)
        except ValidationError as exc:
            raise _Refused(ErrorCode.BAD_REQUEST, describe(exc)) from exc
        caller = MesCaller(self._config.by, command_id=command.id)
        if not caller.may(command.cmd):
            allowed = ", ".join(sorted(MES_COMMANDS))
            raise _Refused(
                ErrorCode.NOT_ALLOWED, f"cmd: {command.cmd!r} is not allowed over MQTT (only {allowed})"
            )
        request = Request(id=command.id, cmd=command.cmd, args=command.args)
        try:
            parse_args(request)  # the service checks again: same function, same messages
        except ProtocolError as exc:
            raise _Refused(ErrorCode(exc.code), str(exc)) from exc
        return command, request, caller

    async def _run(
        self, command: OrderCommand, request: Request, caller: MesCaller, reply_topic: str
    ) -> Outgoing:
        """Claim the command id, run the command once, remember its reply."""
        now = self._clock.wall()
        try:
            claim = await self._store.claim_command(
                self._source,
                command.id,
                now=now,
                keep_s=self._config.remember_s,
                keep_rows=self._config.remember_max,
            )
        except StoreError as exc:
            # Without the claim a repeat could run twice: refuse now, the MES may send it again later.
            self._log.error(
                "mqtt command not run: its id cannot be recorded", command_id=command.id, error=str(exc)
            )
            return self._reply(
                command.id,
                reply_topic,
                code=ErrorCode.UNAVAILABLE,
                message=f"not run: the store failed: {exc}",
            )
        if claim.state is ClaimState.DONE and claim.reply is not None:
            self._log.info("repeated mqtt command answered from the store", command_id=command.id)
            return Outgoing(reply_topic, claim.reply.encode())
        if claim.state is ClaimState.INTERRUPTED:
            # Claimed by a run that stopped before replying: submit and cancel converge when run again.
            self._log.warning("mqtt command interrupted earlier; running it again", command_id=command.id)
        answer = await self._service.handle(request, caller)
        reply = OrderReply(
            id=command.id,
            ok=answer.ok,
            result=answer.result,
            error=answer.error,
            ts=self._clock.wall(),
        ).encode()
        try:
            await self._store.finish_command(self._source, command.id, reply.decode(), now=now)
        except StoreError as exc:
            # It ran: say so. A repeat finds the claim without a reply and runs again (submit and cancel
            # converge), so the reply may then differ, never the effect.
            self._log.error("mqtt command reply not stored", command_id=command.id, error=str(exc))
        self._log.info("mqtt command answered", command_id=command.id, cmd=command.cmd, ok=answer.ok)
        return Outgoing(reply_topic, reply)

    def _reply(self, command_id: str | None, topic: str, *, code: ErrorCode, message: str) -> Outgoing:
        reply = OrderReply(
            id=command_id, ok=False, error=ErrorBody(code=code.value, message=message), ts=self._clock.wall()
        )
        return Outgoing(topic, reply.encode())


def _readable_id(value: object) -> str | None:
    """The command id when one can be read (a string of 1-128 characters), else None."""
    if isinstance(value, str) and 1 <= len(value) <= MAX_COMMAND_ID:
        return value
    return None
