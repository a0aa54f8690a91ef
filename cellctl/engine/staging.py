"""External steps run ahead: the part of the next job's changeover that may run while this job produces.

A step may run ahead when it is external, every step before it may too, and its device is one the part cycle
does not use (a device does one thing at a time). The ``Stager`` runs that sub-plan through the sequencer in
one task of the engine's TaskGroup (``"engine:external"``) and is cancelled with production; the changeover
that follows plans again from the setup read back, so what ran ahead is not done twice.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection

import structlog

from cellctl.core.plans import ChangeoverPlan
from cellctl.engine.kpi import StagedRun
from cellctl.engine.sequencer import Sequencer
from cellctl.errors import DeviceError, SequenceError

_log = structlog.get_logger(__name__)


def runnable_ahead(plan: ChangeoverPlan, busy: Collection[str]) -> ChangeoverPlan:
    """The steps of ``plan`` that may run while parts are made on the ``busy`` devices (maybe none)."""
    chosen: set[str] = set()
    for step in plan.order():
        if (
            step.external
            and step.device is not None
            and step.device not in busy
            and all(a in chosen for a in step.after)
        ):
            chosen.add(step.id)
    return ChangeoverPlan(
        from_variant=plan.from_variant,
        to_variant=plan.to_variant,
        steps=tuple(s for s in plan.steps if s.id in chosen),
    )


def lead_parts(ahead: ChangeoverPlan, cycle_s: float) -> int:
    """How many parts before a job's end to start ``ahead`` so it is done when the job is (at least 1)."""
    _path, planned = ahead.critical_path()
    if cycle_s <= 0 or not math.isfinite(planned):
        return 1
    return max(1, math.ceil(planned / cycle_s))


class Stager:
    """Runs at most one sub-plan of external steps ahead of the next job's changeover."""

    def __init__(self, sequencer: Sequencer) -> None:
        self._sequencer = sequencer
        self._task: asyncio.Task[StagedRun] | None = None
        self.for_job: str | None = None
        """The job the running (or finished, not yet taken) run is for."""

    @property
    def active(self) -> bool:
        """True while a run was started and not yet taken or cancelled."""
        return self._task is not None

    def start(
        self, group: asyncio.TaskGroup, plan: ChangeoverPlan, *, changeover_id: str, job_id: str
    ) -> None:
        """Start running ``plan`` ahead for ``job_id`` in ``group``."""
        if self._task is not None:
            raise RuntimeError("a run ahead is already active: take or cancel it first")
        self.for_job = job_id
        self._task = group.create_task(
            self._run(plan, changeover_id=changeover_id, job_id=job_id), name="engine:external"
        )

    async def _run(self, plan: ChangeoverPlan, *, changeover_id: str, job_id: str) -> StagedRun:
        log = _log.bind(changeover=changeover_id, job=job_id)
        log.info("external steps started ahead", steps=[s.id for s in plan.steps])
        try:
            result = await self._sequencer.run(plan, changeover_id=changeover_id, job_id=job_id)
        except (SequenceError, DeviceError) as exc:
            # The job still producing must not stop for it: the changeover plans the step again, internally.
            log.warning("external steps ahead failed; the changeover will redo what is left", error=str(exc))
            return StagedRun(
                changeover_id=changeover_id, job_id=job_id, plan=plan, durations={}, error=str(exc)
            )
        log.info("external steps done ahead", duration_s=round(result.total_s, 3))
        return StagedRun(
            changeover_id=changeover_id, job_id=job_id, plan=plan, durations=dict(result.durations)
        )

    async def take(self) -> StagedRun | None:
        """Wait for the run to end and return it (None when none was started); the stager is free again."""
        task = self._task
        if task is None:
            return None
        try:
            await asyncio.wait([task])
        finally:
            if task.done():
                self._task, self.for_job = None, None
        return task.result()

    async def cancel(self) -> None:
        """Cancel the run, if any, and wait until it stopped (its steps are recorded as cancelled)."""
        task = self._task
        self._task, self.for_job = None, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])


__all__ = ["Stager", "lead_parts", "runnable_ahead"]
