"""Changeover bench: the sequencer's wall time on the simulated cell against the plan's critical path, and its
overhead per step on a synthetic plan of zero-duration steps.

``.venv/bin/python bench/changeover.py [--json] [--time-scale X] [--repeats N] [--steps N]``

1. The example cell (``config/``) on device_sims (in process, free loopback ports, time scale X) with the real
   drivers, profiles, planner and sequencer (the recipes' operator steps left out: a person's time is not the
   machine's). Every ordered pair of variants is planned from the target setup
   of the first; the pair with the largest expected critical path (ties: most steps, then by name) is run N
   times, each time after driving the cell to the FROM variant (untimed). Reported: the wall time of
   ``Sequencer.run``; the critical path from the templates' expected durations scaled by X; the critical
   path recomputed from each step's measured duration (StepEvent DONE ``duration_s``, the fair comparison:
   target wall <= 1.05 x it); the sequential sum of the measured durations; and, per step, the measured
   duration against what the simulator itself takes (config/sims.yaml x X): the excess is the link's
   latency (Modbus poll interval, OPC UA publishing interval) on each handshake wait.
2. A synthetic plan of N zero-duration steps (a root, parallel chains on soft devices, a join), run through
   the sequencer with a registry whose handler does nothing: steps per second and microseconds per step,
   for N and N/10 (to show how the cost per step grows with the plan), on asyncio's loop and uvloop, and the
   cost of one ``ChangeoverPlan.ready()`` call (asked after every step) at that size.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util
from ruamel.yaml import YAML

from cellctl.core.clock import SystemClock
from cellctl.core.devices import Profile
from cellctl.core.events import Event, StepEvent, StepStatus
from cellctl.core.plans import ChangeoverPlan, PlanStep
from cellctl.core.ports import Driver, LinkState
from cellctl.drivers import build_driver
from cellctl.drivers.soft import SoftDriver
from cellctl.engine.engine import build_profiles
from cellctl.engine.planner import plan_changeover, read_setup, target_setup
from cellctl.engine.sequencer import Sequencer
from cellctl.engine.steps import StepContext, StepHandler
from cellctl.schema.load import LoadedConfig, load_config
from device_sims.harness import SimCell

CONFIG = _util.REPO / "config"
TARGET = 1.05
LINK_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 30.0


class CollectingSink:
    """An EventSink that keeps every event in memory."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def record(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)

    def done_durations(self) -> dict[str, float]:
        return {
            e.step: e.duration_s
            for e in self.events
            if isinstance(e, StepEvent) and e.status is StepStatus.DONE and e.duration_s is not None
        }


# ------------------------------------------------------------------------------------------ part 1: the cell


def _with_durations(plan: ChangeoverPlan, durations: Mapping[str, float]) -> ChangeoverPlan:
    steps = tuple(dataclasses.replace(s, expected_s=durations[s.id]) for s in plan.steps)
    return ChangeoverPlan(plan.from_variant, plan.to_variant, steps)


def _sim_nominal(step: PlanStep, sims: dict[str, Any], scale: float, before: Mapping[str, float]) -> float:
    """How long the simulator itself takes for ``step`` (sims.yaml x time scale), no link latency."""
    kind = step.kind
    if kind == "tool_change":
        return float(sims["tool_changer"]["change_s"]) * scale
    if kind in ("fixture_unclamp", "fixture_clamp"):
        return float(sims["fixture"]["clamp_s"]) * scale
    if kind == "fixture_move":
        speed = float(sims["fixture"]["speed_mm_s"])
        dist = max(
            (abs(float(v) - before.get(k, float(v))) for k, v in step.params if isinstance(v, int | float)),
            default=0.0,
        )
        return dist / speed * scale
    if kind == "robot_program":
        return float(sims["robot"]["program_load_s"]) * scale
    return 0.0


async def _link_up(driver: Driver, timeout: float) -> None:
    up = asyncio.Event()

    def on_health(_health: Any) -> None:
        if driver.health.state is LinkState.UP:
            up.set()

    unsubscribe = driver.on_health(on_health)
    try:
        if driver.health.state is not LinkState.UP:
            async with asyncio.timeout(timeout):
                await up.wait()
    finally:
        unsubscribe()


def _machine_only(loaded: LoadedConfig) -> LoadedConfig:
    """The recipes without their operator steps: the bench measures the machine, and a person's minutes would
    dwarf its seconds (nobody is there to confirm them anyway)."""
    recipes = {v: r.model_copy(update={"operator_steps": {}}) for v, r in loaded.recipes.items()}
    return dataclasses.replace(loaded, recipes=recipes)


def _heaviest(loaded: LoadedConfig) -> tuple[str, str, list[dict[str, Any]]]:
    cell = loaded.cell
    candidates: list[tuple[float, int, str, str]] = []
    table: list[dict[str, Any]] = []
    for a, ra in loaded.recipes.items():
        for b, rb in loaded.recipes.items():
            if a == b:
                continue
            plan = plan_changeover(target_setup(ra, cell), rb, cell, from_variant=a)
            _path, cp = plan.critical_path()
            candidates.append((cp, len(plan.steps), a, b))
            table.append({"from": a, "to": b, "steps": len(plan.steps), "critical_path_s": cp})
    _cp, _n, a, b = max(candidates)
    return a, b, table


async def bench_cell(scale: float, repeats: int) -> dict[str, Any]:
    """Part 1: the heaviest changeover of the example cell on the simulators, ``repeats`` times."""
    loaded = _machine_only(load_config(CONFIG))
    sims = YAML(typ="safe").load((CONFIG / "sims.yaml").read_text())
    frm, to, pairs = _heaviest(loaded)
    clock = SystemClock()
    sim = SimCell.from_config_dir(CONFIG, time_scale=scale, ephemeral_ports=True)
    runs: list[dict[str, Any]] = []
    async with sim:
        live = loaded.with_cell(sim.cell_config())
        drivers: dict[str, Driver] = {
            name: build_driver(name, device, clock, resolve_path=live.resolve)
            for name, device in live.cell.devices.items()
        }
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(d.run(), name=f"driver:{n}") for n, d in drivers.items()]
            try:
                await asyncio.gather(*(_link_up(d, LINK_TIMEOUT_S) for d in drivers.values()))
                profiles = build_profiles(live, drivers)
                for i in range(repeats):
                    runs.append(await _one_run(live, profiles, clock, frm, to, i, sims, scale))
            finally:
                for task in tasks:
                    task.cancel()
    poll = {
        name: getattr(d, "poll_interval_s", None) or d.model_dump().get("poll_interval_s")
        for name, d in live.cell.devices.items()
        if d.driver == "modbus"
    }
    opcua = {
        name: d.model_dump().get("publishing_interval_ms")
        for name, d in live.cell.devices.items()
        if d.driver == "opcua"
    }

    def col(key: str) -> dict[str, float | int]:
        return _util.spread([r[key] for r in runs])

    excess: dict[str, dict[str, float | int]] = {}
    for step in runs[0]["steps"]:
        excess[step] = _util.spread([r["steps"][step]["excess_s"] for r in runs])
    return {
        "time_scale": scale,
        "from": frm,
        "to": to,
        "pairs": pairs,
        "modbus_poll_interval_s": poll,
        "opcua_publishing_interval_ms": opcua,
        "runs": runs,
        "wall_s": col("wall_s"),
        "expected_critical_scaled_s": runs[0]["expected_critical_scaled_s"],
        "measured_critical_s": col("measured_critical_s"),
        "measured_sum_s": col("measured_sum_s"),
        "sim_critical_s": col("sim_critical_s"),
        "wall_over_measured_critical": col("wall_over_measured_critical"),
        "wall_over_expected_scaled": col("wall_over_expected_scaled"),
        "wall_over_measured_sum": col("wall_over_measured_sum"),
        "wall_over_sim_critical": col("wall_over_sim_critical"),
        "step_excess_s": excess,
        "target": TARGET,
        "target_met": col("wall_over_measured_critical")["median"] <= TARGET,
    }


async def _one_run(
    live: LoadedConfig,
    profiles: Mapping[str, Profile],
    clock: SystemClock,
    frm: str,
    to: str,
    index: int,
    sims: dict[str, Any],
    scale: float,
) -> dict[str, Any]:
    cell = live.cell
    async with asyncio.timeout(RUN_TIMEOUT_S):
        # Drive the cell to the FROM variant (untimed), then plan from what the devices report.
        setup = await read_setup(profiles, cell, live.recipes)
        prep = plan_changeover(setup, live.recipes[frm], cell, from_variant=None)
        if prep.steps:
            await Sequencer(profiles, CollectingSink(), clock).run(
                prep, changeover_id=f"prep-{index}", job_id="bench"
            )
        setup = await read_setup(profiles, cell, live.recipes)
        plan = plan_changeover(setup, live.recipes[to], cell, from_variant=frm)
        sink = CollectingSink()
        sequencer = Sequencer(profiles, sink, clock)
        began = time.perf_counter()
        await sequencer.run(plan, changeover_id=f"bench-{index}", job_id="bench")
        wall = time.perf_counter() - began
    measured = sink.done_durations()
    _path, expected_cp = plan.critical_path()
    measured_path, measured_cp = _with_durations(plan, measured).critical_path()
    before = {k: float(v) for d in setup.values() for k, v in d.positions.items()}
    nominal = {s.id: _sim_nominal(s, sims, scale, before) for s in plan.steps}
    _sp, sim_cp = _with_durations(plan, nominal).critical_path()
    measured_sum = sum(measured.values())
    return {
        "wall_s": wall,
        "expected_critical_scaled_s": expected_cp * scale,
        "measured_critical_s": measured_cp,
        "measured_critical_path": list(measured_path),
        "measured_sum_s": measured_sum,
        "sim_critical_s": sim_cp,
        "wall_over_measured_critical": wall / measured_cp,
        "wall_over_expected_scaled": wall / (expected_cp * scale),
        "wall_over_measured_sum": wall / measured_sum,
        "wall_over_sim_critical": wall / sim_cp if sim_cp > 0 else float("nan"),
        "steps": {
            s.id: {
                "measured_s": measured[s.id],
                "sim_s": nominal[s.id],
                "excess_s": measured[s.id] - nominal[s.id],
                "expected_scaled_s": s.expected_s * scale,
                "after": list(s.after),
            }
            for s in plan.steps
        },
    }


# ------------------------------------------------------------------------------------ part 2: the overhead


async def _noop(_step: PlanStep, _ctx: StepContext) -> None:
    return None


NOOP_REGISTRY: dict[str, StepHandler] = {"noop": StepHandler("noop", _noop, None)}


def synthetic_plan(n: int, chains: int = 10) -> tuple[ChangeoverPlan, list[str]]:
    """``n`` steps: a root, ``chains`` parallel chains (one soft device each), a join after every chain."""
    devices = [f"soft{i}" for i in range(chains)]
    steps: list[PlanStep] = [PlanStep("root", "noop", None, "root", expected_s=0.0)]
    body = n - 2
    per, extra = divmod(body, chains)
    joins: list[str] = []
    for c, device in enumerate(devices):
        prev = "root"
        for k in range(per + (1 if c < extra else 0)):
            sid = f"c{c}s{k}"
            steps.append(PlanStep(sid, "noop", device, sid, after=(prev,), expected_s=0.0))
            prev = sid
        joins.append(prev)
    steps.append(PlanStep("join", "noop", None, "join", after=tuple(joins), expected_s=0.0))
    return ChangeoverPlan(None, "synthetic", tuple(steps)), devices


async def _overhead(n: int, repeats: int) -> dict[str, Any]:
    plan, devices = synthetic_plan(n)
    profiles = {d: Profile(d, SoftDriver(d, ["x"]), ["x"]) for d in devices}
    clock = SystemClock()
    times: list[float] = []
    events = 0
    for i in range(repeats):
        sink = CollectingSink()
        seq = Sequencer(profiles, sink, clock, registry=NOOP_REGISTRY)
        began = time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await seq.run(plan, changeover_id=f"syn-{i}", job_id="bench")
        times.append(time.perf_counter() - began)
        events = len(sink.events)
    best = min(times)
    med = statistics.median(times)
    # The sequencer asks the plan for its ready set after every step: time one such call mid-run.
    half = {s.id for s in plan.steps[: len(plan.steps) // 2]}
    calls = 200
    t0 = time.perf_counter()
    for _ in range(calls):
        plan.ready(half, half)
    ready_us = (time.perf_counter() - t0) / calls * 1e6
    return {
        "steps": len(plan.steps),
        "events_per_run": events,
        "run_s": _util.spread(times),
        "steps_per_s_median": len(plan.steps) / med,
        "us_per_step_median": med / len(plan.steps) * 1e6,
        "us_per_step_best": best / len(plan.steps) * 1e6,
        "plan_ready_call_us": ready_us,
    }


def _loops() -> dict[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {"asyncio": None}
    try:
        import uvloop

        loops["uvloop"] = uvloop.new_event_loop
    except ImportError:
        pass
    return loops


def _run(coro: Coroutine[Any, Any, Any], factory: Callable[[], asyncio.AbstractEventLoop] | None) -> Any:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def bench_overhead(n: int, repeats: int) -> dict[str, Any]:
    """Part 2 on every available loop, for ``n`` steps and ``n // 10``."""
    result: dict[str, Any] = {}
    for name, factory in _loops().items():
        result[name] = {str(size): _run(_overhead(size, repeats), factory) for size in (max(n // 10, 3), n)}
    return result


# ------------------------------------------------------------------------------------------------ output


def _fmt(s: dict[str, float | int], unit: float = 1.0, digits: int = 3) -> str:
    return f"{s['min'] * unit:.{digits}f} / {s['median'] * unit:.{digits}f} / {s['max'] * unit:.{digits}f}"


def render(doc: dict[str, Any]) -> str:
    c = doc["cell"]
    lines = [
        f"Changeover bench  (commit {doc['environment']['commit']}, python {doc['environment']['python']}, "
        f"{doc['environment']['cpus']} cpus, load {doc['environment']['load_average_at_start']})",
        "",
        f"1. Heaviest changeover of config/ on device_sims, time scale {c['time_scale']:g}: "
        f"{c['from']} -> {c['to']}, {len(c['runs'][0]['steps'])} steps, {len(c['runs'])} runs",
        "   pairs (expected critical path at scale 1): "
        + ", ".join(f"{p['from']}->{p['to']} {p['critical_path_s']:.1f}s/{p['steps']}" for p in c["pairs"]),
        f"   link: modbus poll_interval_s {c['modbus_poll_interval_s']}, "
        f"opcua publishing_interval_ms {c['opcua_publishing_interval_ms']}",
        "",
        "   figure (s)                                    min / median / max",
        f"   wall time of Sequencer.run                     {_fmt(c['wall_s'])}",
        f"   critical path, templates x scale               {c['expected_critical_scaled_s']:.3f}",
        f"   critical path, measured step durations         {_fmt(c['measured_critical_s'])}",
        f"   critical path, simulator's own durations       {_fmt(c['sim_critical_s'])}",
        f"   sequential sum of measured durations           {_fmt(c['measured_sum_s'])}",
        "",
        f"   wall / measured critical path   (target <= {TARGET}) {_fmt(c['wall_over_measured_critical'])}"
        f"   {'MET' if c['target_met'] else 'NOT MET'}",
        f"   wall / templates x scale                       {_fmt(c['wall_over_expected_scaled'])}",
        f"   wall / simulator's critical path               {_fmt(c['wall_over_sim_critical'])}",
        f"   wall / sequential sum                          {_fmt(c['wall_over_measured_sum'])}",
        "",
        "   per step (ms, median run): measured   simulator   excess (link latency)   after",
    ]
    runs = c["runs"]
    for step, info in runs[0]["steps"].items():
        med = statistics.median(r["steps"][step]["measured_s"] for r in runs)
        ex = c["step_excess_s"][step]
        lines.append(
            f"   {step:28s} {med * 1e3:8.1f}   {info['sim_s'] * 1e3:8.1f}   "
            f"{ex['median'] * 1e3:8.1f} (max {ex['max'] * 1e3:.1f})"
            f"   {', '.join(info['after']) or '-'}"
        )
    lines += [
        "",
        "2. Sequencer overhead, zero-duration steps (root, 10 parallel chains on soft devices, join)",
    ]
    lines.append(
        "   loop      steps   runs   run s (min/med/max)        steps/s    us/step (med, best)"
        "   plan.ready() us"
    )
    for loop, sizes in doc["overhead"].items():
        for _size, o in sizes.items():
            lines.append(
                f"   {loop:8s} {o['steps']:6d}   {o['run_s']['n']:4d}   {_fmt(o['run_s'], digits=4):24s} "
                f"{o['steps_per_s_median']:9.0f}    {o['us_per_step_median']:7.1f}, "
                f"{o['us_per_step_best']:5.1f}"
                f"   {o['plan_ready_call_us']:7.1f}"
            )
    if "uvloop" not in doc["overhead"]:
        lines.append("   (uvloop is not importable: asyncio's loop only)")
    lines.append(f"\n   total run time {doc['total_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    parser.add_argument("--time-scale", type=float, default=0.1, help="simulator time scale (default 0.1)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of the heaviest changeover (default 5)")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the synthetic plan (default 1000)")
    parser.add_argument("--overhead-repeats", type=int, default=5, help="runs of the synthetic plan")
    args = parser.parse_args(argv)
    if not 0 < args.time_scale <= 1 or not 1 <= args.repeats <= 50 or not 3 <= args.steps <= 20000:
        parser.error("--time-scale in (0, 1], --repeats in 1..50, --steps in 3..20000")
    _util.quiet_logs()
    began = time.perf_counter()
    env = _util.environment(list(_loops()))
    print("part 1: heaviest changeover on the simulators ...", file=sys.stderr)
    cell = asyncio.run(bench_cell(args.time_scale, args.repeats))
    print("part 2: sequencer overhead ...", file=sys.stderr)
    overhead = bench_overhead(args.steps, args.overhead_repeats)
    doc = {"environment": env, "cell": cell, "overhead": overhead, "total_s": time.perf_counter() - began}
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
