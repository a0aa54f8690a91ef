"""The Engine: runs the cell as a PackML machine over a job queue, changing over and making parts.

One lock serialises every state move and its consequences. Each acting state has one owned task
(``"state:<name>"``) that does the state's work and then completes it; Execute has one production task
(``"engine:production"``) that takes jobs, changes over and makes parts. Hold, Stop and Suspend let the
current part finish and park a running changeover (``RunControl.hold``: interruptible steps are cut and
finalized, the others finish; the acting state completes once it parked); Unhold plans again from the setup
read back, so steps done before the hold are not run again. Abort cancels at once and returns only when
nothing runs any more, so no device is written after it returned. The one exception is bounded: the
finalizers of the steps Abort cut (steps.py) run before it returns, each for at most
``changeover.abort_deadline_s``, and a write a finalizer had already sent when its deadline cut it may still
reach the device afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from cellctl.core.clock import Clock, SystemClock
from cellctl.core.devices import Profile, make_profile
from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    FirstArticleStatus,
    JobEvent,
    JobStatus,
    PartProduced,
    Severity,
    StateChanged,
    StepEvent,
    StepStatus,
    Verdict,
)
from cellctl.core.inhibit import GuardedBackend, WriteInhibit
from cellctl.core.oee import OeeFigures
from cellctl.core.packml import Command, State, UnitMode, completion, is_acting
from cellctl.core.plans import ChangeoverPlan
from cellctl.core.ports import EventSink, OrderBook
from cellctl.core.spc import ChartData
from cellctl.core.tags import TagBackend
from cellctl.engine.alarms import Alarm, AlarmManager
from cellctl.engine.cell import PackMLCell
from cellctl.engine.confirm import Confirmations, Prompt
from cellctl.engine.durations import StepDurations
from cellctl.engine.firstarticle import Qualification, QualificationView, authorise_sign_off
from cellctl.engine.interlocks import SafetyWatcher
from cellctl.engine.jobs import Job, JobQueue, JobView, OrderRequest, PartCycle, existing_job
from cellctl.engine.kpi import EXTERNAL, INTERNAL, PendingKpi, StagedRun, step_kpis
from cellctl.engine.oee import LiveOee
from cellctl.engine.planner import OPERATOR_KIND, plan_changeover, read_setup, target_setup
from cellctl.engine.recovery import InterruptedChangeover, RecoveredJob, RecoveredStep, Recovery, StepState
from cellctl.engine.scheduler import SchedJob, changeover_costs, evaluate, propose
from cellctl.engine.sequencer import VERIFIED, RunControl, Sequencer
from cellctl.engine.spc_monitor import HistoricValue, SpcMonitor, SpcSummary
from cellctl.engine.staging import Stager, lead_parts, runnable_ahead
from cellctl.engine.storewatch import StoreWatch
from cellctl.errors import (
    CellctlError,
    DeviceError,
    FirstArticleFailed,
    InterlockTripped,
    InvalidTransition,
    JobError,
    OrderConflict,
    PlanError,
    PlanHeld,
    SequenceError,
    SpcHold,
    StoreError,
)
from cellctl.schema.load import LoadedConfig
from cellctl.schema.recipe import Recipe

Listener = Callable[[Event], None]

HOLD_ALARM = "cell_held"
"""Alarm raised with the reason when the engine holds or stops the cell on a failure."""

ENGINE = "engine"
"""``by`` of the moves the engine makes on its own."""

PROPOSAL_TTL_S = 60.0
"""How long a proposed order of a queue with due dates is reused before it is computed again."""

_ProposalKey = tuple[str | None, frozenset[str], int, int]
"""What a cached proposal was computed for: start variant, queued job ids, durations version, time slot."""

SAFETY = "interlock"
"""``by`` of the moves interlocks and the e-stop make."""

RECOVERY_ALARM = "unclean_stop"
"""Alarm raised at power-up when the journal shows the last run was killed; cleared by Reset."""

STORE_ALARM = "store"
"""Alarm raised while the store cannot journal facts; cleared once a record succeeds again (the recovery task
retries by itself). A cell held for it stays Held until a person Unholds it."""
STORE_RECOVERED = (
    "the store journals again (recovered by itself); the cell stays held until a person Unholds it"
)

IN_DOUBT_REASON = "its outcome before the unclean stop is unknown"
DONE_DIFFERS_REASON = "it was journaled done before the unclean stop, yet its result does not read back"


class Phase(StrEnum):
    """What the production task is doing: decides whether Hold/Stop/Suspend cancel it or let it finish."""

    IDLE = "idle"
    CHANGEOVER = "changeover"
    PART = "part"


# ------------------------------------------------------------------------------------------------------------
# Views: frozen snapshots the API sends as JSON.


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of the active changeover and how far it got."""

    id: str
    kind: str
    device: str | None
    description: str
    after: tuple[str, ...]
    expected_s: float
    external: bool
    status: str = "pending"
    duration_s: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        data = dataclasses.asdict(self)
        data["after"] = list(self.after)
        return data


@dataclass(frozen=True, slots=True)
class ChangeoverView:
    """The active changeover: its plan's steps with their progress."""

    changeover_id: str
    job_id: str
    from_variant: str | None
    to_variant: str
    planned_s: float
    critical_path: tuple[str, ...]
    started_at: float
    steps: tuple[StepView, ...]

    @property
    def done(self) -> int:
        """Steps confirmed done."""
        return sum(1 for s in self.steps if s.status == StepStatus.DONE.value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "changeover_id": self.changeover_id,
            "job_id": self.job_id,
            "from_variant": self.from_variant,
            "to_variant": self.to_variant,
            "planned_s": self.planned_s,
            "critical_path": list(self.critical_path),
            "started_at": self.started_at,
            "done": self.done,
            "total": len(self.steps),
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class Counters:
    """Parts made since the engine started, by verdict."""

    parts: int = 0
    good: int = 0
    bad: int = 0
    invalid: int = 0

    def counted(self, verdict: Verdict) -> Counters:
        """These counters with one more part of ``verdict``."""
        return Counters(
            parts=self.parts + 1,
            good=self.good + (verdict is Verdict.PASS),
            bad=self.bad + (verdict is Verdict.FAIL),
            invalid=self.invalid + (verdict is Verdict.INVALID),
        )

    def to_dict(self) -> dict[str, int]:
        """JSON-ready data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class ProposedOrder:
    """The scheduler's order of the queue, its predicted changeover time and that of the queue's order."""

    job_ids: tuple[str, ...]
    changeover_s: float
    queue_changeover_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "job_ids": list(self.job_ids),
            "changeover_s": self.changeover_s,
            "queue_changeover_s": self.queue_changeover_s,
        }


@dataclass(frozen=True, slots=True)
class RecoveryView:
    """What the last unclean stop left behind and how far settling it got: shown until the interrupted
    changeover completed (or its job ended), or, with none, until Reset."""

    unclean: bool
    last_state: str | None
    changeover: InterruptedChangeover | None
    restored_jobs: tuple[str, ...]
    refused_jobs: tuple[tuple[str, str], ...]
    """(job id, why it was not restored)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "unclean": self.unclean,
            "last_state": self.last_state,
            "changeover": self.changeover.to_dict() if self.changeover else None,
            "restored_jobs": list(self.restored_jobs),
            "refused_jobs": [{"job_id": j, "reason": r} for j, r in self.refused_jobs],
        }


@dataclass(frozen=True, slots=True)
class CellStatus:
    """A snapshot of the cell for clients."""

    cell: str
    state: str
    state_no: int
    since: float
    mode: str
    allowed_commands: tuple[str, ...]
    current_job: JobView | None
    queue: tuple[JobView, ...]
    variant: str | None
    changeover: ChangeoverView | None
    counters: Counters
    reason: str = ""
    proposed_order: ProposedOrder | None = None
    prompts: tuple[Prompt, ...] = ()
    qualification: QualificationView | None = None
    recovery: RecoveryView | None = None
    oee: OeeFigures | None = None
    alarms: tuple[Alarm, ...] = ()
    """Alarms active or not yet acknowledged, the most severe first."""
    spc: tuple[SpcSummary, ...] = ()
    store: dict[str, Any] | None = None
    """The outbox against its bound (rows, bytes, limits, dropped per stream) and the failing cause."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "cell": self.cell,
            "state": self.state,
            "state_no": self.state_no,
            "since": self.since,
            "mode": self.mode,
            "allowed_commands": list(self.allowed_commands),
            "current_job": self.current_job.to_dict() if self.current_job else None,
            "queue": [j.to_dict() for j in self.queue],
            "variant": self.variant,
            "changeover": self.changeover.to_dict() if self.changeover else None,
            "counters": self.counters.to_dict(),
            "reason": self.reason,
            "proposed_order": self.proposed_order.to_dict() if self.proposed_order else None,
            "prompts": [p.to_dict() for p in self.prompts],
            "qualification": self.qualification.to_dict() if self.qualification else None,
            "recovery": self.recovery.to_dict() if self.recovery else None,
            "oee": self.oee.to_dict() if self.oee else None,
            "alarms": [a.to_dict() for a in self.alarms],
            "spc": [s.to_dict() for s in self.spc],
            "store": self.store,
        }


@dataclass(slots=True)
class _Changeover:
    """Progress of the running changeover, fed by the sequencer's step events."""

    id: str
    job_id: str
    plan: ChangeoverPlan
    planned_s: float
    critical_path: tuple[str, ...]
    started_at: float
    steps: dict[str, StepView] = field(default_factory=dict)

    def view(self) -> ChangeoverView:
        return ChangeoverView(
            changeover_id=self.id,
            job_id=self.job_id,
            from_variant=self.plan.from_variant,
            to_variant=self.plan.to_variant,
            planned_s=self.planned_s,
            critical_path=self.critical_path,
            started_at=self.started_at,
            steps=tuple(self.steps.values()),
        )


class _Recorder:
    """The EventSink the sequencer sees: the real sink first, then the engine's bookkeeping and listeners."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def record(self, event: Event) -> int:
        return await self._engine._record(event)


def build_profiles(
    config: LoadedConfig, devices: Mapping[str, TagBackend], *, inhibit: WriteInhibit | None = None
) -> dict[str, Profile]:
    """A profile per configured device over its backend; DeviceError names a device without one.

    With ``inhibit`` every write and method call of the profiles passes it (the e-stop's one choke point).
    """
    profiles: dict[str, Profile] = {}
    for name, device in config.cell.devices.items():
        backend = devices.get(name)
        if backend is None:
            raise DeviceError(name, "no backend was given for this configured device")
        profiles[name] = make_profile(
            device.profile,
            name,
            backend if inhibit is None else GuardedBackend(backend, inhibit),
            device.tags,
            handshake=device.handshake,
            methods=device.method_signatures,
        )
    return profiles


class Engine:
    """Runs one cell: PackML commands, a job queue, changeovers and the per-part cycle; records every fact."""

    def __init__(
        self,
        config: LoadedConfig,
        devices: Mapping[str, TagBackend],
        sink: EventSink,
        clock: Clock | None = None,
        *,
        durations: StepDurations | None = None,
        recovery: Recovery | None = None,
        orders: OrderBook | None = None,
        spc_history: Sequence[HistoricValue] = (),
        store_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``recovery`` (``read_recovery`` of the journal) restores unfinished jobs and, after an unclean
        stop, powers up with an alarm and resumes the interrupted changeover only after Reset and Start.
        ``orders`` (the store) answers for order ids accepted before this run: one job per order id.
        ``spc_history`` (``read_spc_history``) rebuilds the control charts. ``store_stats`` (the store's
        outbox figures) is shown in the status."""
        self._store_stats = store_stats
        self._orders = orders
        self._config = config
        self._clock: Clock = clock or SystemClock()
        # Every fact goes through the watch: it notes a failing store and keeps what must be journaled later.
        self._sink = self._store = StoreWatch(sink)
        # Set while the store fails: wakes the recovery task, which retries until a record succeeds.
        self._store_down = asyncio.Event()
        self._name = config.cell.identity.cell
        self._log = structlog.get_logger(__name__).bind(cell=self._name)
        self._listeners: list[Listener] = []
        # Shut on an e-stop edge: no write or call reaches a device until Reset (cellctl/core/inhibit.py).
        self._inhibit = WriteInhibit()
        self._profiles = build_profiles(config, devices, inhibit=self._inhibit)
        self._cell = PackMLCell(
            self._store,
            self._clock,
            notify=self._notify,
            name=self._name,
            mode=_restored_mode(recovery),
            unjournaled=self._store.defer,
        )
        self.alarms = AlarmManager(self._record, self._clock, defer=self._defer_alarm)
        """The cell's alarms (one home): raise, clear and acknowledge, each journaled."""
        self._safety = SafetyWatcher(
            config.cell,
            devices,
            self.alarms,
            self._inhibit,
            self._clock,
            issue=self._safety_command,
            state=lambda: self._cell.state,
        )
        self._jobs = JobQueue(config.recipes)
        # Measured step durations (the runtime loads them from the journal), updated from the steps run.
        self._durations = durations if durations is not None else StepDurations()
        self._costs = changeover_costs(config.recipes, config.cell, durations=self._durations)
        self._proposal: tuple[_ProposalKey, tuple[str, ...], float] | None = None
        self._parts = PartCycle(self._profiles, config.cell, self._clock)
        self._spc = SpcMonitor(config.recipes)
        self._spc.replay(spc_history)
        self._confirmations = Confirmations(self._clock)
        self._sequencer = Sequencer(
            self._profiles,
            _Recorder(self),
            self._clock,
            confirmations=self._confirmations,
            finalizer_deadline_s=config.cell.changeover.abort_deadline_s,
        )
        self._run_control: RunControl | None = None
        self._lock = asyncio.Lock()
        self._group: asyncio.TaskGroup | None = None
        self._actor: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._phase = Phase.IDLE
        self._interrupt: str | None = None
        self._current: Job | None = None
        self._variant: str | None = None
        self._changeover: _Changeover | None = None
        # A changeover with operator steps that was interrupted, by (job, target variant), and the operator
        # steps confirmed in it: re-planned, they stay due (a person's work is not read back) but are not
        # asked again once confirmed.
        self._operator_done: dict[tuple[str, str], set[str]] = {}
        self._counters = Counters()
        self._starved = False
        self._reason = ""
        # First-article gate, changeover KPIs and external steps run ahead (issue 4).
        self._qualification: Qualification | None = None
        self._authorise_sign_off: Callable[[str], None] = authorise_sign_off  # issue 7: role checks
        self._last_good: float | None = None
        self._kpi: PendingKpi | None = None
        self._stager = Stager(self._sequencer)
        self._ahead: tuple[tuple[str, str], int] | None = None
        self._recovery: RecoveryView | None = None
        self._resume: InterruptedChangeover | None = None
        self._resume_steps: dict[str, RecoveredStep] = {}
        self._recovery_text = ""
        self._refused: list[JobEvent] = []
        self._orphan: InterruptedChangeover | None = None
        self._oee = LiveOee(config)  # issue 5: the current shift's OEE in the status
        if recovery is not None and not recovery.empty:
            self._restore(recovery)

    # --------------------------------------------------------------------------------------------------------
    # Public API

    async def run(self) -> None:
        """Power up in Stopped and serve until cancelled; owns every task the engine starts."""
        if self._group is not None:
            raise CellctlError("the engine is already running")
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                with structlog.contextvars.bound_contextvars(cell=self._name):
                    await self._cell.power_up(State.STOPPED, by=ENGINE)
                    await self._report_recovery()
                    group.create_task(self._report_oee(), name="engine:oee")
                    group.create_task(self._recover_store(), name="engine:store-recovery")
                    if self._safety.configured:
                        group.create_task(self._safety.run(), name="engine:interlocks")
                    self._log.info("engine running", devices=sorted(self._profiles))
                    await asyncio.Event().wait()  # until cancelled; the group's tasks do the work
        finally:
            self._group = None

    async def wait_powered_up(self, timeout: float) -> None:
        """Wait until the cell has left Undefined (its power-up journaled); TimeoutError past ``timeout``."""
        await self._cell.wait_for(*(s for s in State if s is not State.UNDEFINED), timeout=timeout)

    async def command(self, command: str, *, by: str) -> CellStatus:
        """Apply a PackML command (``"reset"``, ``"start"``, ... ``"clear"``); InvalidTransition if refused.

        Returns once the command took effect; after ``"abort"`` nothing runs any more on the devices (it
        returns once the finalizers of the changeover steps it cut are done, at most ``abort_deadline_s``).
        """
        parsed = Command.parse(command, self._cell.state)
        await self._transition(parsed, by=by)
        return self.status()

    async def change_mode(self, mode: str, *, by: str) -> CellStatus:
        """Select the unit mode (production, maintenance, manual); ModeRefused, nothing changed, outside
        Stopped, Idle and Aborted. In maintenance and manual the cell takes no jobs: Start is refused."""
        async with self._lock:
            parsed = UnitMode.parse(mode, self._cell.state)
            await self._cell.change_mode(parsed, by=by)
            self._log.info("unit mode selected", mode=parsed.label, by=by)
        return self.status()

    async def submit(self, order: OrderRequest, *, by: str) -> JobView:
        """Queue an order; JobError on bad input. The same order id and content returns the existing job."""
        async with self._lock:
            if self._jobs.find(order.order_id) is None and self._orders is not None:
                # An order id taken before this run (its job finished, or ended before a restart).
                record = await self._orders.find_order(order.order_id)
                if record is not None:
                    return existing_job(order, record)
            job, new = self._jobs.submit(order, by=by, now=self._clock.wall())
            if not new:
                return job.view()
            try:
                await self._record(job.event(self._clock.wall(), by=by))
            except OrderConflict as exc:
                # The store's unique order id is the last word (another writer took it first).
                self._jobs.withdraw(job)
                record = await self._orders.find_order(order.order_id) if self._orders else None
                if exc.same_content and record is not None:
                    return existing_job(order, record)
                raise
            except BaseException:
                self._jobs.withdraw(job)
                raise
            self._log.info("job queued", job=job.id, order=order.order_id, variant=job.variant, by=by)
            if self._cell.state is State.SUSPENDED and self._starved:
                await self._apply(Command.UNSUSPEND, by=ENGINE)
            return job.view()

    async def cancel(self, job_id: str, *, by: str) -> JobView:
        """Cancel a job that is not being worked on; JobError for an unknown, finished or running job."""
        async with self._lock:
            return await self._cancel(self._jobs.get(job_id), by=by)

    async def cancel_order(self, order_id: str, *, by: str) -> JobView:
        """Cancel the job an order id made (an MES knows its order ids, not job ids); JobError as ``cancel``,
        and for an order id never accepted or whose job ended before this run."""
        async with self._lock:
            job = self._jobs.find(order_id)
            if job is None:
                record = await self._orders.find_order(order_id) if self._orders is not None else None
                if record is None:
                    raise JobError(f"no order {order_id!r}: it was never accepted")
                status = record.last_data.get("status") or "finished"
                raise JobError(
                    f"order {order_id!r}: its job {record.job_id} is {status} (ended before this run): "
                    "it cannot be cancelled"
                )
            return await self._cancel(job, by=by)

    async def _cancel(self, job: Job, *, by: str) -> JobView:
        """Cancel ``job`` (the lock held); JobError when it is finished or in production."""
        job_id = job.id
        reason = f"cancelled by {by}"
        if job is self._current:
            if self._worker is not None and not self._worker.done():
                raise JobError(
                    f"job {job_id!r} is in production (cell {self._cell.state.label}): "
                    "hold or stop the cell before cancelling it"
                )
            job.status, job.reason, job.finished_at = JobStatus.CANCELLED, reason, self._clock.wall()
            self._current = None
            await self._drop_resume(job, reason)
        else:
            self._jobs.cancel(job_id, reason=reason)
            job.finished_at = self._clock.wall()
        await self._record(job.event(self._clock.wall(), by=by))
        self._log.info("job cancelled", job=job.id, by=by)
        return job.view()

    def job(self, job_id: str) -> JobView:
        """One job, queued, running or finished; JobError when there is none."""
        return self._jobs.get(job_id).view()

    def set_recipes(self, recipes: Mapping[str, Recipe]) -> None:
        """Swap the master recipes (a configuration reload): orders accepted from now on snapshot them.

        A job already accepted, queued or running, keeps the snapshot it was accepted with; changeover costs
        and SPC charts follow the new recipes, and OEE takes the new ideal cycle for parts made from now on.
        """
        self._jobs.set_recipes(recipes)
        self._costs = changeover_costs(recipes, self._config.cell, durations=self._durations)
        self._proposal = None
        self._spc.set_recipes(recipes)
        self._oee.set_ideal(recipes)

    def status(self) -> CellStatus:
        """A snapshot of state, jobs, variant, active changeover and counters."""
        state = self._cell.state
        return CellStatus(
            cell=self._name,
            state=state.label,
            state_no=int(state),
            since=self._cell.since,
            mode=self._cell.mode,
            allowed_commands=tuple(c.label for c in self._cell.allowed_commands()),
            current_job=self._current.view() if self._current else None,
            queue=tuple(j.view() for j in self._jobs.queued),
            variant=self._variant,
            changeover=self._changeover.view() if self._changeover else None,
            counters=self._counters,
            reason=self._reason,
            proposed_order=self._propose(),
            prompts=self._confirmations.pending(),
            qualification=self._qualification.view() if self._qualification else None,
            recovery=self._recovery_view(),
            oee=self._oee.figures(self._clock.wall()),
            alarms=self.alarms.shown(),
            spc=self._spc.summary(self._current.variant if self._current else self._variant),
            store=self._store_status(),
        )

    def _store_status(self) -> dict[str, Any] | None:
        failure = self._store.failure
        if self._store_stats is None and failure is None:
            return None
        figures = dict(self._store_stats()) if self._store_stats is not None else {}
        figures["failing"] = failure.cause if failure is not None else None
        return figures

    async def acknowledge(self, alarm: str, *, by: str) -> CellStatus:
        """A person acknowledges a shown alarm (journaled with who); AlarmError when there is none to ack."""
        await self.alarms.acknowledge(alarm, by=by)
        return self.status()

    @property
    def inhibit(self) -> WriteInhibit:
        """The write inhibit the e-stop shuts (tests and diagnostics read it)."""
        return self._inhibit

    def spc_chart(self, variant: str, characteristic: str) -> ChartData:
        """The control chart of one characteristic of ``variant``; JobError when it has none."""
        return self._spc.chart(variant, characteristic)

    async def confirm(self, step: str, *, evidence: str | None = None, by: str) -> CellStatus:
        """Answer the step waiting for a person (``status().prompts``); ConfirmError, nothing changed, when
        no such step waits or the evidence does not match. The API service journals who answered."""
        confirmation = self._confirmations.answer(step, by=by, evidence=evidence)
        self._log.info("step confirmed by operator", step=step, by=by, kind=confirmation.kind.value)
        return self.status()

    async def reorder(self, job_ids: Sequence[str], *, by: str) -> CellStatus:
        """The operator's order of the queue: exactly ``job_ids``, a permutation of the queued jobs' ids.

        JobError (nothing changed) otherwise. Logged here; the API service journals it as an OperatorAction.
        """
        async with self._lock:
            before = [j.id for j in self._jobs.queued]
            self._jobs.reorder(job_ids)
            self._log.info("queue reordered", by=by, before=before, after=list(job_ids))
        return self.status()

    async def apply_proposal(self, *, by: str) -> CellStatus:
        """Reorder the queue as the scheduler proposes (see ``status().proposed_order``)."""
        async with self._lock:
            proposal = self._propose()
            if proposal is None:
                raise JobError("the scheduler has no proposed order for this queue (see the log)")
            self._jobs.reorder(proposal.job_ids)
            self._log.info(
                "queue reordered as proposed",
                by=by,
                after=list(proposal.job_ids),
                changeover_s=proposal.changeover_s,
                was_s=proposal.queue_changeover_s,
            )
        return self.status()

    async def sign_off(self, *, by: str, note: str = "") -> CellStatus:
        """End the open first-article qualification at once, signed off by ``by`` (journaled with ``note``).

        JobError when no qualification is open or ``by`` may not sign off. A cell held by a failed first
        article stays held: the sign-off accepts the setup, Unhold resumes production.
        """
        async with self._lock:
            gate = self._qualification
            if gate is None:
                raise JobError("no first-article qualification is open: there is nothing to sign off")
            self._authorise_sign_off(by)
            now = self._clock.wall()
            await self._record(gate.event(now, FirstArticleStatus.SIGNED_OFF, by=by, note=note))
            self._qualification = None
            self._log.info(
                "first article signed off", job=gate.job, variant=gate.variant, by=by, passes=gate.passes
            )
            await self._finish_kpi(now, ended_by="sign_off")
        return self.status()

    def _propose(self) -> ProposedOrder | None:
        """The scheduler's order of the queue from the variant it will start from (None if it fails)."""
        queued = self._jobs.queued
        jobs = [
            SchedJob.from_recipe(
                j.id, j.recipe, j.order.quantity, priority=j.order.priority, due_s=j.order.due, seq=j.seq
            )
            for j in queued
        ]
        # The queue starts once the current job is done, so from its variant.
        start = self._current.variant if self._current is not None else self._variant
        # Due dates are absolute: the schedule starts now, and lateness changes as time passes, so with
        # due dates a proposal is reused for at most PROPOSAL_TTL_S.
        now = self._clock.wall()
        epoch = int(now // PROPOSAL_TTL_S) if any(j.due_s is not None for j in jobs) else 0
        key = (start, frozenset(j.job_id for j in jobs), self._durations.version, epoch)
        if self._current is not None:
            now += self._current.remaining * self._current.recipe.ideal_cycle_s
        try:
            if self._proposal is not None and self._proposal[0] == key:
                order, changeover_s = self._proposal[1], self._proposal[2]
            else:
                schedule = propose(start, jobs, self._costs, now)
                order, changeover_s = schedule.order, schedule.changeover_s
                self._proposal = (key, order, changeover_s)
            current_s = evaluate([j.id for j in queued], start, jobs, self._costs).changeover_s
        except (PlanError, JobError) as exc:
            # A status must always answer: the proposal is advice, its failure is logged, not raised.
            self._log.warning("no proposed order", error=str(exc))
            return None
        return ProposedOrder(job_ids=order, changeover_s=changeover_s, queue_changeover_s=current_s)

    @property
    def durations(self) -> StepDurations:
        """The measured step durations the planner and the scheduler use (updated as steps complete)."""
        return self._durations

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback`` with every event once recorded; returns the unsubscribe function."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def wait_for(self, *states: State, timeout: float) -> State:
        """Wait until the cell is in one of ``states``; TimeoutError after ``timeout`` s."""
        return await self._cell.wait_for(*states, timeout=timeout)

    async def shutdown(self, deadline: float) -> None:
        """PackML Stop, then wait up to ``deadline`` s for Stopped; past it, Abort (nothing runs after)."""
        state = self._cell.state
        if state in (State.UNDEFINED, State.STOPPED, State.ABORTED):
            return
        # Already Stopping, Aborting or Clearing refuses Stop: each ends in Stopped or Aborted by itself.
        with contextlib.suppress(InvalidTransition):
            await self._transition(Command.STOP, by="system")
        try:
            await self._cell.wait_for(State.STOPPED, State.ABORTED, timeout=deadline)
        except TimeoutError:
            self._log.error("cell did not stop in time: aborting", deadline_s=deadline)
            with contextlib.suppress(InvalidTransition):  # it reached Stopped or Aborting meanwhile
                await self._transition(Command.ABORT, by="system")

    # --------------------------------------------------------------------------------------------------------
    # Recovery after a restart (see cellctl/engine/recovery.py)

    def _restore(self, recovery: Recovery) -> None:
        """Rebuild the unfinished jobs (same ids, counts, recipe snapshot); note the interrupted changeover.

        The job whose changeover was interrupted (else the one in production) becomes the current job, so it
        runs first. A job whose recipe changed since it was queued is not restored (reported at power-up).
        """
        interrupted = recovery.changeover
        current_id = interrupted.job_id if interrupted is not None else None
        if current_id is None:
            current_id = next((j.job_id for j in recovery.jobs if j.status is JobStatus.STARTED), None)
        restored: list[str] = []
        refused: list[tuple[str, str]] = []
        for saved in sorted(recovery.jobs, key=lambda j: j.seq):
            recipe = self._jobs.recipes.get(saved.variant)
            why = _refusal(saved, recipe)
            if why is not None or recipe is None:
                refused.append((saved.job_id, why or "no recipe"))
                self._refused.append(_refused_event(saved, why or "no recipe", self._clock.wall()))
                continue
            job = _rebuilt(saved, recipe)
            is_current = job.id == current_id and self._current is None
            self._jobs.restore(job, queue=not is_current)
            restored.append(job.id)
            if is_current:
                self._current = job
        if interrupted is not None and self._current is not None and self._current.id == interrupted.job_id:
            self._resume = interrupted
            self._resume_steps = {s.id: s for s in interrupted.steps}
        elif interrupted is not None:
            self._orphan = interrupted  # its job is not restored: the changeover is closed at power-up
        self._recovery = RecoveryView(
            unclean=recovery.unclean,
            last_state=recovery.last_state,
            changeover=interrupted,
            restored_jobs=tuple(restored),
            refused_jobs=tuple(refused),
        )
        self._recovery_text = recovery.describe() if recovery.unclean else ""
        self._log.warning(
            "restored from the journal",
            unclean=recovery.unclean,
            restored=restored,
            refused=[j for j, _ in refused],
            changeover=interrupted.changeover_id if interrupted else None,
        )

    async def _report_recovery(self) -> None:
        """At power-up: journal the jobs not restored, close an orphaned changeover, raise the alarm."""
        for event in self._refused:
            await self._record(event)
            self._log.warning("job not restored", job=event.job, reason=event.reason)
        self._refused.clear()
        orphan, self._orphan = self._orphan, None
        if orphan is not None:
            await self._record(
                self._closing_event(orphan, ChangeoverStatus.ABORTED, "its job was not restored")
            )
        if self._recovery_text:
            self._reason = self._recovery_text
            await self.alarms.raise_alarm(
                RECOVERY_ALARM, severity=Severity.WARNING, message=self._recovery_text, source=ENGINE
            )
            self._log.warning("powered up after an unclean stop", reason=self._recovery_text)

    def _recovery_view(self) -> RecoveryView | None:
        view, resume = self._recovery, self._resume
        if view is None or resume is None:
            return view
        steps = tuple(self._resume_steps.get(s.id, s) for s in resume.steps)
        return dataclasses.replace(view, changeover=dataclasses.replace(resume, steps=steps))

    async def _settle(self, resume: InterruptedChangeover, plan: ChangeoverPlan) -> dict[str, str]:
        """Settle the interrupted changeover's steps against the plan made from the setup read back now.

        A step in doubt that is not in the plan reads back done: recorded DONE (verified) under its old
        changeover id. A step in doubt that is in the plan, or one journaled done whose result no longer
        reads back, is gated: the sequencer reads it back once more and asks before it runs it again.
        """
        planned = {s.id for s in plan.steps}
        gates: dict[str, str] = {}
        for step_id, step in list(self._resume_steps.items()):
            if step.state is StepState.IN_DOUBT and step_id not in planned:
                await self._record(
                    StepEvent(
                        ts=self._clock.wall(),
                        changeover=resume.changeover_id,
                        job=resume.job_id,
                        step=step_id,
                        step_kind=step.kind,
                        device=step.device,
                        status=StepStatus.DONE,
                        detail=VERIFIED,
                    )
                )
                self._log.info("step in doubt verified by read-back", step=step_id)
            elif step.state is StepState.IN_DOUBT:
                gates[step_id] = IN_DOUBT_REASON
            elif step.state is StepState.DONE and step_id in planned:
                gates[step_id] = DONE_DIFFERS_REASON
        return gates

    async def _finish_resume(self, job: Job, status: ChangeoverStatus, reason: str) -> None:
        """Close the interrupted changeover with ``status``; the recovery is settled."""
        resume = self._resume
        if resume is None:
            return
        self._resume, self._resume_steps = None, {}
        if not self.alarms.is_active(RECOVERY_ALARM):
            self._recovery = None  # settled and acknowledged; else the report stays until Reset
        await self._record(self._closing_event(resume, status, reason))
        self._log.info("interrupted changeover closed", changeover=resume.changeover_id, status=status.value)

    async def _drop_resume(self, job: Job, reason: str) -> None:
        """The interrupted changeover's job ended (cancelled, aborted): close that changeover."""
        if self._resume is not None and self._resume.job_id == job.id:
            await self._finish_resume(job, ChangeoverStatus.ABORTED, reason)

    def _closing_event(
        self, changeover: InterruptedChangeover, status: ChangeoverStatus, reason: str
    ) -> ChangeoverEvent:
        return ChangeoverEvent(
            ts=self._clock.wall(),
            changeover=changeover.changeover_id,
            job=changeover.job_id,
            from_variant=changeover.from_variant,
            to_variant=changeover.to_variant,
            status=status,
            steps=tuple(s.id for s in changeover.steps),
            reason=reason,
        )

    # --------------------------------------------------------------------------------------------------------
    # Recording

    async def record(self, event: Event) -> int:
        """Journal a fact from outside the engine (an operator's action, a device's health) through the same
        path as the engine's own: after the deferred facts, and a refusal raises the ``store`` alarm (and is
        retried by the recovery task). StoreError when the store refuses it. The engine's listeners are not
        told: the caller tells its own (the API service does, so a watcher hears an action once)."""
        return await self._record(event, notify=False)

    async def _record(self, event: Event, *, notify: bool = True) -> int:
        try:
            journal_id = await self._sink.record(event)
        except StoreError as exc:
            self._store_down.set()
            if not isinstance(event, AlarmEvent):  # an alarm event the store refuses is deferred, not alarmed
                await self._alarm_store(str(exc))
            raise
        if not isinstance(event, AlarmEvent) and self.alarms.is_active(STORE_ALARM):
            await self.alarms.clear_alarm(STORE_ALARM, message="the store journals facts again")
        if isinstance(event, StepEvent):
            self._track_step(event)
            self._durations.observe(event)
        if notify:
            self._notify(event)
        return journal_id

    async def _alarm_store(self, message: str | None = None) -> None:
        """Raise the store alarm with ``message``, by default while the watch says the store fails (once: an
        active alarm is not raised again)."""
        failure = self._store.failure
        if message is None and failure is not None:
            message = f"the store could not journal {failure.fact}: {failure.error}"
        if message is not None and not self.alarms.is_active(STORE_ALARM):
            self._store_down.set()
            cause = failure.cause if failure is not None else StoreError.cause
            await self.alarms.raise_alarm(
                STORE_ALARM,
                severity=Severity.CRITICAL,
                message=f"store {cause}: {message}; retried by itself, then Unhold",
                source="store",
            )

    async def _recover_store(self) -> None:
        """While the store fails, retry it (interval doubling up to a bound): write the deferred facts, then
        clear the ``store`` alarm, journaled. A held cell stays Held: a person Unholds it."""
        retry = self._config.cell.store.retry
        while True:
            await self._store_down.wait()
            delay = retry.interval_s
            while not await self._store_recovered():
                await asyncio.sleep(delay)
                delay = min(delay * 2, retry.max_interval_s)
            self._store_down.clear()

    async def _store_recovered(self) -> bool:
        """One try: True once the store journals again (the alarm cleared) or nothing is failing."""
        if self._store.failure is None and not self.alarms.is_active(STORE_ALARM):
            return True
        try:
            written = await self._store.retry()
            if not self.alarms.is_active(STORE_ALARM):
                await self._alarm_store()  # the alarm's own record was deferred: show it, clear it next try
            # The clear is itself the record that proves the store works; refused, the alarm stays.
            await self.alarms.clear_alarm(STORE_ALARM, message=STORE_RECOVERED, journaled=True)
        except StoreError as exc:
            self._log.info("store still failing", error=str(exc))
            return False
        self._log.warning("store recovered", deferred_written=written, state=self._cell.state.label)
        return self._store.failure is None

    def _defer_alarm(self, event: AlarmEvent, error: StoreError) -> None:
        """An alarm took effect but the store refused it: journal it later, show it to the listeners now."""
        self._store.defer(event, error)
        self._notify(event)

    async def _report_oee(self) -> None:
        """Record each ended shift's OEE (OeeReport); wakes at least each minute, so a clock step is seen."""
        while True:
            await asyncio.sleep(min(self._oee.seconds_left(self._clock.wall()) + 0.5, 60.0))
            for report in self._oee.ended(self._clock.wall()):
                try:
                    await self._record(report)
                except CellctlError as exc:
                    self._log.error("OEE report not recorded", window=report.window, error=str(exc))

    def _notify(self, event: Event) -> None:
        self._oee.observe(event)
        if isinstance(event, StateChanged):
            self._safety.poke()  # a tripped interlock acts again once the cell runs
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                # A listener is an observer (an API client, the TUI feed): its failure must not stop the cell.
                self._log.exception("event listener failed", listener=repr(listener), kind=event.kind)

    def _track_step(self, event: StepEvent) -> None:
        resumed = self._resume_steps.get(event.step)
        if (
            resumed is not None
            and self._resume is not None
            and event.changeover == self._resume.changeover_id
        ):
            state = StepState.DONE if event.status in (StepStatus.DONE, StepStatus.SKIPPED) else resumed.state
            if event.status is StepStatus.FAILED and event.detail != "cancelled":
                state = StepState.FAILED
            self._resume_steps[event.step] = dataclasses.replace(resumed, state=state, detail=event.detail)
        progress = self._changeover
        if progress is None or event.changeover != progress.id or event.step not in progress.steps:
            return
        progress.steps[event.step] = dataclasses.replace(
            progress.steps[event.step],
            status=event.status.value,
            duration_s=event.duration_s,
            detail=event.detail,
        )
        if event.status is StepStatus.DONE and event.step_kind == OPERATOR_KIND:
            self._operator_done.setdefault((progress.job_id, progress.plan.to_variant), set()).add(event.step)

    # --------------------------------------------------------------------------------------------------------
    # State moves

    async def _transition(self, command: Command, *, by: str) -> None:
        async with self._lock:
            await self._apply(command, by=by)

    async def _apply(self, command: Command, *, by: str) -> None:
        """Apply a command and its consequences; the caller holds the lock."""
        if self._group is None:
            raise CellctlError("the engine is not running: start Engine.run() first")
        current = asyncio.current_task()
        if command is Command.RESET:
            refusal = self._safety.estop_refusal()
            if refusal is not None and self._cell.state in (State.STOPPED, State.COMPLETE):
                raise InterlockTripped(f"reset refused: {refusal}")
        await self._cell.command(command, by=by)  # raises InvalidTransition before anything else
        await self._alarm_store()  # the move took effect, journaled or not
        target = self._cell.state
        if command is Command.RESET:
            self._inhibit.lift()  # the e-stop is released (checked above) and a person reset the cell
        if command in (Command.RESET, Command.UNHOLD, Command.CLEAR):
            await self._clear_alarm(by)
        self._starved = False  # only _starve() marks a suspension as starved, right after its own command
        # The acting state this command interrupted (e.g. Stop during Holding) stops doing its work.
        actor = self._actor
        if actor is not None and actor is not current and not actor.done():
            actor.cancel()
            await asyncio.wait([actor])
        self._actor = None
        if target is State.ABORTING:
            await self._abort_production()
        elif target in (State.HOLDING, State.STOPPING, State.SUSPENDING):
            self._interrupt = target.label.lower()
            control = self._run_control
            if control is not None and self._phase is Phase.CHANGEOVER:
                # The changeover parks (Holding completes once it has); a part is not interruptible.
                control.hold(command.label)
        self._start_actor(target)

    def _start_actor(self, state: State) -> None:
        if not is_acting(state):
            return
        assert self._group is not None
        self._actor = self._group.create_task(self._act(state), name=f"state:{state.label.lower()}")

    async def _act(self, state: State) -> None:
        """Do the work of an acting state, then complete it."""
        # Bind only the cell: the production task started from here inherits this context.
        with structlog.contextvars.bound_contextvars(cell=self._name):
            if state is State.RESETTING:
                if not await self._reset():
                    return
            elif state in (State.HOLDING, State.STOPPING, State.SUSPENDING, State.COMPLETING):
                await self._production_finished()
            async with self._lock:
                if self._cell.state is not state:
                    return  # a command moved the cell on meanwhile
                self._actor = None
                target = completion(state)
                await self._cell.complete(state, by=ENGINE)
                await self._alarm_store()
                if target is State.EXECUTE:
                    self._interrupt = None
                    assert self._group is not None
                    self._worker = self._group.create_task(self._produce(), name="engine:production")
                elif target is State.SUSPENDED and self._starved and len(self._jobs):
                    # A job arrived while the cell was suspending for want of one.
                    await self._apply(Command.UNSUSPEND, by=ENGINE)
                else:
                    self._start_actor(target)

    async def _production_finished(self) -> None:
        worker = self._worker
        if worker is not None:
            await asyncio.wait([worker])

    async def _abort_production(self) -> None:
        """Cancel production at once and wait until it stopped; the job in progress is aborted."""
        self._interrupt = "abort"
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task() and not worker.done():
            worker.cancel()
            await asyncio.wait([worker])
        job = self._current
        if job is not None and not job.finished:
            job.status, job.reason, job.finished_at = JobStatus.ABORTED, "aborted", self._clock.wall()
            self._current = None
            try:
                await self._drop_resume(job, "job aborted")
                await self._record(job.event(self._clock.wall()))
            except StoreError as exc:
                # An abort (the e-stop's too) must complete: the store alarm reports what was not journaled.
                self._log.error("job abort not journaled", job=job.id, error=str(exc))
            self._log.warning("job aborted", job=job.id, produced=job.produced)

    async def _reset(self) -> bool:
        """Read the setup back to learn the current variant; on a device failure stop with the reason."""
        try:
            self._variant = await self._read_variant()
        except (DeviceError, SequenceError) as exc:
            await self._fail(exc, Command.STOP)
            return False
        self._log.info("reset: setup read back", variant=self._variant)
        return True

    async def _read_variant(self) -> str | None:
        recipes = self._jobs.recipes
        current = await read_setup(self._profiles, self._config.cell, recipes)
        for variant in sorted(recipes):
            plan = plan_changeover(current, recipes[variant], self._config.cell, from_variant=None)
            if plan.is_empty:
                return variant
        return None

    async def _fail(self, exc: CellctlError, command: Command) -> None:
        """Record why the cell cannot go on, raise the alarm, and Hold (or Stop) it if still allowed."""
        if self._inhibit.active or self._cell.state in (State.ABORTING, State.ABORTED):
            # An e-stop or Abort is taking the cell down: its refused writes are not a failure to hold on.
            self._log.info("failure while aborting", error=str(exc))
            return
        self._reason = str(exc)
        self._log.error("cell failure", error=self._reason, then=command.label)
        await self.alarms.raise_alarm(
            HOLD_ALARM,
            severity=Severity.CRITICAL,
            message=self._reason,
            source=getattr(exc, "device", None) or getattr(exc, "step", None) or ENGINE,
        )
        # Refused when already on the way to a stop (Holding, Stopping, Aborting): the reason is kept.
        with contextlib.suppress(InvalidTransition):
            await self._transition(command, by=ENGINE)

    async def _clear_alarm(self, by: str) -> None:
        self._reason = ""
        if self.alarms.is_active(RECOVERY_ALARM):
            if self._resume is None:
                self._recovery = None  # nothing left to settle: the report goes with the alarm
            await self.alarms.clear_alarm(RECOVERY_ALARM, by=by, message=f"acknowledged by {by}", ack=True)
        if self._store.failure is None:  # the command's own move was journaled: the store works again
            await self.alarms.clear_alarm(
                STORE_ALARM, by=by, message=f"the store journals again; acknowledged by {by}", ack=True
            )
            shown = self.alarms.get(STORE_ALARM)
            if shown is not None and not shown.active and shown.acked_by is None:
                await self.alarms.acknowledge(STORE_ALARM, by=by)  # recovered by itself: this person saw it
        await self.alarms.clear_alarm(HOLD_ALARM, by=by, message=f"acknowledged by {by}", ack=True)

    async def _safety_command(self, command: Command, reason: str) -> None:
        """An interlock or the e-stop commands the cell; a refused transition changes nothing."""
        with contextlib.suppress(InvalidTransition):
            async with self._lock:
                await self._apply(command, by=SAFETY)
                self._reason = "" if command is Command.UNSUSPEND else reason

    # --------------------------------------------------------------------------------------------------------
    # Production (the Execute state)

    async def _produce(self) -> None:
        """Take jobs and make their parts while the cell is in Execute; suspend when starved."""
        try:
            await self._produce_jobs()
        finally:
            # Steps run ahead live only as long as production: Hold, Stop, Abort and starving end them.
            self._ahead = None
            await self._stager.cancel()

    async def _produce_jobs(self) -> None:
        with structlog.contextvars.bound_contextvars(cell=self._name):
            while self._cell.state is State.EXECUTE:
                job = self._current or self._jobs.pop_next()
                if job is None:
                    await self._starve()
                    return
                self._current = job
                with structlog.contextvars.bound_contextvars(job=job.id):
                    try:
                        await self._run_job(job)
                    except (DeviceError, SequenceError, FirstArticleFailed, SpcHold) as exc:
                        self._phase = Phase.IDLE
                        await self._fail(exc, Command.HOLD)
                        return
                    except StoreError as exc:
                        # What the cell does cannot be journaled: no more parts until it can (Unhold).
                        # A changeover cut here is planned again from read-back, as after any hold.
                        self._phase, self._changeover = Phase.IDLE, None
                        await self._fail(exc, Command.HOLD)
                        return
                    finally:
                        self._phase = Phase.IDLE

    async def _starve(self) -> None:
        self._starved = True
        try:
            await self._transition(Command.SUSPEND, by=ENGINE)
        except InvalidTransition:
            self._starved = False  # a command moved the cell on meanwhile
        else:
            self._starved = self._cell.state in (State.SUSPENDING, State.SUSPENDED)
            self._log.info("no job queued: cell suspended (starved)")

    async def _run_job(self, job: Job) -> None:
        await self._change_over(job)
        if self._cell.state is not State.EXECUTE:
            return
        if job.status is JobStatus.QUEUED:
            job.status, job.started_at = JobStatus.STARTED, self._clock.wall()
            try:
                await self._record(job.event(self._clock.wall()))
            except StoreError:
                job.status, job.started_at = JobStatus.QUEUED, None  # not journaled: started again later
                raise
            self._log.info("job started", variant=job.variant, quantity=job.order.quantity)
        while job.remaining > 0:
            await self._run_ahead(job)
            # Let a command in between parts: soft devices answer without ever yielding to the loop.
            await asyncio.sleep(0)
            if self._cell.state is not State.EXECUTE:
                return
            self._phase = Phase.PART
            part = await self._parts.run(job, job.produced + 1)
            self._phase = Phase.IDLE
            await self._count(job, part)
        job.status, job.finished_at = JobStatus.COMPLETED, self._clock.wall()
        self._current = None
        try:
            await self._record(job.event(self._clock.wall()))
        except StoreError:
            # Not journaled: still the current job, completed again (recorded) on the next Unhold.
            job.status, job.finished_at, self._current = JobStatus.STARTED, None, job
            raise
        self._log.info(
            "job completed", produced=job.produced, good=job.good, bad=job.bad, invalid=job.invalid
        )

    async def _count(self, job: Job, part: PartProduced) -> None:
        gate = self._qualification
        if gate is not None:
            part = dataclasses.replace(part, first_article=True)
        counts, counters = (job.produced, job.good, job.bad, job.invalid), self._counters
        job.count(part.verdict)
        self._counters = self._counters.counted(part.verdict)
        try:
            await self._record(part)
        except StoreError:
            # Not journaled, so not counted and not handed on: after Unhold this index is made again.
            job.produced, job.good, job.bad, job.invalid = counts
            self._counters = counters
            raise
        await self._parts.sort(part)  # only now: the output hands the part on, its record must exist first
        if part.verdict is Verdict.PASS:
            self._last_good = part.ts
            await self._finish_kpi(part.ts, ended_by="part")
        await self._observe_spc(job, part)
        if gate is None or gate is not self._qualification:
            return  # no gate, or signed off while the part was being recorded
        failure = gate.judge(part)
        if failure is not None:
            await self._record(gate.event(self._clock.wall(), FirstArticleStatus.FAILED, part=part.part))
            raise failure
        if gate.passed:
            self._qualification = None
            await self._record(gate.event(self._clock.wall(), FirstArticleStatus.PASSED, part=part.part))
            self._log.info("first article passed", variant=gate.variant, passes=gate.passes)

    async def _observe_spc(self, job: Job, part: PartProduced) -> None:
        """Chart the part; record the alarms; SpcHold when a rule configured to hold fired."""
        outcome = self._spc.observe(part, job.recipe)
        # Through the alarm manager (one home): shown in the status and acknowledged like every alarm.
        for alarm in outcome.alarms:
            if alarm.active:
                self._log.warning("spc rule violated", alarm=alarm.alarm, message=alarm.message)
                await self.alarms.raise_alarm(
                    alarm.alarm, severity=alarm.severity, message=alarm.message, source=alarm.source
                )
            else:
                await self.alarms.clear_alarm(alarm.alarm, message=alarm.message)
        if outcome.hold is not None:
            # Raised before the first-article gate judges this part: the hold wins; the gate stays open.
            raise outcome.hold

    async def _finish_kpi(self, first_good_ts: float, *, ended_by: str) -> None:
        kpi = self._kpi
        if kpi is None:
            return
        fact = kpi.finish(first_good_ts=first_good_ts, now_mono=self._clock.monotonic(), ended_by=ended_by)
        # Taken before the await: a sign-off and a good part recorded at the same time close it once.
        self._kpi = None
        try:
            await self._record(fact)
        except BaseException:
            self._kpi = kpi
            raise
        self._log.info(
            "changeover kpi",
            changeover=kpi.changeover,
            plan=kpi.changeover,
            total_s=fact.total_s,
            internal_s=round(fact.internal_s, 3),
            external_s=round(fact.external_s, 3),
            first_article_s=round(fact.first_article_s, 3),
        )

    async def _run_ahead(self, job: Job) -> None:
        """Start the next job's external steps that may run while ``job`` makes its last part(s).

        Once per (job, next job): when the parts left are no more than the run ahead needs at the recipe's
        ideal cycle time. The plan comes from the setup read back now; a failure to plan only logs (the
        changeover meets it again and reports it).
        """
        queued = self._jobs.queued
        if self._stager.active or self._group is None or not queued:
            return
        following = queued[0]
        key = (job.id, following.id)
        busy = self._parts.devices(job.recipe)
        cell = self._config.cell
        if self._ahead is None or self._ahead[0] != key:
            try:
                guess = plan_changeover(
                    target_setup(job.recipe, cell), following.recipe, cell, from_variant=job.variant
                )
            except SequenceError:
                lead = 0
            else:
                ahead = runnable_ahead(guess, busy)
                lead = 0 if ahead.is_empty else lead_parts(ahead, job.recipe.ideal_cycle_s)
            self._ahead = (key, lead)
        if job.remaining > self._ahead[1]:
            return
        self._ahead = (key, 0)  # started (or found nothing to do): not again for this pair
        recipes: dict[str, Recipe] = {**self._jobs.recipes, following.variant: following.recipe}
        try:
            current = await read_setup(self._profiles, cell, recipes)
            plan = plan_changeover(current, following.recipe, cell, from_variant=job.variant)
        except (DeviceError, SequenceError) as exc:
            self._log.warning("external steps not run ahead", next_job=following.id, error=str(exc))
            return
        ahead = runnable_ahead(plan, busy)
        if ahead.is_empty:
            return
        self._stager.start(self._group, ahead, changeover_id=uuid.uuid4().hex[:12], job_id=following.id)

    async def _take_staged(self, job: Job) -> tuple[StagedRun | None, float]:
        """The steps run ahead for ``job`` once they ended, and how long the changeover waited for them."""
        if not self._stager.active:
            return None, 0.0
        began = self._clock.monotonic()
        staged = await self._stager.take()
        waited = self._clock.monotonic() - began
        if staged is None or staged.job_id != job.id:
            return None, 0.0  # run ahead for a job the queue no longer puts next: the setup read back says it
        return staged, waited

    async def _changed_over(
        self,
        job: Job,
        changeover_id: str,
        internal: ChangeoverPlan,
        durations: Mapping[str, float],
        internal_s: float,
        staged: StagedRun | None,
        waited: float,
    ) -> None:
        """A changeover completed: keep its KPI figures for the first good part and open the first-article
        gate the recipe asks for (replacing any gate of the setup before)."""
        if self._kpi is not None:
            self._log.warning(
                "changeover kpi dropped: no good part before the next changeover",
                dropped=self._kpi.changeover,
            )
        steps = step_kpis(staged.plan, staged.durations, EXTERNAL) if staged else ()
        self._kpi = PendingKpi(
            changeover=changeover_id,
            job=job.id,
            from_variant=internal.from_variant,
            to_variant=job.variant,
            last_good_ts=self._last_good,
            completed_mono=self._clock.monotonic(),
            external_s=staged.actual_s if staged else 0.0,
            external_wait_s=waited,
            internal_s=internal_s,
            planned_external_s=staged.plan.critical_path()[1] if staged else 0.0,
            planned_internal_s=internal.critical_path()[1],
            steps=steps + step_kpis(internal, durations, INTERNAL),
        )
        self._qualification = None
        needed = job.recipe.first_article.parts
        if needed > 0:
            gate = Qualification(
                changeover=changeover_id,
                job=job.id,
                variant=job.variant,
                needed=needed,
                since=self._clock.wall(),
            )
            await self._record(gate.event(self._clock.wall(), FirstArticleStatus.STARTED))
            self._qualification = gate
            self._log.info("first-article qualification started", needed=needed)

    async def _change_over(self, job: Job) -> None:
        """Bring the cell to the job's setup, planned from the setup read back now (empty plan: nothing)."""
        control = RunControl()
        self._phase, self._run_control = Phase.CHANGEOVER, control
        try:
            await self._run_changeover(job, control)
        finally:
            self._run_control = None
            self._cell.plan_running(False)

    async def _run_changeover(self, job: Job, control: RunControl) -> None:
        staged, waited = await self._take_staged(job)
        recipes: dict[str, Recipe] = {**self._jobs.recipes, job.variant: job.recipe}
        current = await read_setup(self._profiles, self._config.cell, recipes)
        key = (job.id, job.variant)
        # Only this job's confirmations count: a person confirms for the changeover in front of them.
        done = self._operator_done.get(key)
        self._operator_done = {} if done is None else {key: done}
        plan = plan_changeover(
            current,
            job.recipe,
            self._config.cell,
            from_variant=self._variant,
            confirmed=frozenset(done or ()),
            resuming=done is not None,
            durations=self._durations,
        )
        if any(s.kind == OPERATOR_KIND for s in plan.steps):
            self._operator_done.setdefault(key, set())
        resume = self._resume if self._resume is not None and self._resume.job_id == job.id else None
        gates = {} if resume is None else await self._settle(resume, plan)
        if plan.is_empty:
            self._operator_done.clear()
            if resume is not None:
                await self._finish_resume(job, ChangeoverStatus.COMPLETED, "every step verified by read-back")
            self._variant = job.variant
            self._phase = Phase.IDLE
            if staged is not None and staged.durations:
                # Everything left to change ran ahead: the changeover is done without stopping the cell.
                await self._changed_over(job, staged.changeover_id, plan, {}, 0.0, staged, waited)
            return
        if control.hold_reason is not None:
            self._phase = Phase.IDLE  # held while the setup was read: nothing started, nothing to record
            return
        path, planned_s = plan.critical_path()
        progress = _Changeover(
            id=(
                resume.changeover_id
                if resume is not None
                else staged.changeover_id
                if staged is not None
                else uuid.uuid4().hex[:12]
            ),
            job_id=job.id,
            plan=plan,
            planned_s=planned_s,
            critical_path=path,
            started_at=self._clock.wall(),
            steps={
                s.id: StepView(
                    id=s.id,
                    kind=s.kind,
                    device=s.device,
                    description=s.description,
                    after=s.after,
                    expected_s=s.expected_s,
                    external=s.external,
                )
                for s in plan.order()
            },
        )
        self._changeover = progress
        self._cell.plan_running(True)  # the unit mode shows Changeover until _change_over ends
        began = self._clock.monotonic()
        resumed = "" if resume is None else "resumed after an unclean stop"
        await self._record(self._changeover_event(progress, ChangeoverStatus.STARTED, reason=resumed))
        try:
            with structlog.contextvars.bound_contextvars(changeover=progress.id, plan=progress.id):
                self._log.info(
                    "changeover started", steps=len(plan.steps), planned_s=planned_s, gated=len(gates)
                )
                result = await self._sequencer.run(
                    plan, changeover_id=progress.id, job_id=job.id, control=control, confirm_first=gates
                )
        except PlanHeld as held:
            # Parked: the cell is on its way to Held, Stopped or Suspended; Unhold plans again from read-back.
            await self._changeover_ended(progress, ChangeoverStatus.FAILED, reason=str(held), began=began)
            self._log.info("changeover held", plan=progress.id, done=list(held.done), cut=list(held.cut))
            return
        except asyncio.CancelledError:
            if self._interrupt is None:
                self._phase, self._changeover = Phase.IDLE, None
            else:
                aborted = self._interrupt == "abort"
                await self._changeover_ended(
                    progress,
                    ChangeoverStatus.ABORTED if aborted else ChangeoverStatus.FAILED,
                    reason=f"cancelled by {self._interrupt}",
                    began=began,
                )
            raise
        except SequenceError as exc:
            await self._changeover_ended(progress, ChangeoverStatus.FAILED, reason=str(exc), began=began)
            raise
        # Done: from here a Hold must not cancel the bookkeeping, so production is no longer interruptible.
        self._phase = Phase.IDLE
        self._changeover = None
        self._operator_done.clear()
        self._variant = job.variant
        duration = self._clock.monotonic() - began
        if resume is not None:
            self._resume, self._resume_steps, self._recovery = None, {}, None
        await self._record(self._changeover_event(progress, ChangeoverStatus.COMPLETED, duration_s=duration))
        self._log.info(
            "changeover completed", plan=progress.id, duration_s=round(duration, 3), planned_s=planned_s
        )
        await self._changed_over(job, progress.id, plan, result.durations, duration, staged, waited)

    async def _changeover_ended(
        self, progress: _Changeover, status: ChangeoverStatus, *, reason: str, began: float
    ) -> None:
        """The run ended before completing: no changeover is active any more; how it ended is recorded."""
        self._phase, self._changeover = Phase.IDLE, None
        duration = self._clock.monotonic() - began
        await self._record(self._changeover_event(progress, status, reason=reason, duration_s=duration))

    def _changeover_event(
        self,
        progress: _Changeover,
        status: ChangeoverStatus,
        *,
        reason: str = "",
        duration_s: float | None = None,
    ) -> ChangeoverEvent:
        return ChangeoverEvent(
            ts=self._clock.wall(),
            changeover=progress.id,
            job=progress.job_id,
            from_variant=progress.plan.from_variant,
            to_variant=progress.plan.to_variant,
            status=status,
            steps=tuple(progress.steps),
            planned_s=progress.planned_s,
            duration_s=duration_s,
            reason=reason,
        )


def _restored_mode(recovery: Recovery | None) -> UnitMode:
    """The unit mode the last run was in: a cell left in maintenance or manual does not come back taking jobs
    (a plan running when it ended, shown as changeover, was production)."""
    name = recovery.mode if recovery is not None else None
    try:
        mode = UnitMode[name.upper()] if name else UnitMode.PRODUCTION
    except KeyError:
        return UnitMode.PRODUCTION
    return UnitMode.PRODUCTION if mode is UnitMode.CHANGEOVER else mode


def _refusal(saved: RecoveredJob, recipe: Recipe | None) -> str | None:
    """Why a job cannot run again from today's recipes (None: it can, the snapshot is identical)."""
    if recipe is None:
        return f"variant {saved.variant!r} is not in the recipes any more; submit the order again"
    now = recipe.snapshot_hash()
    if now != saved.recipe_hash:
        return (
            f"recipe {saved.variant!r} changed since the job was queued (v{saved.recipe_version} "
            f"{saved.recipe_hash[:12]}, now v{recipe.version} {now[:12]}): a job never runs from a different "
            "recipe; submit the order again"
        )
    return None


def _rebuilt(saved: RecoveredJob, recipe: Recipe) -> Job:
    """The job as it was: same id, order, parameters, submit order and counts."""
    order = OrderRequest(
        order_id=saved.order_id,
        variant=saved.variant,
        quantity=saved.quantity,
        parameters=dict(saved.parameters),
        priority=saved.priority,
        due=saved.due,
        part_parameters=tuple(dict(p) for p in saved.part_parameters),
    )
    return Job(
        id=saved.job_id,
        order=order,
        recipe=recipe,
        recipe_hash=saved.recipe_hash,
        parameters=dict(saved.parameters),
        seq=saved.seq,
        submitted_at=saved.submitted_at,
        submitted_by=saved.submitted_by,
        status=saved.status,
        produced=saved.produced,
        good=saved.good,
        bad=saved.bad,
        invalid=saved.invalid,
        started_at=saved.started_at,
        part_parameters=tuple(dict(p) for p in saved.part_parameters),
        order_hash=saved.order_hash,
    )


def _refused_event(saved: RecoveredJob, reason: str, ts: float) -> JobEvent:
    return JobEvent(
        ts=ts,
        job=saved.job_id,
        order_id=saved.order_id,
        variant=saved.variant,
        recipe_version=saved.recipe_version,
        recipe_hash=saved.recipe_hash,
        quantity=saved.quantity,
        status=JobStatus.ABORTED,
        produced=saved.produced,
        good=saved.good,
        bad=saved.bad,
        invalid=saved.invalid,
        parameters=dict(saved.parameters),
        reason=f"not restored after an unclean stop: {reason}",
        priority=saved.priority,
        order_released=True,  # the reason says "submit the order again": the same id must make a new job
    )
