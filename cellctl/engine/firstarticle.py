"""The first-article gate: after a changeover the cell qualifies the new setup until N consecutive parts pass.

Pure bookkeeping, no I/O: the engine opens a ``Qualification`` when a changeover to a gated recipe completes,
feeds it every part it makes, and records the facts it returns. A FAIL or INVALID part restarts the count
and is returned as a ``FirstArticleFailed`` the engine holds the cell with; a sign-off ends it at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cellctl.core.events import FirstArticleEvent, FirstArticleStatus, PartProduced, Verdict
from cellctl.errors import FirstArticleFailed, JobError


@dataclass(frozen=True, slots=True)
class QualificationView:
    """The open first-article gate as clients see it: which job qualifies which variant, and how far."""

    changeover_id: str
    job_id: str
    variant: str
    needed: int
    passes: int
    failures: int
    since: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Qualification:
    """One open gate: ``needed`` consecutive passes close it; a failure sets the run back to zero."""

    changeover: str
    job: str
    variant: str
    needed: int
    since: float
    passes: int = 0
    failures: int = 0

    def view(self) -> QualificationView:
        """A frozen snapshot for clients."""
        return QualificationView(
            changeover_id=self.changeover,
            job_id=self.job,
            variant=self.variant,
            needed=self.needed,
            passes=self.passes,
            failures=self.failures,
            since=self.since,
        )

    def event(
        self,
        ts: float,
        status: FirstArticleStatus,
        *,
        part: str | None = None,
        by: str = "engine",
        note: str = "",
    ) -> FirstArticleEvent:
        """The gate's current state as a recorded fact."""
        return FirstArticleEvent(
            ts=ts,
            changeover=self.changeover,
            job=self.job,
            variant=self.variant,
            status=status,
            needed=self.needed,
            passes=self.passes,
            part=part,
            by=by,
            note=note,
        )

    def judge(self, part: PartProduced) -> FirstArticleFailed | None:
        """Count ``part``: a pass extends the run, anything else resets it and is the failure to hold with."""
        if part.verdict is Verdict.PASS:
            self.passes += 1
            return None
        self.passes = 0
        self.failures += 1
        return FirstArticleFailed(part.part, failure_reason(part, self.needed))

    @property
    def passed(self) -> bool:
        """True once ``needed`` consecutive parts passed."""
        return self.passes >= self.needed


def failure_reason(part: PartProduced, needed: int) -> str:
    """Why a first article failed, naming the job and each characteristic that did not pass."""
    checks = []
    for m in part.measurements:
        if m.verdict is Verdict.PASS:
            continue
        value = "no value" if m.value is None else f"{m.value:g}"
        units = f" {m.units}" if m.units else ""
        why = f" ({m.reason})" if m.reason else ""
        checks.append(
            f"{m.characteristic} {value}{units} {m.verdict.value}, limits [{m.lsl:g}, {m.usl:g}]{why}"
        )
    detail = "; ".join(checks) or "no characteristic passed"
    return (
        f"job {part.job} part {part.index} is {part.verdict.value}: {detail}; "
        f"qualification restarts after Unhold ({needed} consecutive pass(es) needed, or a sign-off)"
    )


def authorise_sign_off(by: str) -> None:
    """Raise JobError unless ``by`` may sign off a first article.

    Everyone may today: roles arrive with issue 7, which replaces this check (``Engine`` calls it through one
    attribute, ``_authorise_sign_off``).
    """
    if not by:
        raise JobError("a sign-off must say who signs off")


__all__ = ["Qualification", "QualificationView", "authorise_sign_off", "failure_reason"]
