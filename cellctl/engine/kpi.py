"""Changeover KPIs: the figures of one changeover gathered as it runs, turned into a ``ChangeoverKpi`` fact.

Pure bookkeeping, no I/O. The engine fills a ``PendingKpi`` when a changeover completes (the external run
ahead of it, the wait for that run, the internal run) and finishes it at the first good part of the new
variant, or at a sign-off; ``ChangeoverKpi``'s docstring defines each figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cellctl.core.events import ChangeoverKpi, StepKpi
from cellctl.core.plans import ChangeoverPlan

EXTERNAL = "external"
"""Phase of a step run ahead, while the previous job still produced."""

INTERNAL = "internal"
"""Phase of a step run in the changeover proper, the cell not producing."""


def actual_path_s(plan: ChangeoverPlan, durations: Mapping[str, float]) -> float:
    """The longest chain through ``plan`` weighted by the steps' actual seconds (unfinished steps weigh 0)."""
    finish: dict[str, float] = {}
    for step in plan.order():
        start = max((finish[a] for a in step.after), default=0.0)
        finish[step.id] = start + durations.get(step.id, 0.0)
    return max(finish.values(), default=0.0)


@dataclass(frozen=True, slots=True)
class StagedRun:
    """External steps run ahead of a job's changeover: which, and how long each took (start to confirmed).

    ``error`` says why the run ended early (its unfinished steps are then planned again, internally).
    """

    changeover_id: str
    job_id: str
    plan: ChangeoverPlan
    durations: Mapping[str, float]
    error: str = ""

    @property
    def actual_s(self) -> float:
        """The run's time as its steps took it: the longest chain of their actual durations."""
        return actual_path_s(self.plan, self.durations)


def step_kpis(plan: ChangeoverPlan, durations: Mapping[str, float], phase: str) -> tuple[StepKpi, ...]:
    """Each step of ``plan`` with its planned and actual seconds (None when it did not finish)."""
    return tuple(
        StepKpi(
            step=s.id,
            device=s.device,
            phase=phase,
            planned_s=s.expected_s,
            actual_s=durations.get(s.id),
        )
        for s in plan.order()
    )


@dataclass(frozen=True, slots=True)
class PendingKpi:
    """A completed changeover waiting for its first good part; instants are wall (``*_ts``) or monotonic."""

    changeover: str
    job: str
    from_variant: str | None
    to_variant: str
    last_good_ts: float | None
    completed_mono: float
    external_s: float
    external_wait_s: float
    internal_s: float
    planned_external_s: float
    planned_internal_s: float
    steps: tuple[StepKpi, ...]

    def finish(self, *, first_good_ts: float, now_mono: float, ended_by: str) -> ChangeoverKpi:
        """The KPI fact, closed at ``first_good_ts`` (wall) / ``now_mono`` (monotonic)."""
        total = None if self.last_good_ts is None else first_good_ts - self.last_good_ts
        return ChangeoverKpi(
            ts=first_good_ts,
            changeover=self.changeover,
            job=self.job,
            from_variant=self.from_variant,
            to_variant=self.to_variant,
            last_good_ts=self.last_good_ts,
            first_good_ts=first_good_ts,
            total_s=total,
            external_s=self.external_s,
            external_wait_s=self.external_wait_s,
            internal_s=self.internal_s,
            first_article_s=now_mono - self.completed_mono,
            planned_external_s=self.planned_external_s,
            planned_internal_s=self.planned_internal_s,
            steps=self.steps,
            ended_by=ended_by,
        )


__all__ = ["EXTERNAL", "INTERNAL", "PendingKpi", "StagedRun", "actual_path_s", "step_kpis"]
