"""``cellctl plan``: print the changeover plan from a setup to a variant's, offline or against the live cell.

Offline (``--from A --to B``) nothing is touched: A's target setup is the starting point. Live (``--to B
--live``) the drivers connect, the current setup is read back, and the drivers are closed before planning;
nothing is ever written. Step durations are the measured ones from the cell's store (opened read-only,
never created) where it holds enough of them, the configured ones otherwise (``--configured``: always).
Exit codes: 0 a plan was printed (an empty one too); 2 an invalid request (bad arguments, invalid
configuration, unknown variant, parameter out of range, a plan the planner refuses); 3 a device cannot be
reached or read.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellctl.core.clock import SystemClock
from cellctl.core.plans import ChangeoverPlan, DeviceSetup, PlanStep
from cellctl.core.ports import Driver, Health, LinkState
from cellctl.drivers import build_driver
from cellctl.engine.durations import DurationEstimate, StepDurations
from cellctl.engine.engine import build_profiles
from cellctl.engine.planner import OPERATOR_KIND, plan_changeover, read_setup, target_setup
from cellctl.errors import ConfigError, DeviceError, PlanError, StoreError
from cellctl.runtime.logging import configure_logging
from cellctl.schema.cell import CellConfig, StepKind, StepTemplate
from cellctl.schema.load import LoadedConfig, format_issues, load_config
from cellctl.store import steps as stored_steps

__all__ = [
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "PlanFigures",
    "add_parser",
    "duration_sources",
    "figures",
    "load_durations",
    "node_id",
    "read_live_setup",
    "render_dot",
    "render_json",
    "render_mermaid",
    "render_table",
    "run_plan",
    "run_plan_async",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
DEFAULT_TIMEOUT_S = 10.0
"""How long ``--live`` waits for every device's link by default."""

NO_CHANGEOVER = "setups already match: no changeover"


class _Refused(Exception):
    """An invalid request: the message is printed and the exit code is EXIT_USAGE."""


def add_parser(sub: Any) -> None:
    """Register ``plan``."""
    parser = sub.add_parser(
        "plan",
        help="print the changeover plan to a variant: steps, critical path, internal downtime",
        description="Plan the changeover to variant --to, from variant --from's setup (offline) or from the "
        "setup read back from the devices (--live; nothing is written). Exit codes: 0 plan printed; "
        "2 invalid request; 3 a device cannot be reached or read.",
    )
    parser.add_argument("--config", required=True, help="folder holding cell.yaml, or a cell file")
    parser.add_argument("--from", dest="from_variant", help="variant whose setup the cell has now (offline)")
    parser.add_argument("--to", dest="to_variant", required=True, help="variant to change over to")
    parser.add_argument("--live", action="store_true", help="read the current setup from the devices")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an order parameter of the target recipe, checked against its range (repeatable)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan and its figures as JSON")
    output.add_argument("--mermaid", action="store_true", help="print the plan as a Mermaid flowchart")
    output.add_argument("--dot", action="store_true", help="print the plan as a Graphviz digraph")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds --live waits for the devices' links (default 10)",
    )
    parser.add_argument(
        "--configured",
        action="store_true",
        help="use the configured step durations only, not those measured in the store",
    )
    parser.add_argument("--log-level", default="critical", help="log lines on stderr (default: none)")
    parser.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    """Plan and print; the exit code says whether the request was valid and the devices answered."""
    configure_logging(args.log_level, "console")
    return asyncio.run(run_plan_async(args))


async def run_plan_async(args: argparse.Namespace) -> int:
    """``run_plan`` inside a running event loop (for embedding)."""
    try:
        loaded, params = _request(args)
        if args.live:
            try:
                current = await read_live_setup(loaded, timeout=args.timeout)
            except (DeviceError, TimeoutError) as exc:
                sys.stderr.write(f"cellctl plan: cannot read the current setup: {exc}; nothing was planned\n")
                return EXIT_UNREACHABLE
        else:
            current = target_setup(loaded.recipes[args.from_variant], loaded.cell)
        durations, durations_from = (
            (StepDurations(), None) if args.configured else await load_durations(loaded)
        )
        plan = plan_changeover(
            current,
            loaded.recipes[args.to_variant],
            loaded.cell,
            from_variant=args.from_variant,
            durations=durations,
        )
    except _Refused as exc:
        text = str(exc)
        sys.stderr.write(
            f"cellctl plan: {text}\n" if "nothing moves" in text else f"cellctl plan: {text}; nothing moves\n"
        )
        return EXIT_USAGE
    except PlanError as exc:
        sys.stderr.write(f"cellctl plan: invalid plan: {exc}; nothing moves\n")
        return EXIT_USAGE
    sources = duration_sources(plan, loaded.cell, durations)
    if args.json:
        sys.stdout.write(
            render_json(plan, params=params, live=args.live, sources=sources, durations_from=durations_from)
            + "\n"
        )
    elif args.mermaid:
        sys.stdout.write(render_mermaid(plan))
    elif args.dot:
        sys.stdout.write(render_dot(plan))
    else:
        sys.stdout.write(render_table(plan, live=args.live, sources=sources, durations_from=durations_from))
    return EXIT_OK


async def load_durations(loaded: LoadedConfig) -> tuple[StepDurations, Path | None]:
    """The measured durations in the config's store and its path; none (and None) when there is no store.

    The file is opened read-only in a thread, never created. A store that cannot be read is reported on
    stderr and the configured durations are used: a plan preview must not depend on the journal.
    """
    path = loaded.resolve(loaded.cell.store.path)
    if not path.is_file():
        return StepDurations(), None
    try:
        samples = await asyncio.to_thread(stored_steps.read_only, path)
    except StoreError as exc:
        sys.stderr.write(f"cellctl plan: {exc}; using the configured step durations\n")
        return StepDurations(), None
    return StepDurations.from_samples(samples), path


def duration_sources(
    plan: ChangeoverPlan, cell: CellConfig, durations: StepDurations
) -> dict[str, DurationEstimate]:
    """Per step id: its expected duration and whether it was measured (n samples) or configured."""
    sources: dict[str, DurationEstimate] = {}
    for step in plan.steps:
        if step.kind == OPERATOR_KIND:
            # A person's step takes what its recipe says: the planner does not measure it per device.
            sources[step.id] = DurationEstimate(expected_s=step.expected_s, samples=0, measured=False)
            continue
        template = cell.changeover.steps.get(StepKind(step.kind), StepTemplate())
        sources[step.id] = durations.estimate(step.device, step.kind, template.expected_s)
    return sources


def _request(args: argparse.Namespace) -> tuple[LoadedConfig, dict[str, float]]:
    """The loaded config and the checked parameters; _Refused says what is wrong with the request."""
    if args.live and args.from_variant is not None:
        raise _Refused("--from and --live exclude each other: --live reads the current setup from the cell")
    if not args.live and args.from_variant is None:
        raise _Refused("say where the cell is: --from VARIANT (offline) or --live (read from the devices)")
    if not args.timeout > 0:
        raise _Refused("--timeout must be > 0")
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise _Refused(f"invalid configuration, nothing moves:\n{format_issues(exc)}") from exc
    known = ", ".join(sorted(loaded.recipes)) or "none"
    for option, variant in (("--from", args.from_variant), ("--to", args.to_variant)):
        if variant is not None and variant not in loaded.recipes:
            raise _Refused(f"{option}: unknown variant {variant!r} (known variants: {known})")
    return loaded, _parameters(loaded, args.to_variant, args.param)


def _parameters(loaded: LoadedConfig, variant: str, given: Sequence[str]) -> dict[str, float]:
    """The target recipe's parameters: its defaults, overridden by ``NAME=VALUE`` items within range."""
    recipe = loaded.recipes[variant]
    values = {name: p.default for name, p in recipe.parameters.items()}
    for item in given:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise _Refused(f"--param {item!r}: expected NAME=VALUE")
        spec = recipe.parameters.get(name)
        if spec is None:
            known = ", ".join(sorted(recipe.parameters)) or "none"
            raise _Refused(f"--param {name}: recipe {variant!r} has no such parameter (known: {known})")
        try:
            value = float(text)
        except ValueError as exc:
            raise _Refused(f"--param {name}: {text!r} is not a number") from exc
        if not spec.min <= value <= spec.max:
            units = f" {spec.units}" if spec.units else ""
            raise _Refused(
                f"--param {name}={value:g}: out of range [{spec.min:g}, {spec.max:g}]{units} "
                f"of recipe {variant!r}"
            )
        values[name] = value
    return values


# ------------------------------------------------------------------------------------------------------------
# Reading the live cell.


async def read_live_setup(
    loaded: LoadedConfig, *, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, DeviceSetup]:
    """The current setup read back from every device; CommError names the devices whose link stays down.

    The drivers run only while reading and are cancelled before returning; nothing is written.
    """
    clock = SystemClock()
    drivers: dict[str, Driver] = {
        name: build_driver(name, device, clock, resolve_path=loaded.resolve)
        for name, device in loaded.cell.devices.items()
    }
    failure: Exception | None = None
    setup: dict[str, DeviceSetup] = {}
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(d.run(), name=f"driver:{name}") for name, d in drivers.items()]
        try:
            healths = await asyncio.gather(*(_wait_for_link(d, timeout) for d in drivers.values()))
            down = [
                f"{name} ({health.state.value}{': ' + health.error if health.error else ''})"
                for name, health in zip(drivers, healths, strict=True)
                if health.state is not LinkState.UP
            ]
            if down:
                raise _Unreachable(", ".join(down), f"no link within {timeout:g} s; check the endpoints")
            profiles = build_profiles(loaded, drivers)
            async with asyncio.timeout(timeout):
                setup = await read_setup(profiles, loaded.cell, loaded.recipes)
        except (DeviceError, PlanError, TimeoutError) as exc:
            # Raised outside the task group, so callers see the error itself, not an ExceptionGroup.
            failure = exc
        finally:
            for task in tasks:
                task.cancel()
    if failure is not None:
        raise failure
    return setup


class _Unreachable(DeviceError):
    """Devices whose link did not come up (a CommError-like DeviceError naming all of them)."""


async def _wait_for_link(driver: Driver, timeout: float) -> Health:
    """The driver's health once UP, or once it has tried and is DOWN; its last health after ``timeout`` s."""
    settled = asyncio.Event()
    seen: list[Health] = [driver.health]

    def on_health(health: Health) -> None:
        seen.append(health)
        if health.state is LinkState.UP or (
            health.state is LinkState.DOWN and any(h.state is LinkState.CONNECTING for h in seen)
        ):
            settled.set()

    unsubscribe = driver.on_health(on_health)
    try:
        if driver.health.state is not LinkState.UP:
            async with asyncio.timeout(timeout):
                await settled.wait()
    except TimeoutError:
        pass
    finally:
        unsubscribe()
    return driver.health


# ------------------------------------------------------------------------------------------------------------
# Figures and renderings.


class PlanFigures:
    """What a plan predicts: critical path, internal downtime, the sequential sum and the external steps."""

    def __init__(self, plan: ChangeoverPlan) -> None:
        self.critical_path, self.critical_s = plan.critical_path()
        self.internal_path, self.internal_downtime_s = plan.critical_path(internal_only=True)
        self.total_s = plan.total_s
        self.external = [s for s in plan.order() if s.external]
        self.external_s = sum(s.expected_s for s in self.external)
        self.operator = [s for s in plan.order() if s.kind == OPERATOR_KIND]


def figures(plan: ChangeoverPlan) -> PlanFigures:
    """The figures of ``plan``."""
    return PlanFigures(plan)


def _head(plan: ChangeoverPlan, live: bool) -> str:
    start = "current setup (live)" if live else (plan.from_variant or "?")
    return f"changeover {start} -> {plan.to_variant}"


def _durations_line(sources: Mapping[str, DurationEstimate], durations_from: Path | None) -> str:
    measured = sum(1 for e in sources.values() if e.measured)
    where = f"the store {durations_from}" if durations_from is not None else "no store"
    return f"step durations: {measured} of {len(sources)} measured ({where}), the rest configured"


def render_table(
    plan: ChangeoverPlan,
    *,
    live: bool = False,
    sources: Mapping[str, DurationEstimate] | None = None,
    durations_from: Path | None = None,
) -> str:
    """The plan as a table in dependency order (``*`` marks the critical path), then its figures.

    With ``sources`` a column says per step whether its duration is measured (n samples) or configured.
    """
    head = _head(plan, live)
    if plan.is_empty:
        return f"{head}: {NO_CHANGEOVER}\n"
    fig = figures(plan)
    on_path = set(fig.critical_path)
    header: tuple[str, ...] = (
        "",
        "step",
        "device",
        "description",
        "after",
        "expected s",
        "timeout s",
        "smed",
    )
    rows: list[tuple[str, ...]] = [
        (
            "*" if step.id in on_path else "",
            step.id,
            step.device or "",
            step.description,
            ", ".join(step.after),
            f"{step.expected_s:g}",
            f"{step.timeout_s:g}",
            "external" if step.external else "internal",
        )
        for step in plan.order()
    ]
    if sources is not None:
        header = (*header, "duration")
        rows = [
            (*row, sources[step.id].describe() if step.id in sources else "configured")
            for row, step in zip(rows, plan.order(), strict=True)
        ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    right = {5, 6}
    lines = [f"{head}: {len(plan.steps)} steps"]
    for row in (header, *rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    external = (
        f"{', '.join(s.id for s in fig.external)} ({fig.external_s:g} s, while the previous job runs)"
        if fig.external
        else "none"
    )
    lines += [
        "",
        f"critical path (*): {' -> '.join(fig.critical_path)} ({fig.critical_s:g} s)",
        f"predicted internal downtime: {fig.internal_downtime_s:g} s",
        f"sum of all step durations: {fig.total_s:g} s",
        f"runs external: {external}",
    ]
    if sources is not None:
        lines.append(_durations_line(sources, durations_from))
    if fig.operator:
        lines += ["", "operator steps (a person does them and confirms with `cellctl ctl confirm STEP`):"]
        lines += [f"  {_operator_line(step)}" for step in fig.operator]
    return "\n".join(lines) + "\n"


def _operator_line(step: PlanStep) -> str:
    where = f" at {step.device}" if step.device else ""
    proof = f"; evidence: {step.evidence}" if step.evidence else "; confirm only"
    return f"{step.id}{where}: {step.instruction}{proof} (times out after {step.timeout_s:g} s)"


def render_json(
    plan: ChangeoverPlan,
    *,
    params: Mapping[str, float] | None = None,
    live: bool = False,
    sources: Mapping[str, DurationEstimate] | None = None,
    durations_from: Path | None = None,
) -> str:
    """The plan's ``to_dict()`` plus its figures and the order's parameters, as JSON.

    With ``sources`` each step carries ``duration_source`` (measured/configured) and ``duration_samples``.
    """
    fig = figures(plan)
    data = plan.to_dict()
    if sources is not None:
        for step in data["steps"]:
            estimate = sources.get(step["id"])
            step["duration_source"] = estimate.source if estimate is not None else "configured"
            step["duration_samples"] = estimate.samples if estimate is not None else 0
        data["durations_from"] = str(durations_from) if durations_from is not None else None
    data.update(
        {
            "source": "live" if live else "offline",
            "empty": plan.is_empty,
            "order": [s.id for s in plan.order()],
            "critical_path_s": fig.critical_s,
            "internal_critical_path": list(fig.internal_path),
            "internal_downtime_s": fig.internal_downtime_s,
            "external_steps": [s.id for s in fig.external],
            "external_s": fig.external_s,
            "operator_steps": [s.id for s in fig.operator],
            "parameters": dict(params or {}),
        }
    )
    return json.dumps(data, indent=2)


def node_id(step_id: str) -> str:
    """A graph node id for a step id (letters, digits and underscores only)."""
    return "s_" + re.sub(r"[^A-Za-z0-9_]", "_", step_id)


def _label(step: PlanStep) -> str:
    smed = "external" if step.external else "internal"
    label = f"{step.id}\n{step.description}\n{step.expected_s:g} s, {smed}"
    if step.kind == OPERATOR_KIND:
        label += f"\nOPERATOR, evidence: {step.evidence}" if step.evidence else "\nOPERATOR, confirm only"
    return label


def _critical_edges(plan: ChangeoverPlan) -> set[tuple[str, str]]:
    path = figures(plan).critical_path
    return set(itertools.pairwise(path))


def render_mermaid(plan: ChangeoverPlan) -> str:
    """The plan as a Mermaid ``flowchart``: one node per step, edges from ``after``, critical path in red."""
    lines = ["flowchart LR"]
    if plan.is_empty:
        lines.append(f'  empty["{NO_CHANGEOVER}"]')
        return "\n".join(lines) + "\n"
    on_path = set(figures(plan).critical_path)
    critical_edges = _critical_edges(plan)
    for step in plan.order():
        label = _label(step).replace('"', "#quot;").replace("\n", "<br/>")
        shape = f'(["{label}"])' if step.external else f'["{label}"]'
        if step.kind == OPERATOR_KIND:
            shape = f'{{{{"{label}"}}}}'  # a hexagon: a person's step, whatever its SMED class
        lines.append(f"  {node_id(step.id)}{shape}")
    edge_index = 0
    styled: list[int] = []
    for step in plan.order():
        for dep in step.after:
            lines.append(f"  {node_id(dep)} --> {node_id(step.id)}")
            if (dep, step.id) in critical_edges:
                styled.append(edge_index)
            edge_index += 1
    lines.append("  classDef critical stroke:#d00,stroke-width:3px")
    lines.append(f"  class {','.join(node_id(s) for s in sorted(on_path))} critical")
    operator = [node_id(s.id) for s in plan.order() if s.kind == OPERATOR_KIND]
    if operator:
        lines.append("  classDef operator fill:#ffe9a8")
        lines.append(f"  class {','.join(operator)} operator")
    if styled:
        lines.append(f"  linkStyle {','.join(map(str, styled))} stroke:#d00,stroke-width:3px")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(plan: ChangeoverPlan) -> str:
    """The plan as a Graphviz digraph: one node per step, edges from ``after``, critical path in red."""
    lines = ["digraph changeover {", "  rankdir=LR;", "  node [shape=box];"]
    if plan.is_empty:
        lines.append(f"  empty [label={_dot_quote(NO_CHANGEOVER)}];")
        return "\n".join([*lines, "}"]) + "\n"
    on_path = set(figures(plan).critical_path)
    critical_edges = _critical_edges(plan)
    for step in plan.order():
        style = ["style=rounded"] if step.external else []
        if step.kind == OPERATOR_KIND:
            style = ["shape=hexagon", "style=filled", 'fillcolor="#ffe9a8"']
        if step.id in on_path:
            style += ["color=red", "penwidth=2"]
        attrs = ", ".join([f"label={_dot_quote(_label(step))}", *style])
        lines.append(f"  {_dot_quote(step.id)} [{attrs}];")
    for step in plan.order():
        for dep in step.after:
            attrs = " [color=red, penwidth=2]" if (dep, step.id) in critical_edges else ""
            lines.append(f"  {_dot_quote(dep)} -> {_dot_quote(step.id)}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"
