"""Crash recovery: what an unclean stop left behind, read from the journal (the changeover it interrupted,
each of its steps' last outcome, the jobs not finished) so the engine can restart in a safe state.

``recover`` is pure: journal entries in, a frozen ``Recovery`` out. ``read_recovery`` reads only what it needs
through a small reader port (the store): the newest state change, the newest changeover event, the events of
unfinished jobs, and the step events of the job whose changeover was interrupted. None of it grows with the
length of the history: each read is an indexed look-up of the newest rows or of one job's rows.

A step whose STARTED (or WAITING) event has no outcome after it is *in doubt*: the controller may have sent
its command, and nothing says whether the device acted. Such a step is verified by read-back when the
changeover runs again, or run again only after an operator confirmed it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cellctl.core.events import ChangeoverStatus, JobStatus, StepStatus, Verdict

CLEAN_STATES = frozenset({"Stopped", "Aborted"})
"""States an orderly shutdown leaves the journal in; any other newest state means the process was killed."""

_PAGE = 1000


class StepState(StrEnum):
    """What the journal says about one step of the interrupted changeover."""

    DONE = "done"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"
    NOT_STARTED = "not_started"


@dataclass(frozen=True, slots=True)
class RecoveredStep:
    """One step of the interrupted changeover and its last journaled status."""

    id: str
    state: StepState
    kind: str = ""
    device: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "id": self.id,
            "state": self.state.value,
            "kind": self.kind,
            "device": self.device,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class InterruptedChangeover:
    """A changeover whose STARTED was journaled and whose end (completed, failed, aborted) was not, or one
    that failed with steps still in doubt (its job not finished)."""

    changeover_id: str
    job_id: str
    from_variant: str | None
    to_variant: str
    started_at: float
    steps: tuple[RecoveredStep, ...]

    def ids(self, state: StepState) -> tuple[str, ...]:
        """Ids of the steps in ``state``, in plan order."""
        return tuple(s.id for s in self.steps if s.state is state)

    def state_of(self, step_id: str) -> StepState:
        """The journaled state of ``step_id`` (NOT_STARTED for a step the journal never mentions)."""
        for step in self.steps:
            if step.id == step_id:
                return step.state
        return StepState.NOT_STARTED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "changeover_id": self.changeover_id,
            "job_id": self.job_id,
            "from_variant": self.from_variant,
            "to_variant": self.to_variant,
            "started_at": self.started_at,
            "done": list(self.ids(StepState.DONE)),
            "in_doubt": list(self.ids(StepState.IN_DOUBT)),
            "failed": list(self.ids(StepState.FAILED)),
            "not_started": list(self.ids(StepState.NOT_STARTED)),
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    """An unfinished job as the journal knows it: its order, recipe snapshot identity and counts so far."""

    job_id: str
    order_id: str
    variant: str
    recipe_version: int
    recipe_hash: str
    quantity: int
    status: JobStatus
    submitted_at: float
    submitted_by: str
    seq: int
    """Journal id of the job's first event: the submit order."""
    priority: int = 0
    due: float | None = None
    parameters: Mapping[str, float] = field(default_factory=dict)
    produced: int = 0
    good: int = 0
    bad: int = 0
    invalid: int = 0
    started_at: float | None = None
    part_parameters: tuple[Mapping[str, float], ...] = ()
    order_hash: str = ""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the journal says the last run left behind."""

    unclean: bool
    """The last run ended without an orderly stop (newest state not Stopped/Aborted, or a changeover open)."""
    last_state: str | None
    changeover: InterruptedChangeover | None
    jobs: tuple[RecoveredJob, ...]
    """Unfinished jobs in submit order."""
    mode: str | None = None
    """The unit mode of the newest state change (None in a journal without one)."""

    @property
    def empty(self) -> bool:
        """Nothing to restore and nothing to report."""
        return not self.unclean and self.changeover is None and not self.jobs

    def describe(self) -> str:
        """One sentence for the operator: the alarm text after an unclean stop."""
        text = f"recovered from an unclean stop (last state {self.last_state or 'unknown'})"
        co = self.changeover
        if co is not None:
            doubt = co.ids(StepState.IN_DOUBT)
            text += (
                f": changeover {co.changeover_id} of job {co.job_id} ({co.from_variant or 'unknown'} -> "
                f"{co.to_variant}) interrupted with {len(co.ids(StepState.DONE))} step(s) done, "
                f"{len(doubt)} in doubt"
                + (f" ({', '.join(doubt)})" if doubt else "")
                + f", {len(co.ids(StepState.NOT_STARTED))} not started"
            )
        text += f"; {len(self.jobs)} unfinished job(s) in the journal; reset and start to go on"
        return text


class Entry(Protocol):
    """A journal row as the reader returns it (``cellctl.store.JournalEntry``)."""

    @property
    def id(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


class JournalReader(Protocol):
    """The journal reads recovery needs (``cellctl.store.Store`` has them)."""

    async def last_entry(self, kind: str) -> Entry | None: ...
    async def open_job_entries(self) -> Sequence[Entry]: ...
    async def verdict_counts(self, job_id: str, *, after_id: int) -> dict[str, int]: ...
    async def journal(
        self,
        after_id: int = 0,
        limit: int = 1000,
        kinds: Collection[str] | None = None,
        *,
        job_id: str | None = None,
    ) -> Sequence[Entry]: ...


async def read_recovery(reader: JournalReader) -> Recovery:
    """Read what recovery needs from the journal and decide it with ``recover``."""
    last_state = await reader.last_entry("state_changed")
    last_changeover = await reader.last_entry("changeover")
    job_entries = await reader.open_job_entries()
    open_jobs = {str(e.data["job"]) for e in job_entries}
    step_entries: list[Entry] = []
    if last_changeover is not None and _may_be_interrupted(last_changeover, open_jobs):
        job = str(last_changeover.data["job"])
        after = 0
        while True:  # bounded: one job's step events, paged
            page = await reader.journal(after_id=after, limit=_PAGE, kinds={"step"}, job_id=job)
            step_entries.extend(page)
            if len(page) < _PAGE:
                break
            after = page[-1].id
    last_event: dict[str, int] = {}
    for entry in job_entries:
        last_event[str(entry.data["job"])] = entry.id
    parts = {job: await reader.verdict_counts(job, after_id=after_id) for job, after_id in last_event.items()}
    return recover(
        last_state=last_state,
        last_changeover=last_changeover,
        step_entries=step_entries,
        job_entries=job_entries,
        parts_after=parts,
    )


def recover(
    *,
    last_state: Entry | None,
    last_changeover: Entry | None,
    step_entries: Sequence[Entry],
    job_entries: Sequence[Entry],
    parts_after: Mapping[str, Mapping[str, int]],
) -> Recovery:
    """Decide what the last run left behind from the newest state change, the newest changeover event, the
    step events of that changeover's job, the job events of unfinished jobs, and each unfinished job's parts
    journaled after its newest job event (by verdict)."""
    changeover = None
    open_jobs = {str(e.data["job"]) for e in job_entries}
    is_open = last_changeover is not None and last_changeover.data.get("status") == ChangeoverStatus.STARTED
    if last_changeover is not None and _may_be_interrupted(last_changeover, open_jobs):
        changeover = _interrupted(last_changeover, step_entries)
        if not is_open and not changeover.ids(StepState.IN_DOUBT):
            changeover = None  # it failed with every step's outcome known: a plain re-plan will do
    state = None if last_state is None else str(last_state.data.get("state"))
    unclean = is_open or (state is not None and state not in CLEAN_STATES)
    return Recovery(
        unclean=unclean,
        last_state=state,
        changeover=changeover,
        jobs=_jobs(job_entries, parts_after),
        mode=None if last_state is None else str(last_state.data.get("mode") or "") or None,
    )


def _may_be_interrupted(newest: Entry, open_jobs: Collection[str]) -> bool:
    """Open (STARTED), or FAILED for a job still to be done: a resumed changeover that failed or was held in
    the same process leaves its steps in doubt still waiting, and a later kill must not forget them."""
    status = newest.data.get("status")
    if status == ChangeoverStatus.STARTED:
        return True
    return status == ChangeoverStatus.FAILED and str(newest.data.get("job")) in open_jobs


def _interrupted(started: Entry, step_entries: Sequence[Entry]) -> InterruptedChangeover:
    data = started.data
    changeover_id = str(data["changeover"])
    order: dict[str, None] = dict.fromkeys(str(s) for s in data.get("steps") or ())
    last: dict[str, Entry] = {}
    for entry in sorted(step_entries, key=lambda e: e.id):
        if entry.data.get("changeover") != changeover_id:
            continue
        step = str(entry.data["step"])
        order.setdefault(step, None)
        last[step] = entry
    steps: list[RecoveredStep] = []
    for step_id in order:
        newest = last.get(step_id)
        if newest is None:
            steps.append(RecoveredStep(id=step_id, state=StepState.NOT_STARTED))
            continue
        steps.append(
            RecoveredStep(
                id=step_id,
                state=_state(str(newest.data.get("status"))),
                kind=str(newest.data.get("step_kind") or ""),
                device=newest.data.get("device"),
                detail=str(newest.data.get("detail") or ""),
            )
        )
    return InterruptedChangeover(
        changeover_id=changeover_id,
        job_id=str(data["job"]),
        from_variant=data.get("from_variant"),
        to_variant=str(data["to_variant"]),
        started_at=started.ts,
        steps=tuple(steps),
    )


def _state(status: str) -> StepState:
    if status in (StepStatus.DONE, StepStatus.SKIPPED):
        return StepState.DONE
    if status == StepStatus.FAILED:
        return StepState.FAILED
    # STARTED or WAITING, or a status this code does not know: never assume an outcome.
    return StepState.IN_DOUBT


def _jobs(entries: Sequence[Entry], parts_after: Mapping[str, Mapping[str, int]]) -> tuple[RecoveredJob, ...]:
    by_job: dict[str, list[Entry]] = {}
    for entry in sorted(entries, key=lambda e: e.id):
        by_job.setdefault(str(entry.data["job"]), []).append(entry)
    jobs: list[RecoveredJob] = []
    for job_id, events in by_job.items():
        first, newest = events[0], events[-1]
        data = newest.data
        status = JobStatus(str(data["status"]))
        if status not in (JobStatus.QUEUED, JobStatus.STARTED):
            continue
        parts = parts_after.get(job_id, {})
        good, bad, invalid = (
            int(parts.get(v.value, 0)) for v in (Verdict.PASS, Verdict.FAIL, Verdict.INVALID)
        )
        started_at = next((e.ts for e in events if e.data.get("status") == JobStatus.STARTED), None)
        jobs.append(
            RecoveredJob(
                job_id=job_id,
                order_id=str(data["order_id"]),
                variant=str(data["variant"]),
                recipe_version=int(data["recipe_version"]),
                recipe_hash=str(data["recipe_hash"]),
                quantity=int(data["quantity"]),
                status=status,
                submitted_at=first.ts,
                submitted_by=str(first.data.get("by") or "unknown"),
                seq=first.id,
                priority=int(data.get("priority") or 0),
                due=_due(data.get("due")),
                parameters={str(k): float(v) for k, v in (data.get("parameters") or {}).items()},
                produced=int(data.get("produced") or 0) + good + bad + invalid,
                good=int(data.get("good") or 0) + good,
                bad=int(data.get("bad") or 0) + bad,
                invalid=int(data.get("invalid") or 0) + invalid,
                started_at=started_at,
                part_parameters=tuple(
                    {str(k): float(v) for k, v in p.items()} for p in (data.get("part_parameters") or ())
                ),
                order_hash=str(data.get("order_hash") or ""),
            )
        )
    return tuple(jobs)


def _due(value: object) -> float | None:
    # A job journaled before due dates existed has none; a non-number is treated the same, never guessed.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


__all__ = [
    "CLEAN_STATES",
    "InterruptedChangeover",
    "JournalReader",
    "RecoveredJob",
    "RecoveredStep",
    "Recovery",
    "StepState",
    "read_recovery",
    "recover",
]
