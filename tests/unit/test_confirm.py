"""Confirmations: a waiting step resumes only on a matching answer; wrong answers change nothing."""

from __future__ import annotations

import asyncio

import pytest

from cellctl.core.clock import ManualClock
from cellctl.engine.confirm import Confirmations, Prompt, PromptKind, evidence_matches
from cellctl.errors import ConfirmError


class _Hub:
    """A hub whose changes set an event, so a test waits for a prompt without polling."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.count = 0
        self.hub = Confirmations(ManualClock(), on_change=self._on_change)

    def _on_change(self) -> None:
        self.count += 1
        self.changed.set()

    async def wait_pending(self) -> None:
        async with asyncio.timeout(2):
            await self.changed.wait()
        assert self.hub.pending()


def _prompt(step: str = "s1", evidence: str | None = "scan the fixture id") -> Prompt:
    return Prompt(
        changeover="c1",
        step=step,
        device="fixture",
        kind=PromptKind.OPERATOR_STEP,
        instruction="swap the fixture",
        evidence=evidence,
        since=0.0,
    )


@pytest.mark.parametrize(
    ("given", "expected", "ok"),
    [
        (None, None, True),
        ("x", None, True),
        ("FX-12", "fx-12", True),
        ("  FX-12\n", "FX-12", True),
        ("FX-13", "FX-12", False),
        (None, "FX-12", False),
        ("", "FX-12", False),
    ],
)
def test_evidence_matches(given: str | None, expected: str | None, ok: bool) -> None:
    assert evidence_matches(given, expected) is ok


async def test_wrong_evidence_is_refused_then_right_one_resumes() -> None:
    probe = _Hub()
    hub = probe.hub
    waiter = asyncio.create_task(hub.ask(_prompt(), expected="FX-12"))
    await probe.wait_pending()
    assert [p.step for p in hub.pending()] == ["s1"]
    assert "FX-12" not in str(hub.pending()[0].to_dict())
    with pytest.raises(ConfirmError, match="does not match"):
        hub.answer("s1", by="ann", evidence="FX-13")
    with pytest.raises(ConfirmError, match="evidence is required"):
        hub.answer("s1", by="ann", evidence="  ")
    assert not waiter.done()
    done = hub.answer("s1", by="bob", evidence="fx-12")
    async with asyncio.timeout(2):
        result = await waiter
    assert result == done
    assert (result.by, result.evidence, result.kind) == ("bob", "fx-12", PromptKind.OPERATOR_STEP)
    assert hub.pending() == ()
    assert probe.count == 2  # one when asked, one when answered


async def test_answer_without_pending_step_names_what_is_pending() -> None:
    hub = Confirmations(ManualClock())
    with pytest.raises(ConfirmError, match=r"no confirmation is pending .*pending: none"):
        hub.answer("s9", by="ann")


async def test_cancelled_wait_withdraws_the_prompt() -> None:
    probe = _Hub()
    hub = probe.hub
    waiter = asyncio.create_task(hub.ask(_prompt(evidence=None)))
    await probe.wait_pending()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert hub.pending() == ()
    with pytest.raises(ConfirmError):
        hub.answer("s1", by="ann")


async def test_same_step_cannot_wait_twice() -> None:
    probe = _Hub()
    hub = probe.hub
    first = asyncio.create_task(hub.ask(_prompt(evidence=None)))
    await probe.wait_pending()
    with pytest.raises(ConfirmError, match="already waits"):
        await hub.ask(_prompt(evidence=None))
    hub.answer("s1", by="ann")
    async with asyncio.timeout(2):
        await first
