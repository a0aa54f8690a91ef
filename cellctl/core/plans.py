"""Changeover plans as frozen data: a DAG of steps with the ready set and the critical path computed here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cellctl.core.tags import TagValue
from cellctl.errors import PlanError


@dataclass(frozen=True, slots=True)
class DeviceSetup:
    """The setup of one device as read back (current) or asked by a recipe (target); None = not concerned."""

    tool: int | None = None
    program: int | None = None
    positions: Mapping[str, float] = field(default_factory=dict)
    setpoints: Mapping[str, TagValue] = field(default_factory=dict)
    clamped: bool | None = None
    """A fixture's clamps as read back (None: not read); a target never asks for it, it implies clamped."""


Setup = Mapping[str, DeviceSetup]
"""Setup of a cell: device name -> its setup."""


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One step of a changeover: what to do on which device, after which steps, and how long it may take."""

    id: str
    kind: str
    device: str | None
    description: str
    params: tuple[tuple[str, TagValue], ...] = ()
    after: tuple[str, ...] = ()
    expected_s: float = 1.0
    timeout_s: float = 30.0
    external: bool = False
    retries: int = 0
    interruptible: bool = True
    # Operator steps: what the person is told, what they must scan (a label) and the value it must match.
    instruction: str = ""
    evidence: str | None = None
    expected_evidence: str | None = None

    @property
    def args(self) -> dict[str, TagValue]:
        """The step's parameters as a dict."""
        return dict(self.params)

    def to_dict(self) -> dict[str, Any]:
        """The step as JSON-ready data (for the API, the journal and previews)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "device": self.device,
            "description": self.description,
            "params": dict(self.params),
            "after": list(self.after),
            "expected_s": self.expected_s,
            "timeout_s": self.timeout_s,
            "external": self.external,
            "retries": self.retries,
            "interruptible": self.interruptible,
            "instruction": self.instruction,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class ChangeoverPlan:
    """A frozen DAG of steps from one variant's setup to another's; validated on construction."""

    from_variant: str | None
    to_variant: str
    steps: tuple[PlanStep, ...]

    def __post_init__(self) -> None:
        ids = [s.id for s in self.steps]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise PlanError(f"duplicate step ids: {', '.join(duplicates)}")
        known = set(ids)
        for step in self.steps:
            missing = [a for a in step.after if a not in known]
            if missing:
                raise PlanError(f"step {step.id!r} comes after unknown step(s) {', '.join(missing)}")
        self.order()  # raises on a cycle

    def step(self, step_id: str) -> PlanStep:
        """The step with this id."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise PlanError(f"no step {step_id!r} in the plan")

    def order(self) -> list[PlanStep]:
        """Steps in a topological order (stable: ties keep plan order); PlanError names a cycle."""
        by_id = {s.id: s for s in self.steps}
        done: set[str] = set()
        result: list[PlanStep] = []
        remaining = list(self.steps)
        while remaining:
            ready = [s for s in remaining if all(a in done for a in s.after)]
            if not ready:
                cycle = ", ".join(s.id for s in remaining)
                raise PlanError(f"steps depend on each other in a cycle: {cycle}")
            for step in ready:
                done.add(step.id)
                result.append(by_id[step.id])
            remaining = [s for s in remaining if s.id not in done]
        return result

    def ready(self, done: Iterable[str], started: Iterable[str] = ()) -> list[PlanStep]:
        """Steps not yet started whose predecessors are all done, in plan order."""
        done_set, started_set = set(done), set(started)
        return [
            s
            for s in self.steps
            if s.id not in done_set and s.id not in started_set and all(a in done_set for a in s.after)
        ]

    def critical_path(self, *, internal_only: bool = False) -> tuple[tuple[str, ...], float]:
        """The longest chain of expected durations through the DAG (optionally internal steps only)."""
        finish: dict[str, float] = {}
        via: dict[str, str | None] = {}
        for step in self.order():
            start, prev = 0.0, None
            for dep in step.after:
                if prev is None or finish[dep] > start:
                    start, prev = finish[dep], dep
            weight = 0.0 if internal_only and step.external else step.expected_s
            finish[step.id] = start + weight
            via[step.id] = prev
        if not finish:
            return (), 0.0
        end = max(finish, key=lambda k: finish[k])
        chain: list[str] = []
        cursor: str | None = end
        while cursor is not None:
            chain.append(cursor)
            cursor = via[cursor]
        return tuple(reversed(chain)), finish[end]

    @property
    def total_s(self) -> float:
        """Sum of every step's expected duration (the time if nothing ran in parallel)."""
        return sum(s.expected_s for s in self.steps)

    @property
    def internal_s(self) -> float:
        """Sum of the internal steps' expected durations."""
        return sum(s.expected_s for s in self.steps if not s.external)

    @property
    def is_empty(self) -> bool:
        """True when the setups already match."""
        return not self.steps

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data: steps in plan order, critical path and SMED totals."""
        path, planned = self.critical_path()
        _internal_path, internal = self.critical_path(internal_only=True)
        return {
            "from_variant": self.from_variant,
            "to_variant": self.to_variant,
            "steps": [s.to_dict() for s in self.steps],
            "critical_path": list(path),
            "planned_s": planned,
            "planned_internal_s": internal,
            "total_s": self.total_s,
            "internal_s": self.internal_s,
        }

    def render(self) -> str:
        """A plain-text table of the plan for previews and logs (one line per step, in topological order)."""
        path, planned = self.critical_path()
        on_path = set(path)
        head = f"changeover {self.from_variant or '?'} -> {self.to_variant}"
        if not self.steps:
            return f"{head}: nothing to do"
        lines = [f"{head}: {len(self.steps)} steps, critical path {planned:g} s (sum {self.total_s:g} s)"]
        for step in self.order():
            mark = "*" if step.id in on_path else " "
            smed = "ext" if step.external else "int"
            after = f"  after {', '.join(step.after)}" if step.after else ""
            lines.append(f" {mark} {step.id:<28} {smed} {step.expected_s:>6g} s  {step.description}{after}")
        return "\n".join(lines)
