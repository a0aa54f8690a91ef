"""``cellctl demo``: the simulated cell and the controller in one process, running an order book to the end.

The one module of cellctl allowed to import device_sims (an ``ignore_imports`` line in the import contracts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cellctl.core.events import (
    ChangeoverEvent,
    ChangeoverStatus,
    Event,
    JobEvent,
    JobStatus,
    StepEvent,
    StepStatus,
)
from cellctl.core.ports import LinkState
from cellctl.engine import CellStatus, Engine, OrderRequest, State
from cellctl.engine.confirm import Prompt, PromptKind
from cellctl.engine.planner import OPERATOR_KIND
from cellctl.errors import ConfirmError
from cellctl.runtime.app import CellApp, Controller
from cellctl.schema.cell import ApiConfig, ChangeoverConfig, MqttConfig, StoreConfig
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.schema.recipe import Recipe
from device_sims.broker import PrivateBroker, find_mosquitto, port_open
from device_sims.harness import SimCell

BY = "demo"

DEMO_OPERATOR = "demo-operator"
"""Who answers operator steps in the demo: a script, named so the journal never passes it off as a person."""

_log = structlog.get_logger(__name__)

ORDER_BOOK: tuple[OrderRequest, ...] = (
    OrderRequest(order_id="SO-1001", variant="oslo", quantity=4, parameters={"staple_pitch": 11.0}),
    OrderRequest(order_id="SO-1002", variant="bergen", quantity=3),
    OrderRequest(order_id="SO-1003", variant="tromso", quantity=3, parameters={"staple_pitch": 8.5}),
)
"""Three orders over three variants: three changeovers, the first from an empty cell."""


@dataclass
class ChangeoverRecord:
    """One changeover as the demo saw it finish."""

    from_variant: str | None
    to_variant: str
    steps: int
    planned_s: float
    duration_s: float
    status: str


@dataclass
class DemoSummary:
    """What the demo reports at the end."""

    parts: int = 0
    good: int = 0
    bad: int = 0
    invalid: int = 0
    jobs_completed: int = 0
    changeovers: list[ChangeoverRecord] = field(default_factory=list)
    operator_steps: list[str] = field(default_factory=list)
    messages_recorded: int = 0
    messages_delivered: int = 0
    messages_buffered: int = 0
    broker: str = "none"
    wall_s: float = 0.0
    final_state: str = ""


@dataclass
class _Watch:
    """Follows the engine's events for the summary and the live view."""

    summary: DemoSummary
    jobs_done: asyncio.Event = field(default_factory=asyncio.Event)
    expected_jobs: int = 0
    last_event: str = ""

    def __call__(self, event: Event) -> None:
        self.summary.messages_recorded += 1
        if isinstance(event, ChangeoverEvent) and event.status is not ChangeoverStatus.STARTED:
            self.summary.changeovers.append(
                ChangeoverRecord(
                    event.from_variant,
                    event.to_variant,
                    len(event.steps),
                    event.planned_s,
                    event.duration_s or 0.0,
                    event.status.value,
                )
            )
        if isinstance(event, JobEvent) and event.status is JobStatus.COMPLETED:
            self.summary.jobs_completed += 1
            if self.summary.jobs_completed >= self.expected_jobs:
                self.jobs_done.set()
        shown = ("status", "state", "step", "verdict", "part")
        data = event.to_data()
        self.last_event = f"{event.kind}: " + ", ".join(f"{k}={data[k]}" for k in shown if k in data)


class ScriptedOperator:
    """The demo's stand-in for a person: answers every operator step with the evidence its recipe expects.

    ``answer_pending()`` confirms the operator-step prompts pending now as ``DEMO_OPERATOR`` (the step's DONE
    event journals who and when); or register it as an engine listener and run ``serve()`` in a task, so a
    WAITING operator step wakes it. Prompts of other kinds (a step in doubt after a crash) are left to a
    person.
    """

    def __init__(self, engine: Engine, recipes: dict[str, Recipe], *, by: str = DEMO_OPERATOR) -> None:
        self._engine = engine
        self._recipes = recipes
        self.by = by
        self.answered: list[str] = []
        self._wake = asyncio.Event()

    def __call__(self, event: Event) -> None:
        if (
            isinstance(event, StepEvent)
            and event.status is StepStatus.WAITING
            and event.step_kind == OPERATOR_KIND
        ):
            self._wake.set()

    async def serve(self) -> None:
        """Answer operator steps until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            # The step registers its prompt before it yields to the loop, so it is pending by now.
            await self.answer_pending()

    async def answer_pending(self) -> None:
        """Confirm every operator-step prompt pending now."""
        for prompt in self._engine.status().prompts:
            if prompt.kind is PromptKind.OPERATOR_STEP:
                await self._answer(prompt)

    def expected_evidence(self, prompt: Prompt) -> str | None:
        """The evidence the recipe of the running changeover expects for ``prompt`` (None: confirm only)."""
        changeover = self._engine.status().changeover
        if changeover is None or changeover.changeover_id != prompt.changeover:
            return None
        recipe = self._recipes.get(changeover.to_variant)
        step = recipe.operator_steps.get(prompt.step.removeprefix(f"{OPERATOR_KIND}:")) if recipe else None
        return step.evidence.expect if step is not None and step.evidence is not None else None

    async def _answer(self, prompt: Prompt) -> None:
        evidence = self.expected_evidence(prompt)
        try:
            await self._engine.confirm(prompt.step, evidence=evidence, by=self.by)
        except ConfirmError as exc:
            # Withdrawn meanwhile (a Hold), or evidence the script does not know: a person has to answer.
            _log.warning("demo operator could not confirm", step=prompt.step, error=str(exc))
            return
        self.answered.append(prompt.step)
        _log.info("demo operator confirmed", step=prompt.step, by=self.by, evidence=evidence)


def _view(status: CellStatus, watch: _Watch, broker: str) -> Group:
    """The live progress display: cell state, each order's progress bar, the running changeover."""
    head = Table.grid(padding=(0, 2))
    head.add_row(
        Text(f"cell {status.cell}", style="bold"),
        Text(f"PackML {status.state}", style="bold cyan"),
        Text(f"variant {status.variant or '-'}"),
        Text(f"parts {status.counters.parts}  good {status.counters.good}  bad {status.counters.bad}"),
        Text(f"broker {broker}"),
    )
    jobs = Table(box=None, show_header=True, header_style="dim")
    for column in ("order", "variant", "status", "progress", "made"):
        jobs.add_column(column)
    shown = ([status.current_job] if status.current_job else []) + list(status.queue)
    for job in shown:
        jobs.add_row(
            job.order_id,
            job.variant,
            job.status.value,
            ProgressBar(total=job.quantity, completed=job.produced, width=24),
            f"{job.produced}/{job.quantity}",
        )
    parts: list[Table | Text] = [head, jobs]
    if status.changeover is not None:
        co = status.changeover
        steps = Table(box=None, show_header=False)
        steps.add_column()
        steps.add_column()
        for step in co.steps:
            mark = {"done": "[green]done[/]", "started": "[yellow]running[/]", "failed": "[red]failed[/]"}
            steps.add_row(mark.get(step.status, "[dim]pending[/]"), step.description)
        parts.append(Text(f"changeover {co.from_variant or '(empty)'} -> {co.to_variant}", style="bold"))
        parts.append(steps)
    parts.append(Text(watch.last_event, style="dim"))
    return Group(*parts)


def _scaled_recipes(loaded: LoadedConfig, time_scale: float) -> LoadedConfig:
    """The recipes at the simulators' time scale: the ideal cycle (else OEE performance reads far above 100 %)
    and the operator steps' expected times (the scripted operator is quick)."""
    recipes = {
        variant: recipe.model_copy(
            update={
                "ideal_cycle_s": recipe.ideal_cycle_s * time_scale,
                "operator_steps": {
                    name: step.model_copy(update={"expected_s": step.expected_s * time_scale})
                    for name, step in recipe.operator_steps.items()
                },
            }
        )
        for variant, recipe in loaded.recipes.items()
    }
    return dataclasses.replace(loaded, recipes=recipes)


def _scaled(changeover: ChangeoverConfig, time_scale: float) -> ChangeoverConfig:
    """Expected step durations at the simulators' time scale, so planned and actual times compare."""
    steps = {
        kind: template.model_copy(update={"expected_s": template.expected_s * time_scale})
        for kind, template in changeover.steps.items()
    }
    return changeover.model_copy(update={"steps": steps})


@contextlib.asynccontextmanager
async def _broker_for(configured: MqttConfig, wanted: bool) -> AsyncIterator[tuple[MqttConfig | None, str]]:
    """The configured broker where it answers, else a private mosquitto where installed, else none."""
    if not wanted:
        yield None, "none (--no-broker)"
        return
    # Probing the port and starting mosquitto block: keep them off the event loop.
    if await asyncio.to_thread(port_open, configured.host, configured.port):
        yield configured, f"{configured.host}:{configured.port}"
        return
    if find_mosquitto() is None:
        yield None, "none reachable (mosquitto not installed)"
        return
    broker = PrivateBroker()
    try:
        await broker.astart()
        yield (
            configured.model_copy(update={"host": broker.host, "port": broker.port}),
            f"private mosquitto {broker.host}:{broker.port}",
        )
    finally:
        await asyncio.to_thread(broker.close)


async def run_demo(
    config_dir: str | Path,
    *,
    time_scale: float = 0.2,
    use_broker: bool = True,
    broker: MqttConfig | None = None,
    console: Console | None = None,
    orders: tuple[OrderRequest, ...] = ORDER_BOOK,
    timeout: float = 120.0,
) -> DemoSummary:
    """Start simulators and controller, run ``orders`` to the end, stop cleanly, return the summary.

    Telemetry goes to ``broker`` (default: the cell file's) where it answers, else to a private mosquitto.
    """
    console = console or Console()
    summary = DemoSummary()
    started = time.monotonic()

    async def script(controller: Controller, broker_name: str) -> None:
        summary.broker = broker_name
        await _drive(controller, summary, console, orders, broker_name, timeout)

    await _run_cell(config_dir, time_scale, broker, use_broker, script)
    summary.wall_s = time.monotonic() - started
    return summary


OperatorUi = Callable[[Path], Awaitable[None]]
"""Runs an operator's user interface against the control socket at the given path until the operator quits."""


async def run_demo_for_operator(
    config_dir: str | Path,
    ui: OperatorUi,
    *,
    time_scale: float = 0.2,
    use_broker: bool = True,
    broker: MqttConfig | None = None,
    orders: tuple[OrderRequest, ...] = ORDER_BOOK,
) -> None:
    """The demo cell with a person at the controls: ``orders`` are queued (as the plant's MES would) once the
    equipment answers, and ``ui`` runs against the control socket; nothing is scripted. The cell stops in
    order when ``ui`` returns."""

    async def operate(controller: Controller, _broker_name: str) -> None:
        await _links_up(controller)
        for order in orders:
            await controller.engine.submit(order, by=DEMO_MES)
        await ui(controller.config.resolve(controller.config.cell.api.socket))

    await _run_cell(config_dir, time_scale, broker, use_broker, operate)


DEMO_MES = "demo-mes"
"""Who queues the demo's order book when a person runs it."""


async def _run_cell(
    config_dir: str | Path,
    time_scale: float,
    broker: MqttConfig | None,
    use_broker: bool,
    script: Callable[[Controller, str], Awaitable[None]],
) -> None:
    """Simulators and controller in this process; ``script`` runs once the controller is ready, then the cell
    stops in order."""
    loaded = load_config(config_dir)
    async with (
        _broker_for(broker or loaded.cell.mqtt, use_broker) as (mqtt, broker_name),
        SimCell.from_config_dir(config_dir, time_scale=time_scale, seed=7) as sims,
    ):
        with tempfile.TemporaryDirectory(prefix="cellctl-demo-") as tmp:
            cell = sims.cell_config().model_copy(
                update={
                    "store": StoreConfig(path=str(Path(tmp) / "cellctl.db")),
                    "api": ApiConfig(socket=str(Path(tmp) / "cellctl.sock")),
                    "mqtt": mqtt or loaded.cell.mqtt,
                    "changeover": _scaled(loaded.cell.changeover, time_scale),
                }
            )
            app = CellApp(_scaled_recipes(loaded, time_scale).with_cell(cell), publish=mqtt is not None)
            stop = asyncio.Event()

            async def on_ready(controller: Controller) -> None:
                try:
                    await script(controller, broker_name)
                finally:
                    stop.set()

            await app.run(stop, on_ready=on_ready)


async def _drive(
    controller: Controller,
    summary: DemoSummary,
    console: Console,
    orders: tuple[OrderRequest, ...],
    broker_name: str,
    timeout: float,
) -> None:
    engine: Engine = controller.engine
    watch = _Watch(summary, expected_jobs=len(orders))
    unsubscribe = engine.add_listener(watch)
    operator = ScriptedOperator(engine, controller.config.recipes)
    try:
        async with asyncio.timeout(timeout):
            await _links_up(controller)
            await engine.command("reset", by=BY)
            await engine.wait_for(State.IDLE, timeout=30)
            for order in orders:
                await engine.submit(order, by=BY)
            await engine.command("start", by=BY)
            with Live(
                _view(engine.status(), watch, broker_name), console=console, refresh_per_second=8
            ) as live:
                while not watch.jobs_done.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.125):
                            await watch.jobs_done.wait()
                    # The scripted operator looks at the prompts as often as the view is refreshed.
                    await operator.answer_pending()
                    live.update(_view(engine.status(), watch, broker_name))
                await engine.wait_for(State.SUSPENDED, timeout=30)
                live.update(_view(engine.status(), watch, broker_name))
            if controller.publisher is not None:
                # Give the publisher a bounded moment to deliver the tail before the orderly stop.
                await controller.publisher.flush(5.0)
    finally:
        unsubscribe()
        status = engine.status()
        summary.parts, summary.good = status.counters.parts, status.counters.good
        summary.bad, summary.invalid = status.counters.bad, status.counters.invalid
        summary.final_state = status.state
        summary.operator_steps = list(operator.answered)
        summary.messages_buffered = await controller.store.outbox_count()
        publisher = controller.publisher
        summary.messages_delivered = publisher.delivered if publisher is not None else 0


async def _links_up(controller: Controller) -> None:
    """Wait until every device link is up: an operator resets a cell whose equipment answers."""
    changed = asyncio.Event()
    unsubscribes = [d.on_health(lambda _h: changed.set()) for d in controller.drivers.values()]
    try:
        while not all(d.health.state is LinkState.UP for d in controller.drivers.values()):
            changed.clear()
            await changed.wait()
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()


def render_summary(summary: DemoSummary, console: Console) -> None:
    """Print the end-of-demo summary."""
    console.print()
    console.print(
        f"[bold]Demo finished in {summary.wall_s:.1f} s[/] "
        f"(cell {summary.final_state} when the order book was done, then stopped cleanly)"
    )
    console.print(
        f"Parts made: {summary.parts}  good: {summary.good}  bad: {summary.bad}  invalid: {summary.invalid}"
        f"  (jobs completed: {summary.jobs_completed})"
    )
    table = Table(title="Changeovers", title_justify="left")
    for column in ("from", "to", "steps", "planned s", "actual s", "result"):
        table.add_column(column)
    for co in summary.changeovers:
        table.add_row(
            co.from_variant or "(empty)",
            co.to_variant,
            str(co.steps),
            f"{co.planned_s:.2f}",
            f"{co.duration_s:.2f}",
            co.status,
        )
    console.print(table)
    if summary.operator_steps:
        console.print(f"Operator steps confirmed by {DEMO_OPERATOR}: {', '.join(summary.operator_steps)}")
    console.print(
        f"Telemetry: {summary.messages_delivered} messages delivered to {summary.broker}, "
        f"{summary.messages_buffered} still buffered in the outbox"
    )
