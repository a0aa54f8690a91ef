"""The Changeover screen: the running plan's steps with their progress against plan, and the modal that asks a
person to do an operator step and scan its evidence.

A step waiting for a person (``status.prompts``) opens the modal once per new prompt, on whichever screen the
operator is; Esc hides it and ``e`` brings it back. A wrong scan is refused by the controller and the refusal
stays in the modal, which stays open until the step is confirmed (or answered elsewhere).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, ProgressBar, Static

from cellctl.tui.pane import Link, Outcome, Pane

COLUMNS = ("step", "device", "kind", "side", "status", "plan", "act")
"""Seconds: ``plan`` as the plan expects, ``act`` as the step took."""

CRITICAL_MARK = "●"
"""Marks a step on the critical path (the chain that sets the changeover's duration)."""

STATUS_STYLE = {
    "pending": "dim",
    "started": "bold yellow",
    "waiting": "bold magenta",
    "done": "green",
    "failed": "bold red",
    "skipped": "dim",
}

Confirm = Callable[[str | None], Awaitable[Outcome]]

PromptKey = tuple[str, str, float]


def prompt_key(prompt: dict[str, Any]) -> PromptKey:
    """What makes a prompt new: its changeover, step and when it started waiting."""
    since = prompt.get("since")
    return (
        str(prompt.get("changeover", "")),
        str(prompt.get("step", "")),
        float(since) if isinstance(since, int | float) else 0.0,
    )


def seconds(value: object) -> str:
    """Seconds as ``12.3`` (under a minute) or ``4m05``; ``-`` for none."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    if abs(value) < 60:
        return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"
    minutes, secs = divmod(round(abs(value)), 60)
    return f"{'-' if value < 0 else ''}{minutes}m{secs:02d}"


def short_name(step: dict[str, Any]) -> str:
    """The step's id without its device's prefix (``fixture:fixture_move`` at ``fixture``: ``fixture_move``);
    an id whose prefix is not its device (``operator:load_fabric`` at ``stapler``) stays whole."""
    step_id = str(step.get("id", "?"))
    prefix, sep, rest = step_id.partition(":")
    return rest if sep and prefix == step.get("device") else step_id


def step_row(step: dict[str, Any], critical: bool) -> tuple[Text, ...]:
    """One row of the steps table (a StepView as the status carries it)."""
    status = str(step.get("status", "pending"))
    style = STATUS_STYLE.get(status, "")
    actual = step.get("duration_s")
    expected = step.get("expected_s")
    late = (
        isinstance(actual, int | float)
        and isinstance(expected, int | float)
        and expected > 0
        and actual > expected * 1.5
    )
    return (
        Text.assemble((CRITICAL_MARK if critical else " ", "bold yellow"), " ", (short_name(step), style)),
        Text(str(step.get("device") or "-")),
        Text(str(step.get("kind", ""))),
        Text("ext" if step.get("external") else "int", style="cyan" if step.get("external") else ""),
        Text(status, style=style),
        Text(seconds(expected), justify="right"),
        Text(
            "..." if status in ("started", "waiting") and actual is None else seconds(actual),
            style="bold red" if late else "",
            justify="right",
        ),
    )


class OperatorStepModal(ModalScreen[None]):
    """One step waiting for a person: the instruction, what to scan, and the field the scan goes into."""

    DEFAULT_CSS = """
    OperatorStepModal {
        align: center middle;
    }
    OperatorStepModal > Vertical {
        width: 74;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 0 1;
    }
    OperatorStepModal #instruction {
        text-style: bold;
        margin: 1 0;
    }
    OperatorStepModal #evidence {
        margin-top: 1;
    }
    OperatorStepModal #refusal {
        color: $error;
        text-style: bold;
        height: auto;
    }
    OperatorStepModal .keys {
        color: $text-muted;
        margin-top: 1;
    }
    """

    BINDINGS = [
        Binding("escape", "hide", "Hide (e reopens)"),
        Binding("enter", "confirm", "Confirm", show=False),
    ]

    def __init__(self, prompt: dict[str, Any], confirm: Confirm) -> None:
        super().__init__()
        self.prompt = prompt
        self.key = prompt_key(prompt)
        self._confirm = confirm
        self._dismissed = False

    @property
    def asks_evidence(self) -> bool:
        """True when the step wants a scan (an id), not only a confirmation."""
        return bool(self.prompt.get("evidence"))

    def compose(self) -> ComposeResult:
        prompt = self.prompt
        kind = "Step in doubt" if prompt.get("kind") == "in_doubt" else "Operator step"
        with Vertical():
            yield Static(
                Text.assemble(
                    (f"{kind}: ", "bold"),
                    (str(prompt.get("step", "?")), "bold yellow"),
                    (f"  at {prompt['device']}" if prompt.get("device") else "", ""),
                )
            )
            yield Static(Text(str(prompt.get("instruction") or "")), id="instruction")
            if self.asks_evidence:
                yield Static(Text.assemble(("Evidence: ", "bold"), str(prompt["evidence"])))
                yield Input(placeholder="scan or type it, then Enter", id="evidence")
                keys = "Enter: confirm with this scan    Esc: hide (e reopens)"
            else:
                keys = "Enter: confirm the step is done    Esc: hide (e reopens)"
            yield Static("", id="refusal", markup=False)
            yield Static(keys, classes="keys")

    def on_mount(self) -> None:
        if self.asks_evidence:
            self.query_one("#evidence", Input).focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the evidence field: confirm with the scan."""
        event.stop()
        await self._send(event.value.strip())

    async def action_confirm(self) -> None:
        """Enter without an evidence field: confirm the step is done."""
        if not self.asks_evidence:
            await self._send(None)

    async def _send(self, evidence: str | None) -> None:
        if self.asks_evidence and not evidence:
            self.query_one("#refusal", Static).update("scan the evidence first")
            return
        outcome = await self._confirm(evidence)
        if outcome.ok:
            self.close()
            return
        self.query_one("#refusal", Static).update(f"refused: {outcome.message or outcome.code}")
        if self.asks_evidence:
            field = self.query_one("#evidence", Input)
            field.value = ""
            field.focus()

    def action_hide(self) -> None:
        """Hide the modal; the step still waits (``e`` on the Changeover screen reopens it)."""
        self.close()

    def close(self) -> None:
        """Dismiss the modal once, if it is on top (an accepted answer and the status that follows it
        both close it)."""
        if not self._dismissed and self.is_active:
            self._dismissed = True
            self.dismiss(None)


class ChangeoverPane(Pane):
    """The running changeover: steps with status, critical path, internal/external, time against plan."""

    title = "Changeover"

    DEFAULT_CSS = """
    ChangeoverPane #head {
        height: auto;
        padding: 0 1;
    }
    ChangeoverPane #progress-row {
        height: auto;
        padding: 0 1;
        display: none;
    }
    ChangeoverPane #steps {
        height: 1fr;
    }
    ChangeoverPane #waiting {
        height: auto;
        padding: 0 1;
    }
    """

    BINDINGS = [Binding("e", "answer_prompt", "Operator step")]
    ACTION_COMMANDS = {"answer_prompt": "confirm"}

    def __init__(self, link: Link, *, id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        """``clock``: wall-clock seconds, for the time elapsed since the changeover started."""
        super().__init__(link, id=id)
        self._clock = clock
        self._changeover: dict[str, Any] | None = None
        self._in_progress = False
        self._prompts: list[dict[str, Any]] = []
        self._popped: set[PromptKey] = set()
        """Prompts whose modal opened once: they open again only by ``e``."""
        self._shown_modal: OperatorStepModal | None = None
        self._rows: list[tuple[Text, ...]] = []

    def compose(self) -> ComposeResult:
        yield Static(Text("No changeover running", style="dim"), id="head")
        with Vertical(id="progress-row"):
            yield ProgressBar(total=1, show_eta=False, id="progress")
            yield Static("", id="elapsed")
        table: DataTable[Text] = DataTable(id="steps", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="waiting")

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)
        if self.link.status is not None:
            self.show(self.link.status)

    def show(self, status: dict[str, Any]) -> None:
        """Render the changeover of ``status`` and open the modal for a new prompt."""
        changeover = status.get("changeover")
        self._in_progress = isinstance(changeover, dict)
        if isinstance(changeover, dict):
            self._changeover = changeover
        self._render_changeover()
        self._prompts = [p for p in status.get("prompts") or [] if isinstance(p, dict)]
        self._render_waiting()
        self._follow_prompts()

    def _render_changeover(self) -> None:
        co = self._changeover
        head = self.query_one("#head", Static)
        progress = self.query_one("#progress", ProgressBar)
        if co is None:
            head.update(Text("No changeover running", style="dim"))
            self.query_one("#progress-row").display = False
            self._fill([])
            self._tick()
            return
        title = Text.assemble(
            ("Changeover " if self._in_progress else "Last changeover ", "bold"),
            (str(co.get("changeover_id", "?")), "bold cyan"),
            f": {co.get('from_variant') or '(nothing)'} -> ",
            (str(co.get("to_variant", "?")), "bold"),
            f" for job {co.get('job_id', '?')}",
            ("" if self._in_progress else "  (ended)", "dim"),
        )
        head.update(title)
        self.query_one("#progress-row").display = True
        steps = [s for s in co.get("steps") or [] if isinstance(s, dict)]
        done = sum(1 for s in steps if s.get("status") in ("done", "skipped"))
        progress.update(total=max(len(steps), 1), progress=done)
        critical = set(co.get("critical_path") or [])
        self._fill([step_row(s, str(s.get("id")) in critical) for s in steps])
        self._tick()

    def _fill(self, rows: list[tuple[Text, ...]]) -> None:
        if rows == self._rows:
            return
        table = self.query_one("#steps", DataTable)
        cursor = table.cursor_row
        self._rows = rows
        table.clear()
        for row in rows:
            table.add_row(*row)
        if rows:
            table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))

    def _tick(self) -> None:
        """The time line: elapsed against planned, while the changeover runs."""
        line = self.query_one("#elapsed", Static)
        co = self._changeover
        if co is None:
            line.update("")
            return
        steps = [s for s in co.get("steps") or [] if isinstance(s, dict)]
        done = sum(1 for s in steps if s.get("status") in ("done", "skipped"))
        planned = co.get("planned_s")
        started = co.get("started_at")
        text = Text(f"{done}/{len(steps)} steps done", style="bold")
        if self._in_progress and isinstance(started, int | float):
            elapsed = max(0.0, self._clock() - started)
            over = isinstance(planned, int | float) and elapsed > planned
            text.append("   elapsed ")
            text.append(f"{seconds(elapsed)} s", style="bold red" if over else "bold")
            text.append(f" of {seconds(planned)} s planned")
            if over and isinstance(planned, int | float):
                text.append(f" ({seconds(elapsed - planned)} s over)", style="red")
        elif isinstance(planned, int | float):
            text.append(f"   planned {seconds(planned)} s")
        text.append(f"   {CRITICAL_MARK} critical path", style="dim")
        line.update(text)

    def _render_waiting(self) -> None:
        line = self.query_one("#waiting", Static)
        if not self._prompts:
            line.update("")
            return
        names = ", ".join(str(p.get("step", "?")) for p in self._prompts)
        line.update(
            Text.assemble(("Waiting for a person: ", "bold magenta"), names, ("   (e to answer)", "dim"))
        )

    def _follow_prompts(self) -> None:
        """Open the modal for a prompt not shown yet; close it when its step no longer waits."""
        pending = {prompt_key(p) for p in self._prompts}
        modal = self._shown_modal
        if modal is not None and modal.key not in pending:
            modal.close()  # answered here or elsewhere (the CLI, another terminal), or the plan ended
        self._popped &= pending
        if self._shown_modal is None:
            for prompt in self._prompts:
                if prompt_key(prompt) not in self._popped:
                    self._open(prompt)
                    break

    def _open(self, prompt: dict[str, Any]) -> None:
        self._popped.add(prompt_key(prompt))
        step = str(prompt.get("step", ""))

        async def confirm(evidence: str | None) -> Outcome:
            args: dict[str, Any] = {"step": step}
            if evidence is not None:
                args["evidence"] = evidence
            return await self.act("confirm", done=f"step {step} confirmed", **args)

        modal = OperatorStepModal(prompt, confirm)
        self._shown_modal = modal

        def closed(_: None) -> None:
            if self._shown_modal is modal:
                self._shown_modal = None

        self.app.push_screen(modal, closed)

    def action_answer_prompt(self) -> None:
        """Open the modal of the first step waiting for a person (again)."""
        if self._shown_modal is not None:
            return
        if not self._prompts:
            self.notify("No step is waiting for a person", severity="warning")
            return
        self._open(self._prompts[0])
