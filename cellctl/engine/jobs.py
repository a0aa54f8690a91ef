"""Orders and the job queue, parameter validation against the recipe, and the per-part production cycle.

A job runs from the recipe snapshot (content, version, hash) taken when it was submitted, so reloading or
editing a recipe never changes a job already accepted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from cellctl.core.clock import Clock
from cellctl.core.devices import Gauge, Press, Profile, Robot
from cellctl.core.events import JobEvent, JobStatus, Measurement, PartProduced, Verdict
from cellctl.core.ports import OrderRecord
from cellctl.core.quality import judge, part_verdict
from cellctl.core.tags import Reading
from cellctl.errors import DeviceError, JobError
from cellctl.schema.cell import CellConfig
from cellctl.schema.recipe import Recipe

log = structlog.get_logger(__name__)

MAX_QUANTITY = 1_000_000
MAX_ORDER_ID = 128


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order as a client sends it: which variant, how many, customer parameters, and how urgent.

    Higher ``priority`` runs first; equal priorities run in submit order. ``due`` (epoch seconds) is when the
    order should be finished: the scheduler's proposed order honours it within a priority class.
    ``part_parameters`` (batch size one): one parameter set per part, ``quantity`` of them; each overrides
    ``parameters`` for its part.
    """

    order_id: str
    variant: str
    quantity: int
    parameters: Mapping[str, float] = field(default_factory=dict)
    priority: int = 0
    due: float | None = None
    part_parameters: Sequence[Mapping[str, float]] = ()

    def content(self) -> tuple[object, ...]:
        """What makes two submissions of one order id the same order."""
        params = _sorted_params(self.parameters)
        content: tuple[object, ...] = (
            self.variant,
            self.quantity,
            params,
            self.priority,
            _as_float(self.due),
        )
        if self.part_parameters:
            # Only orders that carry per-part sets add them, so older orders keep their content (and hash).
            content += (tuple(_sorted_params(p) for p in self.part_parameters),)
        return content

    def content_hash(self) -> str:
        """A stable digest of ``content()``: the store compares it when an order id comes again."""
        text = json.dumps(self.content(), separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _sorted_params(params: Mapping[str, object]) -> tuple[tuple[str, object], ...]:
    return tuple(sorted((str(k), _as_float(v)) for k, v in params.items()))


def _as_float(value: object) -> object:
    # Keep NaN comparable to itself so a retried (invalid) request is recognised as the same content.
    if isinstance(value, int | float) and not isinstance(value, bool):
        as_float = float(value)
        return "nan" if math.isnan(as_float) else as_float
    return value


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the API and the TUI see it."""

    job_id: str
    order_id: str
    variant: str
    recipe_version: int
    recipe_hash: str
    quantity: int
    priority: int
    parameters: Mapping[str, float]
    status: JobStatus
    produced: int
    good: int
    bad: int
    invalid: int
    submitted_at: float
    submitted_by: str
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    due: float | None = None
    part_parameters: tuple[Mapping[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["parameters"] = dict(self.parameters)
        data["part_parameters"] = [dict(p) for p in self.part_parameters]
        return data

    @classmethod
    def from_record(cls, record: OrderRecord) -> JobView:
        """The job as the store last recorded it (a job finished before a restart is not in memory)."""
        data = record.last_data

        def number(key: str) -> int:
            value = data.get(key)
            return int(value) if isinstance(value, int | float) else 0

        status = JobStatus(str(data.get("status", JobStatus.QUEUED.value)))
        due = data.get("due")
        return cls(
            job_id=record.job_id,
            order_id=record.order_id,
            variant=str(data.get("variant", "")),
            recipe_version=number("recipe_version"),
            recipe_hash=str(data.get("recipe_hash", "")),
            quantity=number("quantity"),
            priority=number("priority"),
            parameters={str(k): float(v) for k, v in (data.get("parameters") or {}).items()},
            status=status,
            produced=number("produced"),
            good=number("good"),
            bad=number("bad"),
            invalid=number("invalid"),
            submitted_at=record.submitted_at,
            submitted_by=record.submitted_by,
            finished_at=record.last_ts if status in _FINISHED else None,
            reason=str(data.get("reason") or ""),
            due=float(due) if isinstance(due, int | float) and not isinstance(due, bool) else None,
            part_parameters=tuple(
                {str(k): float(v) for k, v in p.items()} for p in (data.get("part_parameters") or ())
            ),
        )


_FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.ABORTED, JobStatus.CANCELLED})


def existing_job(order: OrderRequest, record: OrderRecord) -> JobView:
    """The job an order id already made, when ``order`` has its content; JobError (naming it) otherwise."""
    if not record.content_hash:
        raise JobError(
            f"order {order.order_id!r}: already accepted as job {record.job_id} before the store kept order "
            "content, so a repeat cannot be told from a change: use a new order id"
        )
    if record.content_hash != order.content_hash():
        raise JobError(
            f"order {order.order_id!r}: already accepted as job {record.job_id} with different content "
            f"(now {_describe(order)})"
        )
    return JobView.from_record(record)


@dataclass(slots=True)
class Job:
    """An accepted order with its frozen recipe snapshot and its counters; owned by the engine."""

    id: str
    order: OrderRequest
    recipe: Recipe
    recipe_hash: str
    parameters: dict[str, float]
    seq: int
    submitted_at: float
    submitted_by: str
    status: JobStatus = JobStatus.QUEUED
    produced: int = 0
    good: int = 0
    bad: int = 0
    invalid: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    part_parameters: tuple[dict[str, float], ...] = ()
    """One resolved parameter set per part (batch size one); empty: every part uses ``parameters``."""
    order_hash: str = ""
    """``order.content_hash()`` as accepted; the store keeps it to recognise the order id again."""

    @property
    def variant(self) -> str:
        """The variant this job makes."""
        return self.recipe.variant

    @property
    def remaining(self) -> int:
        """Parts still to make."""
        return self.order.quantity - self.produced

    @property
    def finished(self) -> bool:
        """True once the job can change no more."""
        return self.status in (JobStatus.COMPLETED, JobStatus.ABORTED, JobStatus.CANCELLED)

    def count(self, verdict: Verdict) -> None:
        """Count one produced part with its verdict."""
        self.produced += 1
        if verdict is Verdict.PASS:
            self.good += 1
        elif verdict is Verdict.FAIL:
            self.bad += 1
        else:
            self.invalid += 1

    def parameters_for(self, index: int) -> dict[str, float]:
        """The parameters of part ``index`` (1-based): its own set for batch size one, else the job's."""
        if self.part_parameters:
            return self.part_parameters[index - 1]
        return self.parameters

    def view(self) -> JobView:
        """A frozen snapshot for clients."""
        return JobView(
            job_id=self.id,
            order_id=self.order.order_id,
            variant=self.variant,
            recipe_version=self.recipe.version,
            recipe_hash=self.recipe_hash,
            quantity=self.order.quantity,
            priority=self.order.priority,
            parameters=dict(self.parameters),
            status=self.status,
            produced=self.produced,
            good=self.good,
            bad=self.bad,
            invalid=self.invalid,
            submitted_at=self.submitted_at,
            submitted_by=self.submitted_by,
            started_at=self.started_at,
            finished_at=self.finished_at,
            reason=self.reason,
            due=self.order.due,
            part_parameters=tuple(dict(p) for p in self.part_parameters),
        )

    def event(self, ts: float, *, by: str = "engine") -> JobEvent:
        """The job's current status as a recorded fact."""
        return JobEvent(
            ts=ts,
            job=self.id,
            order_id=self.order.order_id,
            variant=self.variant,
            recipe_version=self.recipe.version,
            recipe_hash=self.recipe_hash,
            quantity=self.order.quantity,
            status=self.status,
            produced=self.produced,
            good=self.good,
            bad=self.bad,
            invalid=self.invalid,
            parameters=dict(self.parameters),
            by=by,
            reason=self.reason,
            due=self.order.due,
            priority=self.order.priority,
            part_parameters=[dict(p) for p in self.part_parameters],
            order_hash=self.order_hash,
        )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def resolve_parameters(order: OrderRequest, recipe: Recipe) -> dict[str, float]:
    """The order's parameters checked against the recipe's ranges, with the defaults filled in.

    Raises JobError naming every unknown parameter and every value that is not a finite number in range.
    """
    issues = _parameter_issues(order.parameters, recipe, "parameters")
    if issues:
        raise JobError(f"order {order.order_id!r}: " + "; ".join(issues))
    resolved = {name: float(spec.default) for name, spec in recipe.parameters.items()}
    resolved.update({name: float(value) for name, value in order.parameters.items()})
    return resolved


def resolve_part_parameters(
    order: OrderRequest, recipe: Recipe, base: Mapping[str, float]
) -> tuple[dict[str, float], ...]:
    """One resolved set per part (``base`` with the part's own values), checked like ``parameters``.

    JobError naming every bad part and value, or a count that is not ``quantity``; () when the order has none.
    """
    sets = list(order.part_parameters)
    if not sets:
        return ()
    issues: list[str] = []
    if len(sets) != order.quantity:
        issues.append(
            f"part_parameters: {len(sets)} parameter sets for a quantity of {order.quantity} "
            "(batch size one needs exactly one set per part)"
        )
    for k, values in enumerate(sets):
        issues.extend(_parameter_issues(values, recipe, f"part_parameters[{k}]"))
    if issues:
        raise JobError(f"order {order.order_id!r}: " + "; ".join(issues))
    return tuple({**base, **{name: float(v) for name, v in values.items()}} for values in sets)


def _parameter_issues(values: Mapping[str, object], recipe: Recipe, path: str) -> list[str]:
    issues: list[str] = []
    where = f"recipe {recipe.variant} v{recipe.version}"
    if not isinstance(values, Mapping):
        return [f"{path}: {values!r} is not a mapping of parameter names to numbers"]
    for name, raw in values.items():
        spec = recipe.parameters.get(name)
        if spec is None:
            known = ", ".join(sorted(recipe.parameters)) or "none"
            issues.append(f"{path}.{name}: unknown parameter of {where} (known: {known})")
            continue
        value = _number(raw)
        if value is None or not math.isfinite(value):
            issues.append(f"{path}.{name}: {raw!r} is not a finite number")
            continue
        if not spec.min <= value <= spec.max:
            units = f" {spec.units}" if spec.units else ""
            issues.append(
                f"{path}.{name}: {value:g} is outside [{spec.min:g}, {spec.max:g}]{units} of {where}"
            )
    return issues


def _check_request(order: OrderRequest, recipes: Mapping[str, Recipe]) -> Recipe:
    issues: list[str] = []
    oid = order.order_id
    if (
        not isinstance(oid, str)
        or not oid
        or len(oid) > MAX_ORDER_ID
        or not oid.isprintable()
        or oid != oid.strip()
    ):
        issues.append(f"order_id: {oid!r} must be 1-{MAX_ORDER_ID} printable characters without outer blanks")
    quantity = order.quantity
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
        issues.append(f"quantity: {quantity!r} must be a whole number from 1 to {MAX_QUANTITY}")
    if isinstance(order.priority, bool) or not isinstance(order.priority, int):
        issues.append(f"priority: {order.priority!r} must be a whole number")
    due = order.due
    if due is not None and (
        isinstance(due, bool) or not isinstance(due, int | float) or not math.isfinite(due) or due < 0
    ):
        issues.append(f"due: {due!r} must be a time in epoch seconds (a finite number >= 0)")
    recipe = recipes.get(order.variant)
    if recipe is None:
        known = ", ".join(sorted(recipes)) or "none"
        issues.append(f"variant: unknown variant {order.variant!r} (known: {known})")
    if issues:
        raise JobError(f"order {oid!r}: " + "; ".join(issues))
    assert recipe is not None
    return recipe


def _new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class JobQueue:
    """Every job the engine accepted, by id and by order id, and the queue of those waiting to run."""

    def __init__(self, recipes: Mapping[str, Recipe], *, new_id: Callable[[], str] = _new_job_id) -> None:
        self._recipes: dict[str, Recipe] = dict(recipes)
        self._new_id = new_id
        self._jobs: dict[str, Job] = {}
        self._by_order: dict[str, Job] = {}
        self._queued: list[Job] = []
        self._seq = 0

    @property
    def recipes(self) -> Mapping[str, Recipe]:
        """Master recipes new orders are checked against and snapshot from."""
        return self._recipes

    def set_recipes(self, recipes: Mapping[str, Recipe]) -> None:
        """Replace the master recipes; jobs already accepted keep their snapshot."""
        self._recipes = dict(recipes)

    def submit(self, order: OrderRequest, *, by: str, now: float) -> tuple[Job, bool]:
        """Accept an order, or return the job it already made; True when the job is new.

        The same order id with the same content is the existing job (a retried request); with different
        content it is a JobError. Nothing is changed when the order is refused.
        """
        existing = self._by_order.get(order.order_id)
        if existing is not None:
            # A job restored from the journal keeps its accepted hash; its rebuilt order may differ in form.
            same = (
                existing.order_hash == order.content_hash()
                if existing.order_hash
                else existing.order.content() == order.content()
            )
            if same:
                return existing, False
            raise JobError(
                f"order {order.order_id!r}: already accepted as job {existing.id} with different content "
                f"({_describe(existing.order)}; now {_describe(order)})"
            )
        recipe = _check_request(order, self._recipes)
        parameters = resolve_parameters(order, recipe)
        per_part = resolve_part_parameters(order, recipe, parameters)
        self._seq += 1
        job = Job(
            id=self._new_id(),
            order=dataclasses.replace(
                order,
                parameters=dict(order.parameters),
                part_parameters=tuple(dict(p) for p in order.part_parameters),
            ),
            recipe=recipe,
            recipe_hash=recipe.snapshot_hash(),
            parameters=parameters,
            seq=self._seq,
            submitted_at=now,
            submitted_by=by,
            part_parameters=per_part,
            order_hash=order.content_hash(),
        )
        self._jobs[job.id] = job
        self._by_order[order.order_id] = job
        # By priority, after the jobs of equal priority: before the first job of lower priority.
        at = next(
            (k for k, queued in enumerate(self._queued) if queued.order.priority < order.priority),
            len(self._queued),
        )
        self._queued.insert(at, job)
        return job, True

    def restore(self, job: Job, *, queue: bool = True) -> None:
        """Take back a job rebuilt from the journal after a restart, with its id and seq; a QUEUED one joins
        the queue by priority unless ``queue`` is False (the engine runs it first). JobError (nothing
        changed) when its id or order id is taken."""
        if job.id in self._jobs or job.order.order_id in self._by_order:
            raise JobError(f"job {job.id!r} (order {job.order.order_id!r}) is already known")
        self._jobs[job.id] = job
        self._by_order[job.order.order_id] = job
        self._seq = max(self._seq, job.seq)
        if queue and job.status is JobStatus.QUEUED:
            at = next(
                (k for k, queued in enumerate(self._queued) if queued.order.priority < job.order.priority),
                len(self._queued),
            )
            self._queued.insert(at, job)

    def find(self, order_id: str) -> Job | None:
        """The job this order id made in this run (or restored), None when there is none."""
        return self._by_order.get(order_id)

    @property
    def queued(self) -> list[Job]:
        """Jobs waiting to run, in the order they will run."""
        return list(self._queued)

    def pop_next(self) -> Job | None:
        """Take the next job to run (the head of the queue), or None when none waits."""
        if not self._queued:
            return None
        return self._queued.pop(0)

    def reorder(self, job_ids: Sequence[str]) -> None:
        """Make the queue's order exactly ``job_ids``; JobError (nothing changed) unless it is a permutation
        of the queued jobs' ids."""
        index = {job.id: job for job in self._queued}
        ids = list(job_ids)
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        missing = [i for i in index if i not in ids]
        unknown = [i for i in dict.fromkeys(ids) if i not in index]
        if duplicates or missing or unknown:
            problems = []
            if unknown:
                problems.append(f"not queued: {', '.join(unknown)}")
            if missing:
                problems.append(f"missing: {', '.join(missing)}")
            if duplicates:
                problems.append(f"repeated: {', '.join(duplicates)}")
            raise JobError(
                "the new order must list every queued job exactly once ("
                + "; ".join(problems)
                + f"; queued: {', '.join(index) or 'none'})"
            )
        self._queued = [index[i] for i in ids]

    def get(self, job_id: str) -> Job:
        """The job with this id; JobError when there is none."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobError(f"no job {job_id!r}") from None

    def cancel(self, job_id: str, *, reason: str) -> Job:
        """Cancel a queued job; JobError when the job is unknown or not queued."""
        job = self.get(job_id)
        if job not in self._queued:
            raise JobError(f"job {job_id!r} is {job.status.value}, not queued: it cannot be cancelled here")
        self._queued.remove(job)
        job.status = JobStatus.CANCELLED
        job.reason = reason
        return job

    def withdraw(self, job: Job) -> None:
        """Forget a job just submitted whose acceptance could not be recorded (nothing half-applied)."""
        if job in self._queued:
            self._queued.remove(job)
        self._jobs.pop(job.id, None)
        if self._by_order.get(job.order.order_id) is job:
            del self._by_order[job.order.order_id]

    def __len__(self) -> int:
        return len(self._queued)


def _describe(order: OrderRequest) -> str:
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(order.parameters.items()))
    due = "" if order.due is None else f" due {order.due!r}"
    return f"{order.variant} x{order.quantity} priority {order.priority}{due} [{params}]"


# ------------------------------------------------------------------------------------------------------------
# The per-part cycle.


def _split(ref: str) -> tuple[str, str]:
    device, _, tag = ref.partition(".")
    return device, tag


class PartCycle:
    """Makes one part: writes its parameters, runs the robots and stations, measures it and judges it."""

    def __init__(self, profiles: Mapping[str, Profile], cell: CellConfig, clock: Clock) -> None:
        self._profiles = profiles
        self._production = cell.production
        self._robots = [p for p in profiles.values() if isinstance(p, Robot)]
        self._stations = [p for p in profiles.values() if isinstance(p, Press)]
        self._clock = clock

    def devices(self, recipe: Recipe) -> frozenset[str]:
        """Every device a part of ``recipe`` touches: robots, stations, parameter targets, quality sources."""
        used = {p.device for p in (*self._robots, *self._stations)}
        used.update(_split(p.target)[0] for p in recipe.parameters.values())
        used.update(_split(c.source)[0] for c in recipe.quality.values())
        used.update(_split(ref)[0] for ref, _ in self._outputs(Verdict.PASS))
        return frozenset(used)

    def _outputs(self, verdict: Verdict) -> list[tuple[str, bool]]:
        passed = verdict is Verdict.PASS
        outputs = [(self._production.reject_output, not passed), (self._production.accept_output, passed)]
        # The output going false first: accept and reject are never both true, not even between two writes.
        return sorted(((ref, value) for ref, value in outputs if ref is not None), key=lambda o: o[1])

    async def sort(self, part: PartProduced) -> None:
        """Set the accept/reject outputs for ``part``'s verdict (held until the next part's).

        Call only once the part's record is durable: a part handed on as good must be in the journal.
        """
        for ref, value in self._outputs(part.verdict):
            device, tag_name = _split(ref)
            await self._profile(device).tag(tag_name).write(value)
        log.debug("part sorted", part=part.part, verdict=part.verdict.value)

    def _profile(self, device: str) -> Profile:
        try:
            return self._profiles[device]
        except KeyError:
            raise DeviceError(device, "not a device of this cell") from None

    async def write_parameters(self, job: Job, index: int = 1) -> None:
        """Write part ``index``'s parameters to their target tags and confirm each by read-back."""
        timeout = self._production.station_timeout_s
        for name, value in job.parameters_for(index).items():
            device, tag_name = _split(job.recipe.parameters[name].target)
            tag = self._profile(device).tag(tag_name)
            await tag.write(value)
            await tag.wait_for_value(value, timeout)

    async def measure(self, recipe: Recipe) -> dict[str, Reading]:
        """A reading per quality characteristic: gauges are triggered once each, other sources read."""
        by_device: dict[str, list[tuple[str, str]]] = {}
        for name, characteristic in recipe.quality.items():
            device, tag_name = _split(characteristic.source)
            by_device.setdefault(device, []).append((name, tag_name))
        readings: dict[str, Reading] = {}
        for device, wanted in by_device.items():
            profile = self._profile(device)
            if isinstance(profile, Gauge):
                channels = await profile.measure([t for _, t in wanted], self._production.gauge_timeout_s)
                readings.update((name, channels[t]) for name, t in wanted)
            else:
                for name, tag_name in wanted:
                    readings[name] = await profile.tag(tag_name).read()
        return readings

    def judge(self, recipe: Recipe, readings: Mapping[str, Reading]) -> tuple[Measurement, ...]:
        """Each characteristic's verdict; a reading older than the gauge timeout is stale."""
        now = self._clock.monotonic()
        return tuple(
            judge(name, spec, readings[name], now=now, max_age=self._production.gauge_timeout_s)
            for name, spec in recipe.quality.items()
        )

    async def run(self, job: Job, index: int) -> PartProduced:
        """Make part ``index`` (1-based) of ``job`` and return its record (the caller counts it).

        Device failures propagate (CommError, DeviceFault, WriteVerifyError): the part is then not made.
        """
        started = self._clock.monotonic()
        bound = log.bind(job=job.id, part=index)
        await self.write_parameters(job, index)
        for robot in self._robots:
            await robot.run_cycle(self._production.robot_cycle_timeout_s)
        for station in self._stations:
            await station.run_cycle(self._production.station_timeout_s)
        measurements = self.judge(job.recipe, await self.measure(job.recipe))
        verdict = part_verdict(measurements)
        bound.debug("part made", verdict=verdict.value)
        return PartProduced(
            ts=self._clock.wall(),
            part=f"{job.id}-{index:04d}",
            job=job.id,
            variant=job.variant,
            index=index,
            verdict=verdict,
            measurements=measurements,
            parameters=dict(job.parameters_for(index)),
            cycle_s=self._clock.monotonic() - started,
        )
