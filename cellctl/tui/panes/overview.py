"""The Overview tab: what the cell does and why it stopped, at a glance, and the PackML command keys."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from cellctl.tui.format import is_mine, lease_holder, lease_text, pct, severity_style
from cellctl.tui.pane import Link, Pane
from cellctl.tui.widgets.confirm import ConfirmModal

COMMAND_KEYS: dict[str, str] = {
    "start": "s",
    "stop": "t",
    "hold": "h",
    "unhold": "u",
    "reset": "r",
    "clear": "c",
    "abort": "x",
}
"""The PackML command each key sends (suspend/unsuspend are the machine's own, not an operator's)."""

STATE_CLASS: dict[str, str] = {
    "Execute": "-running",
    "Idle": "-ready",
    "Held": "-paused",
    "Holding": "-paused",
    "Suspended": "-paused",
    "Suspending": "-paused",
    "Stopped": "-stopped",
    "Stopping": "-stopped",
    "Aborted": "-fault",
    "Aborting": "-fault",
}
"""The colour of the state box: green producing, blue ready, yellow paused, red stopped or aborted."""

TOP_ALARMS = 4


class ConfirmAbort(ModalScreen[bool]):
    """Asks before an Abort: y aborts, n or Escape does nothing."""

    DEFAULT_CSS = """
    ConfirmAbort {
        align: center middle;
    }
    ConfirmAbort > Vertical {
        width: 60;
        height: auto;
        border: thick $error;
        background: $surface;
        padding: 1 2;
    }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "Yes, abort"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Abort the cell?[/b]")
            yield Static("Every running step stops now; Clear and Reset come before the next job.")
            yield Label("[b]y[/b] abort    [b]n[/b] / Esc keep running")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class OverviewPane(Pane):
    """State and reason, mode, current order and progress, counters and yield, OEE, top alarms, commands."""

    title = "Overview"
    can_focus = True

    DEFAULT_CSS = """
    OverviewPane {
        padding: 0 1;
    }
    OverviewPane #ov-top {
        height: 3;
    }
    OverviewPane #ov-state {
        width: 24;
        height: 3;
        border: round $secondary;
        content-align: center middle;
        text-style: bold;
    }
    OverviewPane #ov-state.-running { border: round $success; color: $success; }
    OverviewPane #ov-state.-ready { border: round $primary; color: $primary; }
    OverviewPane #ov-state.-paused { border: round $warning; color: $warning; }
    OverviewPane #ov-state.-stopped { border: round $error; color: $error; }
    OverviewPane #ov-state.-fault { border: round $error; color: $text; background: $error 40%; }
    OverviewPane #ov-side {
        padding: 0 0 0 2;
        height: 3;
    }
    OverviewPane .ov-line {
        height: auto;
    }
    """

    BINDINGS = [
        Binding("s", "packml('start')", "Start"),
        Binding("t", "packml('stop')", "Stop"),
        Binding("h", "packml('hold')", "Hold"),
        Binding("u", "packml('unhold')", "Unhold"),
        Binding("r", "packml('reset')", "Reset"),
        Binding("c", "packml('clear')", "Clear"),
        Binding("x", "abort", "Abort"),
        Binding("l", "lease('take')", "Take control"),
        Binding("l", "lease('release')", "Release control"),
        Binding("g", "sign_off", "Sign off first article"),
    ]
    ACTION_COMMANDS = {"packml": "command", "abort": "command", "sign_off": "sign_off"}

    def __init__(self, link: Link, *, id: str | None = None) -> None:
        super().__init__(link, id=id)
        self._allowed: frozenset[str] = frozenset()
        self._status: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="ov-top"):
            yield Static("-", id="ov-state")
            with Vertical(id="ov-side"):
                yield Static("", id="ov-mode", classes="ov-line")
                yield Static("", id="ov-reason", classes="ov-line")
                yield Static("", id="ov-lease", classes="ov-line")
        yield Static("", id="ov-job", classes="ov-line")
        yield Static("", id="ov-counters", classes="ov-line")
        yield Static("", id="ov-oee", classes="ov-line")
        yield Static("", id="ov-alarms", classes="ov-line")

    def on_mount(self) -> None:
        if self.link.status is not None:
            self.show(self.link.status)

    # --- rendering --------------------------------------------------------------------------------------

    def show(self, status: dict[str, Any]) -> None:
        self._status = status
        self._allowed = frozenset(str(c).lower() for c in status.get("allowed_commands") or ())
        if not self.is_mounted:
            return
        state = str(status.get("state", "?"))
        box = self.query_one("#ov-state", Static)
        box.update(state.upper())
        box.set_classes(STATE_CLASS.get(state, ""))
        mode = str(status.get("mode", "?"))
        self.query_one("#ov-mode", Static).update(Text.assemble(("mode  ", "dim"), mode))
        reason = str(status.get("reason") or "")
        self.query_one("#ov-reason", Static).update(
            Text.assemble(("why   ", "dim"), (reason, "bold")) if reason else Text("")
        )
        self.query_one("#ov-lease", Static).update(
            Text.assemble(("ctrl  ", "dim"), lease_text(status, self._caller()))
        )
        self.query_one("#ov-job", Static).update(_job_line(status))
        self.query_one("#ov-counters", Static).update(_counters_line(status))
        self.query_one("#ov-oee", Static).update(_oee_line(status))
        self.query_one("#ov-alarms", Static).update(_alarms_block(status))
        self.refresh_bindings()

    def _caller(self) -> dict[str, Any]:
        caller = getattr(self.link, "caller", None)
        return caller if isinstance(caller, dict) else {}

    # --- actions ----------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the commands the current state allows are shown in the footer (and run)."""
        if not super().check_action(action, parameters):
            return False
        if action == "packml" and parameters:
            return str(parameters[0]) in self._allowed
        if action == "abort":
            return "abort" in self._allowed
        if action == "lease" and parameters:
            mine = is_mine(lease_holder(self._status), self._caller())
            return (parameters[0] == "release") == mine and self.may("lease", action=parameters[0])
        if action == "sign_off":
            return isinstance(self._status.get("qualification"), dict)
        return True

    async def action_packml(self, name: str) -> None:
        await self.act("command", name=name, done=f"{name}: accepted")

    def action_abort(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self.act("command", name="abort", done="abort: accepted"), group="abort")

        self.app.push_screen(ConfirmAbort(), answered)

    def action_sign_off(self) -> None:
        """End the open first-article qualification now (asks first; journaled with who signed)."""
        gate = self._status.get("qualification")
        if not isinstance(gate, dict):
            return
        question = (
            f"Sign off the first-article qualification of {gate.get('variant', '?')} now "
            f"({gate.get('passes', 0)} of {gate.get('needed', 0)} passes so far)?"
        )

        def answered(yes: bool | None) -> None:
            if yes:
                work = self.act("sign_off", note="signed off in the TUI", done="first article signed off")
                self.run_worker(work, group="sign_off")

        self.app.push_screen(ConfirmModal(question), answered)

    async def action_lease(self, action: str) -> None:
        """Take the control lease (a higher role takes it over), or release it when this TUI holds it."""
        done = "you have control" if action == "take" else "control released"
        await self.act("lease", action=action, done=done)


def _job_line(status: dict[str, Any]) -> Text:
    job = status.get("current_job")
    queued = len(status.get("queue") or ())
    line = Text.assemble(("order ", "dim"))
    if isinstance(job, dict):
        line.append(str(job.get("order_id", "?")), "bold")
        line.append(f"  {job.get('variant', '?')}  ")
        produced, quantity = job.get("produced", 0), job.get("quantity", 0)
        line.append(f"{produced}/{quantity} parts", "bold")
        line.append(f"  {job.get('status', '')}", "dim")
    else:
        setup = status.get("variant")
        line.append("none", "dim")
        line.append(f"  set up for {setup}" if setup else "  not set up", "dim")
    changeover = status.get("changeover")
    if isinstance(changeover, dict):
        line.append(
            f"  changeover -> {changeover.get('to_variant', '?')} "
            f"{changeover.get('done', 0)}/{changeover.get('total', 0)}",
            "yellow",
        )
    gate = status.get("qualification")
    if isinstance(gate, dict):
        line.append(f"  first article {gate.get('passes', 0)}/{gate.get('needed', 0)}", "yellow")
    line.append(f"  queue {queued}", "dim")
    return line


def _counters_line(status: dict[str, Any]) -> Text:
    counters = status.get("counters") or {}
    good, bad = int(counters.get("good", 0)), int(counters.get("bad", 0))
    invalid = int(counters.get("invalid", 0))
    judged = good + bad
    line = Text.assemble(("parts ", "dim"), ("good ", "dim"), (str(good), "bold green"))
    line.append("  bad ", "dim")
    line.append(str(bad), "bold red" if bad else "bold")
    if invalid:
        line.append("  invalid ", "dim")
        line.append(str(invalid), "bold yellow")
    line.append("  yield ", "dim")
    line.append(pct(good / judged if judged else None), "bold")
    return line


def _oee_line(status: dict[str, Any]) -> Text:
    oee = status.get("oee") or {}
    line = Text.assemble(("OEE   ", "dim"), (pct(oee.get("oee")), "bold"))
    for key, name in (("availability", "A"), ("performance", "P"), ("quality", "Q")):
        line.append(f"  {name} ", "dim")
        line.append(pct(oee.get(key)))
    window = (oee.get("window") or {}).get("name")
    if window:
        line.append(f"  ({window})", "dim")
    return line


def _alarms_block(status: dict[str, Any]) -> Text:
    alarms = [a for a in status.get("alarms") or () if isinstance(a, dict)]
    if not alarms:
        return Text.assemble(("alarms ", "dim"), ("none", "green"))
    text = Text.assemble(("alarms ", "dim"), (f"{len(alarms)}", "bold"), ("  (tab 5 to acknowledge)", "dim"))
    for alarm in alarms[:TOP_ALARMS]:
        severity = str(alarm.get("severity", ""))
        text.append("\n  ")
        text.append(f"{severity:<8} ", severity_style(severity))
        text.append(f"{alarm.get('id', '?')}  ", "bold")
        text.append(str(alarm.get("message", "")))
        if not alarm.get("active"):
            text.append("  cleared", "dim")
    if len(alarms) > TOP_ALARMS:
        text.append(f"\n  ... {len(alarms) - TOP_ALARMS} more", "dim")
    return text
