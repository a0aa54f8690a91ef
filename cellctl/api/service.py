"""The single entry into the engine for API clients: validates a request, calls the engine, answers one Reply.

Operator actions are journaled here: every ``command``, ``submit``, ``cancel``, ``reorder``,
``apply_proposal``, ``sign_off`` and ``ack`` that reaches the engine is recorded as an ``OperatorAction``
(accepted or refused, with who sent it) through the sink the runtime gives the service, and is passed to
the same listeners as the engine's own events. The engine records the facts that follow (``StateChanged``
with ``by``, ``JobEvent``...).

Callers: a peer of the control socket (``Caller``, ``by`` = ``api:<user>``, may send what its role allows,
``protocol.MIN_ROLE``) or an MES over MQTT (``MesCaller``, ``by`` = ``mqtt:<name>``, may only submit and
cancel). Anything else is ``not_allowed``, with a message naming the role it needs.

The control lease: a state-changing command (above viewer) from a socket connection needs the lease; a
connection takes it when free, else ``lease_held`` names the holder. ``lease take`` from a strictly higher
role takes it over; a disconnect or ``lease release`` frees it. Each take, take-over and release is an
``OperatorAction`` (``action: lease``) with who and their role. MES submit and cancel are not lease-bound.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from cellctl import __version__
from cellctl.api.protocol import (
    COMMANDS,
    PROTOCOL_VERSION,
    AckArgs,
    Args,
    CancelArgs,
    CommandArgs,
    ConfirmArgs,
    ErrorCode,
    JournalArgs,
    LeaseArgs,
    ModeArgs,
    ProtocolError,
    ReorderArgs,
    Reply,
    Request,
    Role,
    SignOffArgs,
    SpcArgs,
    SubmitArgs,
    changes_state,
    parse_args,
    required_role,
)
from cellctl.core.clock import Clock, SystemClock
from cellctl.core.events import Event, OperatorAction
from cellctl.core.ports import EventSink
from cellctl.engine import OrderRequest
from cellctl.errors import (
    AlarmError,
    ConfirmError,
    InterlockTripped,
    InvalidTransition,
    JobError,
    StoreError,
)
from cellctl.schema.cell import Identity

log = structlog.get_logger("cellctl.api")

Listener = Callable[[Event], None]
JournalReader = Callable[[int, int], Awaitable[list[dict[str, Any]]]]
"""(after_id, limit) -> journal entries as JSON-ready dicts, oldest first."""
DevicesView = Callable[[], list[dict[str, Any]]]
"""Every configured device with its link health and its tags' last readings, JSON-ready; no I/O."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on the other end of a connection, as the kernel told us (SO_PEERCRED), with the role it has.

    ``connection`` numbers the connection within the server: the control lease belongs to one connection,
    not to a user, so the same person's TUI and a one-shot ``ctl`` are told apart.
    """

    uid: int
    gid: int
    pid: int
    user: str
    role: Role = Role.VIEWER
    connection: int = 0

    @property
    def by(self) -> str:
        """How the engine and the journal name this caller: ``api:<user>``."""
        return f"api:{self.user}"

    def may(self, cmd: str, args: Any = None) -> bool:
        """Whether this caller's role may send ``cmd`` with these raw args (``MIN_ROLE``)."""
        return self.role.at_least(required_role(cmd, args))

    def refusal(self, cmd: str, args: Any = None) -> str:
        """Why ``cmd`` is not allowed, naming the role it needs."""
        needed = required_role(cmd, args)
        return f"{cmd!r} needs the {needed.value} role; {self.by} is a {self.role.value}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = asdict(self)
        data["role"] = self.role.value
        return data


MES_COMMANDS: frozenset[str] = frozenset({"submit", "cancel"})
"""What a manufacturing execution system may ask of the cell: orders in, orders out, nothing else."""


@dataclass(frozen=True, slots=True)
class MesCaller:
    """A manufacturing execution system sending commands over MQTT.

    MQTT tells nothing about the sender, so it has no uid to show: it is named by the cell's config
    (``mqtt.commands.by``) and each request carries the MES's command id, journaled with the action.
    """

    name: str
    command_id: str | None = None

    @property
    def by(self) -> str:
        """How the engine and the journal name this caller: ``mqtt:<name>``."""
        return f"mqtt:{self.name}"

    def may(self, cmd: str, args: Any = None) -> bool:
        """Only ``MES_COMMANDS``."""
        return cmd in MES_COMMANDS

    def refusal(self, cmd: str, args: Any = None) -> str:
        """Why ``cmd`` is not allowed."""
        return f"{self.by} may not send {cmd!r}: an MES may only send {', '.join(sorted(MES_COMMANDS))}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``via: mqtt`` tells it apart from a socket peer)."""
        return {"via": "mqtt", "name": self.name, "command_id": self.command_id}


Requester = Caller | MesCaller
"""Whoever sends a request to the service: a peer on the control socket or an MES over MQTT."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The control lease: the one connection whose state-changing commands are accepted, and since when."""

    holder: Caller
    since: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields: who holds it (user, role, pid, connection) and since when (epoch s)."""
        holder = self.holder
        return {
            "user": holder.user,
            "by": holder.by,
            "role": holder.role.value,
            "pid": holder.pid,
            "connection": holder.connection,
            "since": self.since,
        }


class View(Protocol):
    """A snapshot the engine returns (CellStatus, JobView): sent as JSON."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        ...


class EnginePort(Protocol):
    """What the service needs of the engine (cellctl.engine.Engine provides it)."""

    async def command(self, command: str, *, by: str) -> View:
        """Apply a PackML command."""
        ...

    async def submit(self, order: OrderRequest, *, by: str) -> View:
        """Queue an order."""
        ...

    async def change_mode(self, mode: str, *, by: str) -> View:
        """Select the unit mode."""
        ...

    async def cancel(self, job_id: str, *, by: str) -> View:
        """Cancel a job."""
        ...

    async def cancel_order(self, order_id: str, *, by: str) -> View:
        """Cancel the job an order id made."""
        ...

    async def reorder(self, job_ids: Sequence[str], *, by: str) -> View:
        """Set the queue's order."""
        ...

    async def confirm(self, step: str, *, evidence: str | None, by: str) -> View:
        """Answer a step waiting for a person."""
        ...

    async def apply_proposal(self, *, by: str) -> View:
        """Take the scheduler's proposed order."""
        ...

    async def sign_off(self, *, by: str, note: str) -> View:
        """End the open first-article qualification."""
        ...

    async def acknowledge(self, alarm: str, *, by: str) -> View:
        """Acknowledge a shown alarm."""
        ...

    def status(self) -> View:
        """Snapshot of the cell."""
        ...

    def spc_chart(self, variant: str, characteristic: str) -> View:
        """The control chart of one characteristic."""
        ...

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call back on every recorded event."""
        ...


class ControlService:
    """Answers API requests against one engine; the server calls ``handle`` once per request."""

    def __init__(
        self,
        engine: EnginePort,
        *,
        identity: Identity,
        journal: JournalReader | None = None,
        sink: EventSink | None = None,
        clock: Clock | None = None,
        telemetry: Callable[[], dict[str, Any]] | None = None,
        devices: DevicesView | None = None,
    ) -> None:
        """``telemetry``: the broker link's state for the status (``OutboxPublisher.link_view``), if any;
        ``devices``: the devices' health and last readings for ``devices`` (None: ``unavailable``)."""
        self._engine = engine
        self._devices = devices
        self._lease: Lease | None = None
        self._telemetry = telemetry
        self._identity = identity
        self._journal = journal
        self._sink = sink
        self._clock = clock or SystemClock()
        self._listeners: list[Listener] = []
        self._handlers: dict[str, Callable[[Args, Requester], Awaitable[dict[str, Any]]]] = {
            "hello": self._hello,
            "status": self._status,
            "command": self._command,
            "mode": self._mode,
            "submit": self._submit,
            "cancel": self._cancel,
            "reorder": self._reorder,
            "apply_proposal": self._apply_proposal,
            "confirm": self._confirm,
            "sign_off": self._sign_off,
            "ack": self._ack,
            "journal": self._read_journal,
            "spc": self._spc,
            "devices": self._read_devices,
            "lease": self._lease_command,
        }

    @property
    def identity(self) -> Identity:
        """The cell this service controls."""
        return self._identity

    def status(self) -> dict[str, Any]:
        """The engine's status snapshot as JSON-ready data (for a watcher's re-synchronisation), with the
        broker link's state under ``telemetry`` when the controller publishes."""
        status = self._engine.status().to_dict()
        if self._telemetry is not None:
            status["telemetry"] = self._telemetry()
        status["lease"] = self._lease.to_dict() if self._lease is not None else None
        return status

    @property
    def lease(self) -> Lease | None:
        """Who holds the control lease, if anyone."""
        return self._lease

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call back on every event the engine records and every operator action; returns the unsubscribe."""
        engine_unsubscribe = self._engine.add_listener(callback)
        self._listeners.append(callback)

        def unsubscribe() -> None:
            engine_unsubscribe()
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    async def handle(self, request: Request, caller: Requester) -> Reply:
        """Answer one request: a Reply with the result, or with an error code; never raises for a bad request,
        a refused command or a bug in a handler (logged, answered ``internal``)."""
        try:
            if not caller.may(request.cmd, request.args):
                raise ProtocolError(
                    ErrorCode.NOT_ALLOWED, caller.refusal(request.cmd, request.args), request_id=request.id
                )
            args = parse_args(request)
            if isinstance(caller, Caller) and request.cmd != "lease" and changes_state(request.cmd):
                await self._hold_lease(caller)
            handler = self._handlers.get(request.cmd)
            if handler is None:
                # Known to the protocol but served by the connection itself (``watch``).
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"{request.cmd!r} is served by a connection to the control socket, not by the service",
                    request_id=request.id,
                )
            result = await handler(args, caller)
        except ProtocolError as exc:
            return Reply.failure(request.id, exc.code, str(exc))
        except InvalidTransition as exc:
            return Reply.failure(request.id, ErrorCode.INVALID_TRANSITION, str(exc))
        except JobError as exc:
            return Reply.failure(request.id, ErrorCode.JOB_ERROR, str(exc))
        except ConfirmError as exc:
            return Reply.failure(request.id, ErrorCode.CONFIRM_REFUSED, str(exc))
        except InterlockTripped as exc:
            return Reply.failure(request.id, ErrorCode.INTERLOCK, str(exc))
        except AlarmError as exc:
            return Reply.failure(request.id, ErrorCode.ALARM_REFUSED, str(exc))
        except Exception as exc:
            # One request's failure must not take the control socket down; the log keeps the traceback.
            log.exception("request failed", cmd=request.cmd, caller=caller.by)
            return Reply.failure(request.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return Reply.success(request.id, result)

    # --- handlers ---------------------------------------------------------------------------------------

    async def _hello(self, _args: Args, caller: Requester) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "server": "cellctl",
            "version": __version__,
            "identity": self._identity.model_dump(mode="json"),
            "caller": caller.to_dict(),
            "role": caller.role.value if isinstance(caller, Caller) else None,
            "lease": self._lease.to_dict() if self._lease is not None else None,
            "commands": list(COMMANDS),
        }

    async def _status(self, _args: Args, _caller: Requester) -> dict[str, Any]:
        return self.status()

    async def _command(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, CommandArgs)
        name = args.name

        async def call() -> View:
            return await self._engine.command(name, by=caller.by)

        return await self._act(name, {}, caller, call)

    async def _mode(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, ModeArgs)
        name = args.name

        async def call() -> View:
            return await self._engine.change_mode(name, by=caller.by)

        return await self._act("mode", args.model_dump(), caller, call)

    async def _submit(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, SubmitArgs)
        order = OrderRequest(
            order_id=args.order_id,
            variant=args.variant,
            quantity=args.quantity,
            parameters=dict(args.parameters),
            priority=args.priority,
            due=args.due,
            part_parameters=tuple(dict(p) for p in args.part_parameters),
        )

        async def call() -> View:
            return await self._engine.submit(order, by=caller.by)

        return await self._act("submit", args.model_dump(), caller, call)

    async def _cancel(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, CancelArgs)
        job_id, order_id = args.job_id, args.order_id

        async def call() -> View:
            if order_id is not None:
                return await self._engine.cancel_order(order_id, by=caller.by)
            assert job_id is not None  # CancelArgs holds exactly one of the two
            return await self._engine.cancel(job_id, by=caller.by)

        return await self._act("cancel", args.model_dump(exclude_none=True), caller, call)

    async def _reorder(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, ReorderArgs)
        job_ids = list(args.job_ids)

        async def call() -> View:
            return await self._engine.reorder(job_ids, by=caller.by)

        return await self._act("reorder", args.model_dump(), caller, call)

    async def _apply_proposal(self, _args: Args, caller: Requester) -> dict[str, Any]:
        async def call() -> View:
            return await self._engine.apply_proposal(by=caller.by)

        return await self._act("apply_proposal", {}, caller, call)

    async def _confirm(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, ConfirmArgs)
        step, evidence = args.step, args.evidence

        async def call() -> View:
            return await self._engine.confirm(step, evidence=evidence, by=caller.by)

        return await self._act("confirm", args.model_dump(), caller, call)

    async def _sign_off(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, SignOffArgs)
        note = args.note

        async def call() -> View:
            return await self._engine.sign_off(by=caller.by, note=note)

        return await self._act("sign_off", args.model_dump(), caller, call)

    async def _ack(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, AckArgs)
        alarm = args.alarm

        async def call() -> View:
            return await self._engine.acknowledge(alarm, by=caller.by)

        return await self._act("ack", args.model_dump(), caller, call)

    async def _spc(self, args: Args, _caller: Requester) -> dict[str, Any]:
        assert isinstance(args, SpcArgs)
        # A read: answered from memory, not journaled as an operator action.
        return self._engine.spc_chart(args.variant, args.characteristic).to_dict()

    async def _read_journal(self, args: Args, _caller: Requester) -> dict[str, Any]:
        assert isinstance(args, JournalArgs)
        if self._journal is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "this controller keeps no journal")
        entries = await self._journal(args.after_id, args.limit)
        return {"entries": entries}

    async def _read_devices(self, _args: Args, _caller: Requester) -> dict[str, Any]:
        if self._devices is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "this controller shows no devices")
        return {"devices": self._devices()}

    # --- the control lease ------------------------------------------------------------------------------
    # One connection at a time may change the cell, so two operators (a TUI beside the cell, a ctl over SSH)
    # never fight over it unawares. MQTT MES submit/cancel do not need it: the order book is shared with the
    # plant, and the MES is not a person at the cell who could be surprised by another one.

    async def _hold_lease(self, caller: Caller) -> None:
        """Let ``caller``'s state-changing command through: it holds the lease or takes the free one."""
        lease = self._lease
        if lease is None:
            await self._set_lease(caller, "take", implicit=True)
        elif lease.holder.connection != caller.connection:
            raise self._held(lease)

    def _held(self, lease: Lease) -> ProtocolError:
        holder = lease.holder
        since = datetime.fromtimestamp(lease.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return ProtocolError(
            ErrorCode.LEASE_HELD,
            f"the control lease is held by {holder.by} ({holder.role.value}, pid {holder.pid}) since {since} "
            f"on another connection: wait until it is released (its client disconnects or sends lease "
            f"release), or take it over with `lease take` from a role higher than {holder.role.value}",
        )

    async def _set_lease(
        self, caller: Caller, action: str, *, implicit: bool = False, previous: Lease | None = None
    ) -> None:
        self._lease = Lease(caller, self._clock.wall())
        args: dict[str, Any] = {"action": action, "role": caller.role.value, "caller": caller.to_dict()}
        if implicit:
            args["implicit"] = True
        if previous is not None:
            args["previous"] = previous.to_dict()
        await self._record_action("lease", args, caller, accepted=True, reason="")

    async def _release_lease(self, caller: Caller, reason: str) -> None:
        self._lease = None
        args = {"action": "release", "role": caller.role.value, "caller": caller.to_dict()}
        await self._record_action("lease", args, caller, accepted=True, reason=reason)

    async def _lease_command(self, args: Args, caller: Requester) -> dict[str, Any]:
        assert isinstance(args, LeaseArgs)
        assert isinstance(caller, Caller)  # an MES may not send ``lease`` (``MesCaller.may``)
        lease = self._lease
        mine = lease is not None and lease.holder.connection == caller.connection
        if args.action == "take" and not mine:
            if lease is None:
                await self._set_lease(caller, "take")
            elif caller.role.rank > lease.holder.role.rank:
                await self._set_lease(caller, "take_over", previous=lease)
                log.warning("control lease taken over", by=caller.by, previous=lease.holder.by)
            else:
                raise self._held(lease)
        elif args.action == "release" and mine:
            await self._release_lease(caller, "released")
        current = self._lease
        return {
            "lease": current.to_dict() if current is not None else None,
            "yours": current is not None and current.holder.connection == caller.connection,
        }

    async def connection_closed(self, caller: Caller) -> None:
        """The server's note that ``caller``'s connection ended: its lease, if it held it, is released."""
        lease = self._lease
        if lease is not None and lease.holder.connection == caller.connection:
            await self._release_lease(caller, "disconnected")

    # --- operator actions -------------------------------------------------------------------------------

    async def _act(
        self, action: str, args: dict[str, Any], caller: Requester, call: Callable[[], Awaitable[View]]
    ) -> dict[str, Any]:
        """Run one engine call and journal it as an OperatorAction, accepted or refused."""
        recorded_args = {**args, "caller": caller.to_dict()}
        if isinstance(caller, Caller):
            recorded_args["role"] = caller.role.value
        try:
            view = await call()
        except (InvalidTransition, JobError, ConfirmError, InterlockTripped, AlarmError) as exc:
            await self._record_action(action, recorded_args, caller, accepted=False, reason=str(exc))
            raise
        await self._record_action(action, recorded_args, caller, accepted=True, reason="")
        return view.to_dict()

    async def _record_action(
        self, action: str, args: dict[str, Any], caller: Requester, *, accepted: bool, reason: str
    ) -> None:
        event = OperatorAction(
            ts=self._clock.wall(),
            action=action,
            by=caller.by,
            args=args,
            accepted=accepted,
            reason=reason,
        )
        log.info("operator action", action=action, by=caller.by, accepted=accepted, reason=reason)
        if self._sink is not None:
            try:
                await self._sink.record(event)
            except StoreError as exc:
                # The engine already acted: answering "failed" would make the client retry a done action.
                log.error("operator action not journaled", action=action, by=caller.by, error=str(exc))
        for listener in list(self._listeners):
            listener(event)
