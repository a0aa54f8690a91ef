"""The sequencer runs a changeover plan as a ready-set interpreter, parallel where the DAG allows, one step at
a time per device, each step under its timeout with its retries, every outcome recorded.

A run owns one TaskGroup; each running step is a task named ``"step:<id>"``. When a step fails for good the
other running steps are cancelled and recorded as FAILED "cancelled", and the run raises StepFailed or
StepTimeout naming the step.

Two ways to interrupt a run, both ending with every cut step's finalizer (steps.py) run in that step's task
under ``finalizer_deadline_s`` and the outcome in its FAILED detail (``cancelled``, ``cancelled; finalized``,
``cancelled; finalizer cut at N s`` or ``cancelled; finalizer failed: ...``):

- ``RunControl.hold()`` (Hold, Stop, Suspend): no new step starts, running interruptible steps are cancelled,
  non-interruptible ones finish and are recorded as usual; then the run raises PlanHeld (or returns its result
  if every step got done meanwhile). A failure while holding still raises that failure.
- Cancelling the run (Abort): every running step is cancelled at once, their finalizers run (a cancellation
  reaching the run again does not cut them: the TaskGroup waits for its steps), then CancelledError
  propagates. A finalizer past the deadline is cut, logged and recorded, so Abort is never blocked longer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import structlog

from cellctl.core.clock import Clock
from cellctl.core.devices import Profile
from cellctl.core.events import StepEvent, StepStatus
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.core.ports import EventSink
from cellctl.engine.confirm import Confirmation, Confirmations, Prompt, PromptKind
from cellctl.engine.readback import reached
from cellctl.engine.steps import REGISTRY, StepContext, StepHandler, check_plan
from cellctl.errors import (
    CellctlError,
    DeviceError,
    PlanError,
    PlanHeld,
    SequenceError,
    StepFailed,
    StepTimeout,
)

_log = structlog.get_logger(__name__)

CANCELLED = "cancelled"
"""Detail of the FAILED event of a step interrupted by a cancellation (what its finalizer did follows)."""

FINALIZED = f"{CANCELLED}; finalized"
"""Detail of the FAILED event of a cut step whose finalizer completed."""

DEFAULT_FINALIZER_DEADLINE_S = 2.0
"""Seconds a cut step's finalizer may take unless the sequencer is given another bound."""


class RunControl:
    """The caller's handle on one run: ``hold()`` asks it to park (Hold, Stop and Suspend use it).

    Abort is not here: it cancels the task running the plan.
    """

    def __init__(self) -> None:
        self._reason: str | None = None
        self._wake: Callable[[], None] | None = None

    @property
    def hold_reason(self) -> str | None:
        """Why a hold was asked (``"hold"``, ``"stop"``, ``"suspend"``), None while none was."""
        return self._reason

    def hold(self, reason: str = "hold") -> None:
        """Ask the run to park; the first reason sticks. Safe before the run starts and after it ended."""
        if self._reason is None:
            self._reason = reason
        if self._wake is not None:
            self._wake()

    def _bind(self, wake: Callable[[], None]) -> None:
        if self._wake is not None:
            raise SequenceError("a RunControl belongs to one run")
        self._wake = wake


VERIFIED = "verified by read-back after restart"
"""Detail of the DONE event of a step in doubt whose result the devices read back."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """A finished run: each step's duration (s, start to confirmed) and attempts, and the run's wall time."""

    changeover_id: str
    durations: Mapping[str, float]
    attempts: Mapping[str, int]
    total_s: float


class Sequencer:
    """Runs changeover plans on the cell's device profiles, recording each step's outcome through the sink."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        sink: EventSink,
        clock: Clock,
        *,
        registry: Mapping[str, StepHandler] | None = None,
        confirmations: Confirmations | None = None,
        finalizer_deadline_s: float = DEFAULT_FINALIZER_DEADLINE_S,
    ) -> None:
        if not finalizer_deadline_s > 0:
            raise ValueError(f"finalizer_deadline_s must be > 0, not {finalizer_deadline_s!r}")
        self._profiles = profiles
        self._sink = sink
        self._clock = clock
        self._registry: Mapping[str, StepHandler] = REGISTRY if registry is None else registry
        self._confirmations = confirmations
        self._finalizer_deadline_s = finalizer_deadline_s

    async def run(
        self,
        plan: ChangeoverPlan,
        *,
        changeover_id: str,
        job_id: str,
        control: RunControl | None = None,
        confirm_first: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run every step of ``plan``; StepFailed/StepTimeout name the step that failed, PlanError a plan that
        cannot run here (checked before any step starts), PlanHeld a run parked by ``control.hold()``.

        ``confirm_first`` gates steps in doubt after a restart (step id -> what is unknown): such a step is
        first read back; if its result is not there an operator must confirm (IN_DOUBT prompt) before it runs,
        and it is read back once more after the confirmation. A step verified by read-back is recorded DONE
        without being commanded. The wait comes before the step's own timeout starts.
        """
        check_plan(plan, self._profiles, self._registry)
        run = _Run(
            plan=plan,
            changeover_id=changeover_id,
            job_id=job_id,
            profiles=self._profiles,
            registry=self._registry,
            sink=self._sink,
            clock=self._clock,
            confirmations=self._confirmations,
            control=control or RunControl(),
            finalizer_deadline_s=self._finalizer_deadline_s,
            confirm_first=confirm_first or {},
        )
        # `plan` is the key every log line of a changeover carries (the cell, job, plan, step).
        with structlog.contextvars.bound_contextvars(
            changeover=changeover_id, plan=changeover_id, job=job_id
        ):
            return await run.execute()


class _Run:
    """The state of one run of one plan: what is done, what runs, which devices are busy."""

    def __init__(
        self,
        *,
        plan: ChangeoverPlan,
        changeover_id: str,
        job_id: str,
        profiles: Mapping[str, Profile],
        registry: Mapping[str, StepHandler],
        sink: EventSink,
        clock: Clock,
        confirmations: Confirmations | None,
        control: RunControl,
        finalizer_deadline_s: float,
        confirm_first: Mapping[str, str],
    ) -> None:
        self.plan = plan
        self.profiles = profiles
        self.confirm_first = confirm_first
        self.changeover_id = changeover_id
        self.job_id = job_id
        self.confirmations = confirmations
        self.context = (
            StepContext(profiles) if confirmations is None else StepContext(profiles, ask=self._ask)
        )
        self.confirmed: dict[str, Confirmation] = {}
        self.registry = registry
        self.sink = sink
        self.clock = clock
        self.log = _log.bind(changeover=changeover_id, job=job_id)
        self.done: set[str] = set()
        self.started: set[str] = set()
        self.running: set[str] = set()
        self.busy_devices: set[str] = set()
        self.durations: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        self.failures: list[BaseException] = []
        self.progress = asyncio.Event()
        self.control = control
        self.finalizer_deadline_s = finalizer_deadline_s
        self.by_id = {s.id: s for s in plan.steps}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.held: list[str] = []
        self.acting: set[str] = set()
        """Running steps past their gate (if any): commanding their device, not waiting for a person."""
        """Running steps a hold cancelled, in the order it cancelled them."""
        control._bind(self.progress.set)

    async def execute(self) -> RunResult:
        began = self.clock.monotonic()
        self.log.info("changeover run started", steps=len(self.plan.steps))
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                while len(self.done) < len(self.plan.steps):
                    # After a failure nothing new starts, and this body waits for the group to cancel it: an
                    # early normal exit would let the group's own cancel request outlive it (Python 3.11).
                    if not self.failures:
                        if self.control.hold_reason is not None:
                            self._hold()
                            if not self.running:
                                break  # parked: what was not interruptible finished, the rest was cut
                        else:
                            self._start_ready(group)
                            if not self.running:
                                # A validated DAG has a ready step while any is left: this guards a bug.
                                left = [s.id for s in self.plan.steps if s.id not in self.done]
                                raise SequenceError(
                                    f"no step can start, yet steps are left: {', '.join(left)}"
                                )
                    self.progress.clear()
                    await self.progress.wait()
        except BaseExceptionGroup as errors:
            failure = self._pick(errors)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # The run itself was cancelled while a step failed: the cancellation wins, never swallowed.
            raise asyncio.CancelledError
        if failure is not None:
            self.log.warning("changeover run failed", error=str(failure))
            raise failure
        if len(self.done) < len(self.plan.steps):
            left = [s.id for s in self.plan.steps if s.id not in self.done]
            self.log.info("changeover run held", reason=self.control.hold_reason, cut=self.held, left=left)
            raise PlanHeld(
                f"changeover {self.changeover_id} held by {self.control.hold_reason}: "
                f"{len(self.done)} of {len(self.plan.steps)} steps done",
                done=tuple(s.id for s in self.plan.steps if s.id in self.done),
                cut=tuple(self.held),
            )
        total = self.clock.monotonic() - began
        self.log.info("changeover run completed", duration_s=round(total, 3))
        return RunResult(
            changeover_id=self.changeover_id,
            durations=dict(self.durations),
            attempts=dict(self.attempts),
            total_s=total,
        )

    def _hold(self) -> None:
        """Cancel the running interruptible steps (once each); the others are left to finish."""
        for step_id in sorted(self.running):
            step = self.by_id[step_id]
            task = self.tasks.get(step_id)
            # A step still in its gate waits for a person and has commanded nothing: a hold cuts it too.
            cuttable = step.interruptible or step_id not in self.acting
            if cuttable and step_id not in self.held and task is not None:
                self.held.append(step_id)
                task.cancel()

    def _start_ready(self, group: asyncio.TaskGroup) -> None:
        for step in self.plan.ready(self.done, self.started):
            if step.device is not None and step.device in self.busy_devices:
                continue  # a device does one thing at a time; the step starts when the device is free
            self.started.add(step.id)
            self.running.add(step.id)
            if step.device is not None:
                self.busy_devices.add(step.device)
            task = group.create_task(self._step(step), name=f"step:{step.id}")
            self.tasks[step.id] = task
            # A task cancelled before its first turn never enters _step's finally: forget it here as well.
            task.add_done_callback(partial(self._forgotten, step))

    def _forgotten(self, step: PlanStep, _task: asyncio.Task[None]) -> None:
        self._forget(step)

    def _forget(self, step: PlanStep) -> None:
        """The step no longer runs: free its device and wake the run loop (once per step)."""
        self.acting.discard(step.id)
        if self.tasks.pop(step.id, None) is None:
            return  # forgotten already; its device may be another step's by now
        self.running.discard(step.id)
        if step.device is not None:
            self.busy_devices.discard(step.device)
        self.progress.set()

    def _pick(self, errors: BaseExceptionGroup[BaseException]) -> BaseException:
        """The one error to raise for a failed run: the first step failure, unless a bug hides among them."""
        flat = _flatten(errors)
        if len(flat) == 1:
            return flat[0]
        if any(not isinstance(e, CellctlError) for e in flat):
            return errors  # bugs propagate, all of them
        for first in self.failures:
            if any(first is e for e in flat):
                return first
        return flat[0]

    async def _record(
        self, step: PlanStep, status: StepStatus, *, detail: str = "", duration_s: float | None = None
    ) -> None:
        await self.sink.record(
            StepEvent(
                ts=self.clock.wall(),
                changeover=self.changeover_id,
                job=self.job_id,
                step=step.id,
                step_kind=step.kind,
                device=step.device,
                status=status,
                detail=detail,
                duration_s=duration_s,
            )
        )

    async def _step(self, step: PlanStep) -> None:
        # The task runs in its own copy of the context, so this binding stays with this step.
        structlog.contextvars.bind_contextvars(step=step.id, device=step.device)
        log = self.log.bind(step=step.id, device=step.device, kind=step.kind)
        handler = self.registry[step.kind]
        began = self.clock.monotonic()
        started = False
        try:
            reason = self.confirm_first.get(step.id)
            if reason is not None and await self._gate(step, reason, log):
                self.durations[step.id] = 0.0
                self.attempts[step.id] = 0
                self.done.add(step.id)
                return
            began = self.clock.monotonic()  # the operator's wait is not the step's time
            started = True
            self.acting.add(step.id)
            await self._record(step, StepStatus.STARTED)
            log.info("step started", description=step.description)
            await self._attempts(step, handler, log)
        except asyncio.CancelledError:
            log.warning("step cancelled")
            if not started:
                raise  # a gated step cancelled while it waits stays in doubt: nothing recorded or undone
            # The cancellation is answered here by finalizing, and raised again below. While the task still
            # counts it as cancelling, drivers refuse every request (raise_if_cancelling): clear the count.
            task = asyncio.current_task()
            while task is not None and task.uncancel() > 0:
                pass
            # Recorded even when a second cancellation of this task (Abort during a Hold) cuts the finalizer.
            detail = f"{CANCELLED}; finalizer cut by a cancellation"
            try:
                detail = await self._finalize(step, handler, log)
            finally:
                await self._record(step, StepStatus.FAILED, detail=detail)
            raise
        except Exception as exc:
            self.failures.append(exc)
            detail = _detail(step, exc)
            log.error("step failed", error=detail)
            if started:  # a gated step that never started keeps its journaled doubt
                await self._record(step, StepStatus.FAILED, detail=detail)
            raise
        else:
            duration = self.clock.monotonic() - began
            confirmed = self.confirmed.get(step.id)
            detail = "" if confirmed is None else _confirmed_by(confirmed)
            await self._record(step, StepStatus.DONE, detail=detail, duration_s=duration)
            log.info("step done", duration_s=round(duration, 3), attempts=self.attempts[step.id])
            self.durations[step.id] = duration
            self.done.add(step.id)
        finally:
            self._forget(step)

    async def _finalize(
        self, step: PlanStep, handler: StepHandler, log: structlog.typing.FilteringBoundLogger
    ) -> str:
        """Run the cut step's finalizer under the deadline; the FAILED detail that says how it went.

        Runs in the cancelled step task after its CancelledError was caught, so the cancellation that cut the
        step does not cut this; only the deadline (or a second cancellation of this very task) does.
        """
        if handler.finalize is None:
            return CANCELLED
        deadline = self.finalizer_deadline_s
        try:
            async with asyncio.timeout(deadline):
                await handler.finalize(step, self.context)
        except TimeoutError:
            log.error("step finalizer cut at its deadline", deadline_s=deadline)
            return f"{CANCELLED}; finalizer cut at {deadline:g} s"
        except Exception as exc:
            # A finalizer that fails must not keep the others (or an Abort) from going on: said and recorded.
            log.exception("step finalizer failed", error=str(exc))
            return f"{CANCELLED}; finalizer failed: {_detail(step, exc)}"
        log.info("step finalized")
        return FINALIZED

    async def _gate(self, step: PlanStep, reason: str, log: structlog.typing.FilteringBoundLogger) -> bool:
        """Settle a step in doubt: True when its result reads back (recorded DONE), else False once an
        operator confirmed that it may run again."""
        if await self._reads_back(step, log):
            await self._record(step, StepStatus.DONE, detail=VERIFIED)
            log.info("step in doubt verified by read-back")
            return True
        if self.confirmations is None:
            raise PlanError(f"step {step.id!r} is in doubt ({reason}) and this run has nobody to ask")
        instruction = (
            f"{step.description}: {reason}; the devices do not read back its result. Check the equipment, "
            "then confirm to run this step again"
        )
        confirmation = await self._ask(step, PromptKind.IN_DOUBT, instruction=instruction)
        if await self._reads_back(step, log):
            detail = f"{VERIFIED} ({_confirmed_by(confirmation)}; not run again)"
            await self._record(step, StepStatus.DONE, detail=detail)
            self.confirmed.pop(step.id, None)
            log.info("step in doubt verified by read-back after the confirmation")
            return True
        return False

    async def _reads_back(self, step: PlanStep, log: structlog.typing.FilteringBoundLogger) -> bool:
        try:
            return await reached(step, self.profiles)
        except DeviceError as exc:
            # An unreadable device cannot verify anything: the operator is asked instead.
            log.warning("step read-back failed", error=str(exc))
            return False

    async def _ask(self, step: PlanStep, kind: PromptKind, *, instruction: str | None = None) -> Confirmation:
        """Show the step's prompt and wait for an accepted answer; the wait is recorded as WAITING."""
        assert self.confirmations is not None
        in_doubt = kind is PromptKind.IN_DOUBT and instruction is not None
        instruction = instruction or step.instruction or step.description
        await self._record(step, StepStatus.WAITING, detail=instruction)
        self.log.info("step waits for the operator", step=step.id, kind=kind.value, instruction=instruction)
        prompt = Prompt(
            changeover=self.changeover_id,
            step=step.id,
            device=step.device,
            kind=kind,
            instruction=instruction,
            evidence=None if in_doubt else step.evidence,
            since=self.clock.wall(),
        )
        expected = None if in_doubt else step.expected_evidence
        confirmation = await self.confirmations.ask(prompt, expected=expected)
        self.confirmed[step.id] = confirmation
        self.log.info("step confirmed", step=step.id, by=confirmation.by, evidence=confirmation.evidence)
        return confirmation

    async def _attempts(
        self, step: PlanStep, handler: StepHandler, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        """Run the handler under the step's timeout; retry device failures and timeouts ``retries`` times."""
        tries = step.retries + 1
        for attempt in range(1, tries + 1):
            self.attempts[step.id] = attempt
            scope = asyncio.timeout(step.timeout_s)
            error: StepFailed
            try:
                async with scope:
                    await handler.run(step, self.context)
            except TimeoutError as exc:
                if not scope.expired():
                    raise  # a TimeoutError the handler let escape is a bug in that handler
                error = StepTimeout(
                    step.id, f"did not finish within {step.timeout_s:g} s" + _of(attempt, tries)
                )
                cause: BaseException | None = exc
            except DeviceError as exc:
                error = StepFailed(step.id, f"{exc}{_of(attempt, tries)}")
                cause = exc
            else:
                return
            if attempt == tries:
                raise error from cause
            log.warning("step attempt failed, retrying", attempt=attempt, tries=tries, error=str(error))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _detail(step: PlanStep, exc: Exception) -> str:
    if not isinstance(exc, CellctlError):
        return f"{type(exc).__name__}: {exc}"
    text = str(exc)
    prefix = f"step {step.id!r}: "
    return text.removeprefix(prefix) if isinstance(exc, StepFailed) else text


def _confirmed_by(confirmation: Confirmation) -> str:
    text = f"confirmed by {confirmation.by}"
    return text if confirmation.evidence is None else f"{text} (evidence {confirmation.evidence!r})"


def _of(attempt: int, tries: int) -> str:
    return f" (attempt {attempt} of {tries})" if tries > 1 else ""


def _flatten(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    flat: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            flat.extend(_flatten(exc))
        else:
            flat.append(exc)
    return flat


__all__ = [
    "CANCELLED",
    "DEFAULT_FINALIZER_DEADLINE_S",
    "FINALIZED",
    "VERIFIED",
    "RunControl",
    "RunResult",
    "Sequencer",
]
