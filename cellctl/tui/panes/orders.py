"""The Orders screen: the running job and the queue, moved and cancelled by key, the scheduler's proposal, and
a form for a new order.

The queue's order is the controller's: a move sends ``reorder`` with the whole new order and the table shows
what the controller then reports, so two operators never see different queues.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Select, Static

from cellctl.api.protocol import parse_due
from cellctl.tui.format import num
from cellctl.tui.pane import Link, Outcome, Pane
from cellctl.tui.widgets.confirm import ConfirmModal

COLUMNS = ("#", "job", "order", "variant", "qty", "due", "status")

RUNNING_MARK = "▶"
"""The position column of the running job (shown first, above the queue; it is not part of the order)."""

Send = Callable[[dict[str, Any]], Awaitable[Outcome]]


def format_due(due: object) -> str:
    """A due time (epoch seconds) as local ``MM-DD HH:MM``; ``-`` when none."""
    if isinstance(due, bool) or not isinstance(due, int | float) or not math.isfinite(due):
        return "-"
    return datetime.fromtimestamp(due).astimezone().strftime("%m-%d %H:%M")


def _quantity(job: dict[str, Any]) -> str:
    qty = job.get("quantity")
    produced = job.get("produced")
    if isinstance(produced, int) and produced and isinstance(qty, int):
        return f"{produced}/{qty}"
    return num(qty, "d") if isinstance(qty, int) else "-"


def job_row(position: str, job: dict[str, Any]) -> tuple[str, ...]:
    """One row of the table for ``job`` (a JobView as the status carries it)."""
    return (
        position,
        str(job.get("job_id", "?")),
        str(job.get("order_id", "")),
        str(job.get("variant", "")),
        _quantity(job),
        format_due(job.get("due")),
        str(job.get("status", "")),
    )


def _cell(row: tuple[str, ...], value: str) -> str | Text:
    """A cell of ``row``: the running job's stand out."""
    return Text(value, style="bold cyan") if row[0] == RUNNING_MARK else value


def proposal_text(proposed: dict[str, Any] | None, queue: list[str]) -> Text:
    """The scheduler's proposed order with what it saves, or why there is none to apply."""
    if not proposed or list(proposed.get("job_ids") or []) == queue:
        return Text("Proposal: none (the queue's order is already the scheduler's)", style="dim")
    ids = [str(i) for i in proposed.get("job_ids") or []]
    new, old = proposed.get("changeover_s"), proposed.get("queue_changeover_s")
    text = Text("Proposal: ", style="bold")
    text.append(" ".join(ids), style="bold cyan")
    if isinstance(new, int | float) and isinstance(old, int | float):
        text.append(f"\n  changeovers {new:.0f} s instead of {old:.0f} s: ")
        text.append(f"saves {old - new:.0f} s", style="bold green")
    text.append("  (p applies it)", style="dim")
    return text


def current_text(job: dict[str, Any] | None, state: str) -> Text:
    """The running job in one line, with the cell's state."""
    text = Text("Now: ", style="bold")
    if not job:
        text.append("no job", style="dim")
    else:
        text.append(f"{job.get('job_id', '?')} ", style="bold cyan")
        text.append(f"order {job.get('order_id', '')}, {job.get('variant', '')}, ")
        text.append(f"{job.get('produced', 0)}/{job.get('quantity', '?')} made")
        bad = job.get("bad")
        if isinstance(bad, int) and bad:
            text.append(f" ({bad} bad)", style="bold red")
    if state:
        text.append(f"   cell {state}", style="dim")
    return text


def parse_parameters(text: str) -> dict[str, float]:
    """``"pitch_mm=12.5 width=3"`` (spaces or commas between) -> a dict; ValueError naming the bad item."""
    params: dict[str, float] = {}
    for item in (i for i in re.split(r"[\s,;]+", text.strip()) if i):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"parameter {item!r}: expected NAME=VALUE")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"parameter {item!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"parameter {item!r}: {value!r} is not a finite number")
        params[name] = number
    return params


def variants_seen(status: dict[str, Any]) -> list[str]:
    """Variants the status names (the set-up one, the running and the queued jobs'), sorted."""
    seen: set[str] = set()
    if isinstance(status.get("variant"), str):
        seen.add(status["variant"])
    jobs = [status.get("current_job"), *(status.get("queue") or [])]
    changeover = status.get("changeover")
    if isinstance(changeover, dict):
        seen.update(v for v in (changeover.get("from_variant"), changeover.get("to_variant")) if v)
    seen.update(str(j["variant"]) for j in jobs if isinstance(j, dict) and j.get("variant"))
    return sorted(seen)


class NewOrderForm(ModalScreen[bool]):
    """A new order: id, variant, quantity, parameters, due. Enter sends ``submit``; a refusal is shown here
    and the form stays open so the operator can correct it; Esc closes without sending."""

    DEFAULT_CSS = """
    NewOrderForm {
        align: center middle;
    }
    NewOrderForm > Vertical {
        width: 72;
        height: auto;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    NewOrderForm .row {
        height: auto;
        margin-top: 1;
    }
    NewOrderForm Label {
        width: 12;
        padding-top: 0;
    }
    NewOrderForm Input, NewOrderForm Select {
        width: 1fr;
    }
    NewOrderForm #error {
        color: $error;
        margin-top: 1;
        height: auto;
    }
    NewOrderForm .keys {
        color: $text-muted;
        margin-top: 1;
    }
    """

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "send", "Submit"),
    ]

    def __init__(self, send: Send, variants: Iterable[str]) -> None:
        super().__init__()
        self._send = send
        self._variants = list(variants)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]New order[/b]")
            with Horizontal(classes="row"):
                yield Label("order id")
                yield Input(placeholder="e.g. SO-4711", id="order_id", compact=True)
            if self._variants:
                with Horizontal(classes="row"):
                    yield Label("seen")
                    yield Select(
                        [(v, v) for v in self._variants],
                        prompt="pick a variant seen in the cell",
                        id="variant_pick",
                        compact=True,
                    )
            with Horizontal(classes="row"):
                yield Label("variant")
                yield Input(placeholder="recipe variant, e.g. oslo", id="variant", compact=True)
            with Horizontal(classes="row"):
                yield Label("quantity")
                yield Input(placeholder="parts", type="integer", id="quantity", compact=True)
            with Horizontal(classes="row"):
                yield Label("parameters")
                yield Input(placeholder="name=value ... (optional)", id="parameters", compact=True)
            with Horizontal(classes="row"):
                yield Label("due")
                yield Input(placeholder="2026-11-28T14:00+01:00 (optional)", id="due", compact=True)
            yield Static("", id="error", markup=False)
            yield Static("Enter / ctrl+s: submit    Tab: next field    Esc: close", classes="keys")

    def on_select_changed(self, event: Select.Changed) -> None:
        """A picked variant fills the variant field (which stays editable for one not seen yet)."""
        if isinstance(event.value, str):
            self.query_one("#variant", Input).value = event.value

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in any field sends the form."""
        event.stop()
        await self.action_send()

    def _value(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def _args(self) -> dict[str, Any]:
        """The ``submit`` arguments from the fields; ValueError saying which field is wrong."""
        order_id, variant = self._value("order_id"), self._value("variant")
        if not order_id:
            raise ValueError("order id: required")
        if not variant:
            raise ValueError("variant: required")
        try:
            quantity = int(self._value("quantity"))
        except ValueError:
            raise ValueError("quantity: a whole number of parts, at least 1") from None
        if quantity < 1:
            raise ValueError("quantity: a whole number of parts, at least 1")
        args: dict[str, Any] = {"order_id": order_id, "variant": variant, "quantity": quantity}
        params = parse_parameters(self._value("parameters"))
        if params:
            args["parameters"] = params
        due_text = self._value("due")
        if due_text:
            args["due"] = parse_due(due_text)
        return args

    async def action_send(self) -> None:
        """Check the fields, send ``submit``; close on success, show the refusal otherwise."""
        error = self.query_one("#error", Static)
        try:
            args = self._args()
        except ValueError as exc:
            error.update(str(exc))
            return
        error.update("sending...")
        outcome = await self._send(args)
        if outcome.ok:
            self.dismiss(True)
        else:
            error.update(f"refused ({outcome.code}): {outcome.message}")

    def action_close(self) -> None:
        """Close without sending."""
        self.dismiss(False)


class OrdersPane(Pane):
    """The running job and the queue in order, the scheduler's proposal, and the keys that change them."""

    title = "Orders"

    DEFAULT_CSS = """
    OrdersPane #current {
        height: auto;
        padding: 0 1;
    }
    OrdersPane #queue {
        height: 1fr;
    }
    OrdersPane #proposal {
        height: auto;
        padding: 0 1;
        border-top: solid $primary-darken-2;
    }
    """

    BINDINGS = [
        Binding("shift+up", "move(-1)", "Up"),
        Binding("shift+down", "move(1)", "Down"),
        Binding("d", "cancel_job", "Cancel"),
        Binding("p", "apply_proposal", "Proposal"),
        Binding("n", "new_order", "New order"),
    ]
    ACTION_COMMANDS = {
        "move": "reorder",
        "cancel_job": "cancel",
        "apply_proposal": "apply_proposal",
        "new_order": "submit",
    }

    def __init__(self, link: Link, *, id: str | None = None) -> None:
        super().__init__(link, id=id)
        self._rows: list[tuple[str, ...]] = []
        self._queue: list[str] = []
        self._running_job: str | None = None
        self._jobs: dict[str, dict[str, Any]] = {}
        self._follow: str | None = None
        """The job the cursor stays on across a refresh (the one just moved)."""
        self._status: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        yield Static(Text("Now: waiting for the controller", style="dim"), id="current")
        table: DataTable[str | Text] = DataTable(id="queue", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="proposal")

    def on_mount(self) -> None:
        if self.link.status is not None:
            self.show(self.link.status)

    @property
    def table(self) -> DataTable[str | Text]:
        """The queue table."""
        return self.query_one("#queue", DataTable)

    def selected_job(self) -> str | None:
        """The job under the cursor (the running one or a queued one), None on an empty table."""
        table = self.table
        if not self._rows or not 0 <= table.cursor_row < len(self._rows):
            return None
        return self._rows[table.cursor_row][1]

    def show(self, status: dict[str, Any]) -> None:
        """Render the running job, the queue and the proposal of ``status``."""
        self._status = status
        current = status.get("current_job") if isinstance(status.get("current_job"), dict) else None
        queue = [j for j in status.get("queue") or [] if isinstance(j, dict)]
        self.query_one("#current", Static).update(current_text(current, str(status.get("state", ""))))
        self._queue = [str(j.get("job_id")) for j in queue]
        self._running_job = str(current.get("job_id")) if current else None
        self._jobs = {str(j.get("job_id")): j for j in ([current] if current else []) + queue}
        rows = ([job_row(RUNNING_MARK, current)] if current else []) + [
            job_row(str(n), job) for n, job in enumerate(queue, start=1)
        ]
        self._fill(rows)
        proposed = status.get("proposed_order")
        self.query_one("#proposal", Static).update(
            proposal_text(proposed if isinstance(proposed, dict) else None, self._queue)
        )

    def _fill(self, rows: list[tuple[str, ...]]) -> None:
        """Replace the table's rows when they changed, keeping the cursor on the same job."""
        if rows == self._rows:
            return
        table = self.table
        if [r[:2] for r in rows] == [r[:2] for r in self._rows]:
            # The same jobs in the same places (a part made): change the cells that changed, in place.
            for index, (old, new) in enumerate(zip(self._rows, rows, strict=True)):
                for column, (was, now) in enumerate(zip(old, new, strict=True)):
                    if was != now:
                        table.update_cell_at(Coordinate(index, column), _cell(new, now))
            self._rows = rows
            return
        keep = self._follow or self.selected_job()
        self._follow = None
        index = table.cursor_row
        self._rows = rows
        table.clear()
        for row in rows:
            table.add_row(*(_cell(row, c) for c in row), key=row[1])
        ids = [r[1] for r in rows]
        if keep in ids:
            index = ids.index(keep)
        if rows:
            table.move_cursor(row=max(0, min(index, len(rows) - 1)))

    async def action_move(self, delta: int) -> None:
        """Move the selected queued job up (-1) or down (+1) by one: ``reorder`` with the whole new order."""
        job = self.selected_job()
        if job is None:
            return
        if job == self._running_job:
            self.notify("The running job stays first: move a queued one", severity="warning")
            return
        order = list(self._queue)
        here = order.index(job)
        there = here + delta
        if not 0 <= there < len(order):
            self.notify(f"{job} is already {'first' if delta < 0 else 'last'}", severity="warning")
            return
        order[here], order[there] = order[there], order[here]
        self._follow = job
        outcome = await self.act("reorder", job_ids=order, done=f"{job} moved to position {there + 1}")
        if not outcome.ok:
            self._follow = None

    def action_cancel_job(self) -> None:
        """Ask, then cancel the selected job (the controller refuses one in production)."""
        job_id = self.selected_job()
        if job_id is None:
            return
        job = self._jobs.get(job_id, {})
        question = (
            f"Cancel job {job_id} (order {job.get('order_id', '?')}: {job.get('quantity', '?')} x "
            f"{job.get('variant', '?')})?"
        )
        if job_id == self._running_job:
            question += "\nIt is the running job: the controller refuses while it is in production."

        async def answered(yes: bool | None) -> None:
            if yes:
                await self.act("cancel", job_id=job_id, done=f"{job_id} cancelled")

        self.app.push_screen(ConfirmModal(question), answered)

    async def action_apply_proposal(self) -> None:
        """Take the scheduler's proposed order (refused, and shown, when there is none)."""
        proposed = self._status.get("proposed_order")
        same = isinstance(proposed, dict) and list(proposed.get("job_ids") or []) == self._queue
        done = "the queue was in the proposed order already" if same else "the queue is in the proposed order"
        await self.act("apply_proposal", done=done)

    def action_new_order(self) -> None:
        """Open the new order form."""

        async def send(args: dict[str, Any]) -> Outcome:
            return await self.act("submit", done=f"order {args['order_id']} queued", **args)

        self.app.push_screen(NewOrderForm(send, variants_seen(self._status)))
