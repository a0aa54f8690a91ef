"""Operator confirmations: a step that waits for a person says what to do, and resumes once someone answers.

Two kinds of step wait here: operator steps (a manual fixture swap, a material load) and, after a restart,
steps whose outcome the journal cannot tell ("in doubt"), which are never run again without a person's
word. Evidence (a scanned tool or fixture id) is compared with what the recipe expects, ignoring case and
surrounding blanks; the expected value is never shown, so a person has to scan rather than copy it.
Journaling who answered and when is the engine's job; this module only matches answers to waiting steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cellctl.core.clock import Clock
from cellctl.errors import ConfirmError


class PromptKind(StrEnum):
    """Why a step waits for a person."""

    OPERATOR_STEP = "operator_step"
    IN_DOUBT = "in_doubt"


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a waiting step shows the operator; ``evidence`` names what to scan (None: confirm only)."""

    changeover: str
    step: str
    device: str | None
    kind: PromptKind
    instruction: str
    evidence: str | None
    since: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (never the expected evidence itself)."""
        return {
            "changeover": self.changeover,
            "step": self.step,
            "device": self.device,
            "kind": self.kind.value,
            "instruction": self.instruction,
            "evidence": self.evidence,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class Confirmation:
    """An accepted answer: who confirmed which step, when, with which evidence."""

    step: str
    kind: PromptKind
    by: str
    at: float
    evidence: str | None


@dataclass(slots=True)
class _Waiting:
    prompt: Prompt
    expected: str | None
    answer: asyncio.Future[Confirmation]


def evidence_matches(given: str | None, expected: str | None) -> bool:
    """True when no evidence is expected, or the given evidence equals it (case and outer blanks ignored)."""
    if expected is None:
        return True
    return given is not None and given.strip().casefold() == expected.strip().casefold()


class Confirmations:
    """The steps waiting for a person, and the answers to them."""

    def __init__(self, clock: Clock, *, on_change: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._on_change = on_change
        self._waiting: dict[str, _Waiting] = {}

    def pending(self) -> tuple[Prompt, ...]:
        """The prompts waiting now, oldest first."""
        return tuple(w.prompt for w in self._waiting.values())

    async def ask(self, prompt: Prompt, *, expected: str | None = None) -> Confirmation:
        """Wait until someone answers ``prompt`` with matching evidence; cancellation withdraws the prompt."""
        if prompt.step in self._waiting:
            raise ConfirmError(prompt.step, "already waits for a confirmation")
        if prompt.evidence is None and expected is not None:
            raise ValueError(f"step {prompt.step!r}: evidence is expected but the prompt does not ask for it")
        future: asyncio.Future[Confirmation] = asyncio.get_running_loop().create_future()
        self._waiting[prompt.step] = _Waiting(prompt, expected, future)
        self._changed()
        try:
            return await future
        finally:
            # Answered prompts are gone already; one withdrawn by cancellation goes now.
            if self._waiting.get(prompt.step) is not None and self._waiting[prompt.step].answer is future:
                del self._waiting[prompt.step]
                self._changed()

    def answer(self, step: str, *, by: str, evidence: str | None = None) -> Confirmation:
        """Answer the waiting ``step``; ConfirmError (nothing changes) when none waits or evidence differs."""
        waiting = self._waiting.get(step)
        if waiting is None or waiting.answer.done():
            known = ", ".join(self._waiting) or "none"
            raise ConfirmError(step, f"no confirmation is pending for this step (pending: {known})")
        if waiting.prompt.evidence is not None and not (evidence or "").strip():
            raise ConfirmError(step, f"evidence is required: {waiting.prompt.evidence}")
        if not evidence_matches(evidence, waiting.expected):
            raise ConfirmError(
                step, f"evidence {evidence!r} does not match what the recipe asks ({waiting.prompt.evidence})"
            )
        confirmation = Confirmation(
            step=step, kind=waiting.prompt.kind, by=by, at=self._clock.wall(), evidence=evidence
        )
        del self._waiting[step]
        waiting.answer.set_result(confirmation)
        self._changed()
        return confirmation

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


__all__ = ["Confirmation", "Confirmations", "Prompt", "PromptKind", "evidence_matches"]
