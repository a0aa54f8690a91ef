"""Setup-dependent job sequencing: order the queue to cut changeover time, keeping priorities and due dates.

Pure: no I/O, no clock; the same inputs always give the same ``Schedule``.

Time model. The cell starts at ``now`` set up for ``current`` (``None``: unknown). Each job in turn first
waits for the changeover from the previous variant, ``cost(previous, variant)`` seconds of *internal*
downtime (the planner's internal critical path: external steps run while the previous job still produces),
then runs for its ``expected_s`` (quantity x the recipe's ``ideal_cycle_s``). A job is late by
``max(0, finish - due_s)``; the schedule's *lateness* is the sum over its jobs (total tardiness).

Objective, in this order:

1. Priorities are hard: a higher-priority job never runs after a lower-priority one. The search only moves
   jobs within their priority class.
2. Then total lateness, then total changeover time, lexicographically. Due dates are promises to customers;
   changeover time is the cell's own cost, so it is only cut where no promise suffers. The search starts from
   the best of three orders (FIFO, earliest due date, a greedy nearest-neighbour order that groups variants)
   and only accepts strict improvements of (lateness, changeover), so the proposal is never worse than FIFO or
   earliest-due-date on lateness, and never has more changeover time than either at equal lateness. In
   particular, without due dates its changeover total is at most FIFO's.

Remaining ties keep the earlier order (the construction breaks ties by submit sequence), so the result is
deterministic. The local search (or-opt moves of one to three consecutive jobs, then 2-opt reversals) is
bounded by ``max_passes`` full passes and ``max_evaluations`` candidate orders.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cellctl.core.plans import DeviceSetup, Setup
from cellctl.engine.durations import StepDurations
from cellctl.engine.planner import plan_changeover, target_setup
from cellctl.errors import JobError, PlanError
from cellctl.schema.cell import CellConfig
from cellctl.schema.recipe import Recipe

CostFn = Callable[[str | None, str], float]
"""Seconds of internal downtime to change the cell from one variant (``None``: unknown) to another."""

LATENESS_EPS = 1e-6
"""Lateness differences below this (seconds) are float noise, not an improvement."""

MAX_SEGMENT = 3
"""Or-opt moves runs of up to this many consecutive jobs."""


@dataclass(frozen=True, slots=True)
class SchedJob:
    """A job as the scheduler sees it: what, how urgent, and how long it runs."""

    job_id: str
    variant: str
    quantity: int
    expected_s: float
    priority: int = 0
    due_s: float | None = None
    seq: int = 0

    @classmethod
    def from_recipe(
        cls,
        job_id: str,
        recipe: Recipe,
        quantity: int,
        *,
        priority: int = 0,
        due_s: float | None = None,
        seq: int = 0,
    ) -> SchedJob:
        """A job whose expected run time is ``quantity`` x the recipe's ideal cycle time."""
        return cls(
            job_id=job_id,
            variant=recipe.variant,
            quantity=quantity,
            expected_s=quantity * recipe.ideal_cycle_s,
            priority=priority,
            due_s=due_s,
            seq=seq,
        )


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    """One job's place in a schedule: its changeover, predicted start and finish, and how late it ends."""

    job_id: str
    variant: str
    changeover_s: float
    start_s: float
    finish_s: float
    late_s: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """An order of jobs and what it costs: changeover time, lateness, and each job's predicted times."""

    order: tuple[str, ...]
    changeover_s: float
    lateness_s: float
    changeovers: int
    priority_inversions: int
    jobs: tuple[ScheduledJob, ...]

    @property
    def makespan_s(self) -> float:
        """Finish time of the last job (``now`` when empty is not known here, so 0.0)."""
        return self.jobs[-1].finish_s if self.jobs else 0.0


# ------------------------------------------------------------------------------------------------------------
# Changeover costs from the real planner.


def changeover_costs(
    recipes: Mapping[str, Recipe],
    cell: CellConfig,
    current_setup: Setup | None = None,
    *,
    durations: StepDurations | None = None,
) -> CostFn:
    """Internal downtime of each variant pair, from the planner's internal critical path, cached per pair.

    From ``None`` (the cell's variant is unknown) the plan starts from ``current_setup`` when given, else from
    an empty setup (every setting differs, the worst case). With ``durations`` the plans use the measured
    step durations; the cache is dropped whenever they change.
    """
    cache: dict[tuple[str | None, str], float] = {}
    targets: dict[str, dict[str, DeviceSetup]] = {}
    cached_version = durations.version if durations is not None else 0

    def recipe_of(variant: str) -> Recipe:
        recipe = recipes.get(variant)
        if recipe is None:
            raise PlanError(f"unknown variant {variant!r} (known: {', '.join(sorted(recipes))})")
        return recipe

    def cost(from_variant: str | None, to_variant: str) -> float:
        nonlocal cached_version
        if durations is not None and durations.version != cached_version:
            cache.clear()
            cached_version = durations.version
        key = (from_variant, to_variant)
        hit = cache.get(key)
        if hit is not None:
            return hit
        target = recipe_of(to_variant)
        if from_variant is None:
            start: Setup = current_setup if current_setup is not None else {}
        else:
            if from_variant not in targets:
                targets[from_variant] = target_setup(recipe_of(from_variant), cell)
            start = targets[from_variant]
        plan = plan_changeover(start, target, cell, from_variant=from_variant, durations=durations)
        value = plan.critical_path(internal_only=True)[1]
        cache[key] = value
        return value

    return cost


# ------------------------------------------------------------------------------------------------------------
# Reference orders and evaluation.


def fifo_order(jobs: Sequence[SchedJob]) -> list[str]:
    """The queue's own order: higher priority first, then submit sequence."""
    return [j.job_id for j in sorted(jobs, key=lambda j: (-j.priority, j.seq))]


def edd_order(jobs: Sequence[SchedJob]) -> list[str]:
    """Earliest due date within each priority class (no due date last), then submit sequence."""
    return [j.job_id for j in sorted(jobs, key=_edd_key)]


def _edd_key(j: SchedJob) -> tuple[int, float, int]:
    return (-j.priority, j.due_s if j.due_s is not None else math.inf, j.seq)


def _by_id(jobs: Sequence[SchedJob]) -> dict[str, SchedJob]:
    index: dict[str, SchedJob] = {}
    for job in jobs:
        if job.job_id in index:
            raise JobError(f"job {job.job_id!r} appears twice in the jobs to schedule")
        index[job.job_id] = job
    return index


def evaluate(
    order: Sequence[str],
    current: str | None,
    jobs: Sequence[SchedJob],
    cost: CostFn,
    now: float = 0.0,
) -> Schedule:
    """Predicted figures of running ``jobs`` in ``order`` (which must be a permutation of their ids)."""
    index = _by_id(jobs)
    if len(order) != len(index) or set(order) != set(index):
        missing = sorted(set(index) - set(order))
        extra = sorted(set(order) - set(index))
        raise JobError(
            f"order is not a permutation of the jobs: missing {missing}, unknown {extra}, "
            f"{len(order)} ids for {len(index)} jobs"
        )
    t = now
    previous = current
    total_co = 0.0
    total_late = 0.0
    changeovers = 0
    inversions = 0
    lowest: int | None = None
    placed: list[ScheduledJob] = []
    for job_id in order:
        job = index[job_id]
        co = cost(previous, job.variant) if previous != job.variant else 0.0
        if previous != job.variant and co > 0.0:
            changeovers += 1
        start = t + co
        finish = start + job.expected_s
        late = max(0.0, finish - job.due_s) if job.due_s is not None else 0.0
        if lowest is not None and job.priority > lowest:
            inversions += 1
        lowest = job.priority if lowest is None else min(lowest, job.priority)
        placed.append(ScheduledJob(job_id, job.variant, co, start, finish, late))
        total_co += co
        total_late += late
        t = finish
        previous = job.variant
    return Schedule(
        order=tuple(order),
        changeover_s=total_co,
        lateness_s=total_late,
        changeovers=changeovers,
        priority_inversions=inversions,
        jobs=tuple(placed),
    )


# ------------------------------------------------------------------------------------------------------------
# The search, on integer indices and a dense cost matrix so one evaluation is a tight loop.


class _Problem:
    """Jobs, variants and costs as arrays; ``score`` of an index order is (lateness, changeover)."""

    def __init__(self, current: str | None, jobs: Sequence[SchedJob], cost: CostFn, now: float) -> None:
        self.jobs = list(jobs)
        variants = sorted({j.variant for j in jobs})
        vix = {v: i for i, v in enumerate(variants)}
        self.var = [vix[j.variant] for j in jobs]
        self.run = [j.expected_s for j in jobs]
        self.due = [j.due_s if j.due_s is not None else math.inf for j in jobs]
        self.has_due = any(j.due_s is not None for j in jobs)
        self.matrix = [[0.0 if a == b else cost(a, b) for b in variants] for a in variants]
        self.start_cost = [
            0.0 if current == v else cost(current, v) for v in variants
        ]  # from the current variant (or unknown)
        self.now = now

    def score(self, order: Sequence[int]) -> tuple[float, float]:
        var, run, due, matrix = self.var, self.run, self.due, self.matrix
        t = self.now
        co_total = 0.0
        late = 0.0
        prev = -1
        for i in order:
            v = var[i]
            co = self.start_cost[v] if prev < 0 else matrix[prev][v]
            co_total += co
            t += co
            t += run[i]
            if t > due[i]:
                late += t - due[i]
            prev = v
        return (late, co_total)


def _better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when ``a`` strictly beats ``b``: less lateness, or equal lateness and less changeover."""
    if a[0] < b[0] - LATENESS_EPS:
        return True
    if a[0] > b[0] + LATENESS_EPS:
        return False
    return a[1] < b[1] - LATENESS_EPS


def _blocks(problem: _Problem, order: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open index ranges of ``order`` holding one priority class each (order is priority-sorted)."""
    ranges: list[tuple[int, int]] = []
    lo = 0
    for k in range(1, len(order) + 1):
        if k == len(order) or problem.jobs[order[k]].priority != problem.jobs[order[lo]].priority:
            ranges.append((lo, k))
            lo = k
    return ranges


def _nearest_neighbour(problem: _Problem, fifo: list[int]) -> list[int]:
    """Greedy: within each priority class take the cheapest next changeover (ties: earliest due, then seq)."""
    result: list[int] = []
    prev = -1
    for lo, hi in _blocks(problem, fifo):
        pending = fifo[lo:hi]
        while pending:

            def key(i: int, prev: int = prev) -> tuple[float, float, int]:
                v = problem.var[i]
                co = problem.start_cost[v] if prev < 0 else problem.matrix[prev][v]
                return (co, problem.due[i], problem.jobs[i].seq)

            best = min(pending, key=key)
            pending.remove(best)
            result.append(best)
            prev = problem.var[best]
    return result


def _improve(problem: _Problem, order: list[int], max_passes: int, max_evaluations: int) -> list[int]:
    """Or-opt then 2-opt inside each priority class until no move strictly improves, or a bound is hit."""
    best = problem.score(order)
    blocks = _blocks(problem, order)
    budget = max_evaluations
    for _ in range(max_passes):
        if budget <= 0:
            break
        improved = False
        for lo, hi in blocks:
            # Or-opt: move a run of 1..MAX_SEGMENT jobs elsewhere in its class (this is what groups variants).
            for seg in range(1, MAX_SEGMENT + 1):
                i = lo
                while i + seg <= hi:
                    segment = order[i : i + seg]
                    rest = order[:i] + order[i + seg :]
                    moved = False
                    for j in range(lo, hi - seg + 1):
                        if j == i or budget <= 0:
                            continue
                        budget -= 1
                        candidate = rest[:j] + segment + rest[j:]
                        s = problem.score(candidate)
                        if _better(s, best):
                            order, best, improved, moved = candidate, s, True, True
                            break
                    if not moved:
                        i += 1
            # 2-opt: reverse a stretch (reverses the direction a run of variants is visited in).
            for i in range(lo, hi - 1):
                for j in range(i + 2, hi + 1):
                    if budget <= 0:
                        break
                    budget -= 1
                    candidate = order[:i] + order[i:j][::-1] + order[j:]
                    s = problem.score(candidate)
                    if _better(s, best):
                        order, best, improved = candidate, s, True
        if not improved:
            break
    return order


def propose(
    current: str | None,
    jobs: Sequence[SchedJob],
    cost: CostFn,
    now: float = 0.0,
    *,
    max_passes: int = 20,
    max_evaluations: int = 200_000,
) -> Schedule:
    """The proposed order: priorities kept, then least total lateness, then least total changeover time."""
    index = _by_id(jobs)
    if not jobs:
        return evaluate([], current, jobs, cost, now)
    problem = _Problem(current, list(index.values()), cost, now)
    position = {j.job_id: k for k, j in enumerate(problem.jobs)}
    fifo = [position[i] for i in fifo_order(problem.jobs)]
    starts = [fifo, [position[i] for i in edd_order(problem.jobs)], _nearest_neighbour(problem, fifo)]
    start = starts[0]
    start_score = problem.score(start)
    for candidate in starts[1:]:
        s = problem.score(candidate)
        if _better(s, start_score):
            start, start_score = candidate, s
    order = _improve(problem, list(start), max_passes, max_evaluations)
    return evaluate([problem.jobs[i].job_id for i in order], current, jobs, cost, now)
