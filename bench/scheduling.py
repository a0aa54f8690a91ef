"""Scheduling bench: FIFO against the proposed order on a generated book of orders and on FIFO's worst case.

``.venv/bin/python bench/scheduling.py [--json] [--seed N]``

Variants: the example cell's three recipes (oslo, bergen, tromso) plus three synthetic ones derived from them
by changing what a changeover has to touch, so every pair's cost comes from the real planner
(``changeover_costs``: the internal critical path of ``plan_changeover``) on the example cell:

- ``alta``: oslo with the fixture at 460 x 400 (a fixture move only);
- ``narvik``: bergen with the FOAM-S tool and program 14 (a tool change, program external);
- ``molde``: tromso with the fixture at 560 x 500 and program 15 (fixture move, program external).

Book: 50 orders over the 6 variants, seeded; quantity 5-40; 20 % priority 1; in the "due" book 60 % of the
orders carry a due date spread over the FIFO makespan. Worst case: 50 orders alternating between the two
variants with the largest changeover cost between them, all one priority, no due dates.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cellctl.engine.scheduler import (  # noqa: E402
    CostFn,
    SchedJob,
    Schedule,
    changeover_costs,
    edd_order,
    evaluate,
    fifo_order,
    propose,
)
from cellctl.schema.load import load_config  # noqa: E402
from cellctl.schema.recipe import Recipe  # noqa: E402

ORDERS = 50
TIMING_REPEATS = 5


def _derive(base: Recipe, variant: str, **setup: dict[str, Any]) -> Recipe:
    data = base.model_dump(mode="json")
    data["variant"] = variant
    data["version"] = 1
    for device, changes in setup.items():
        data["setup"][device] = {**data["setup"][device], **changes}
    return Recipe.model_validate(data)


def variants() -> tuple[dict[str, Recipe], Any]:
    """The example's recipes plus three synthetic ones, and the example cell."""
    config = load_config(REPO / "config")
    recipes = dict(config.recipes)
    recipes["alta"] = _derive(
        recipes["oslo"], "alta", fixture={"positions": {"width": 460.0, "depth": 400.0}}
    )
    recipes["narvik"] = _derive(
        recipes["bergen"], "narvik", toolchanger={"tool": "FOAM-S"}, robot1={"program": 14}
    )
    recipes["molde"] = _derive(
        recipes["tromso"],
        "molde",
        fixture={"positions": {"width": 560.0, "depth": 500.0}},
        robot1={"program": 15},
    )
    return recipes, config.cell


def book(recipes: dict[str, Recipe], seed: int, *, due: bool, cost: CostFn) -> list[SchedJob]:
    """``ORDERS`` seeded orders over every variant; with ``due`` some are due within FIFO's makespan."""
    rng = random.Random(seed)
    names = sorted(recipes)
    jobs = [
        SchedJob.from_recipe(
            f"o{k:02d}",
            recipes[rng.choice(names)],
            rng.randint(5, 40),
            priority=1 if rng.random() < 0.2 else 0,
            seq=k,
        )
        for k in range(ORDERS)
    ]
    if not due:
        return jobs
    horizon = evaluate(fifo_order(jobs), None, jobs, cost).makespan_s
    return [
        SchedJob(
            j.job_id,
            j.variant,
            j.quantity,
            j.expected_s,
            j.priority,
            rng.uniform(0.3, 1.0) * horizon if rng.random() < 0.6 else None,
            j.seq,
        )
        for j in jobs
    ]


def worst_case(recipes: dict[str, Recipe], cost: CostFn) -> tuple[list[SchedJob], tuple[str, str]]:
    """Orders alternating between the two most distant variants (largest round-trip cost)."""
    names = sorted(recipes)
    a, b = max(
        ((x, y) for x in names for y in names if x < y),
        key=lambda p: cost(p[0], p[1]) + cost(p[1], p[0]),
    )
    jobs = [SchedJob.from_recipe(f"w{k:02d}", recipes[(a, b)[k % 2]], 10, seq=k) for k in range(ORDERS)]
    return jobs, (a, b)


def _figures(s: Schedule) -> dict[str, float | int]:
    return {
        "changeover_s": round(s.changeover_s, 3),
        "changeovers": s.changeovers,
        "lateness_s": round(s.lateness_s, 3),
        "makespan_s": round(s.makespan_s, 3),
    }


def scenario(name: str, jobs: list[SchedJob], current: str | None, cost: CostFn) -> dict[str, Any]:
    """FIFO, EDD and the proposal on ``jobs``, with the proposal's median run time."""
    times = []
    proposal = propose(current, jobs, cost)
    for _ in range(TIMING_REPEATS):
        t0 = time.perf_counter()
        again = propose(current, jobs, cost)
        times.append(time.perf_counter() - t0)
        assert again == proposal, "the scheduler is not deterministic"
    fifo = evaluate(fifo_order(jobs), current, jobs, cost)
    edd = evaluate(edd_order(jobs), current, jobs, cost)
    return {
        "scenario": name,
        "orders": len(jobs),
        "due_dates": sum(j.due_s is not None for j in jobs),
        "fifo": _figures(fifo),
        "edd": _figures(edd),
        "proposal": _figures(proposal),
        "proposal_priority_inversions": proposal.priority_inversions,
        "scheduler_ms_median": round(statistics.median(times) * 1000, 2),
        "scheduler_ms_max": round(max(times) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    recipes, cell = variants()
    cost = changeover_costs(recipes, cell)
    names = sorted(recipes)
    matrix = {a: {b: cost(a, b) for b in names} for a in names}
    worst, pair = worst_case(recipes, cost)
    results = [
        scenario("book, no due dates", book(recipes, args.seed, due=False, cost=cost), None, cost),
        scenario("book, due dates", book(recipes, args.seed, due=True, cost=cost), None, cost),
        scenario(f"worst case {pair[0]}<->{pair[1]}", worst, pair[0], cost),
    ]
    if args.json:
        doc = {"seed": args.seed, "variants": names, "cost_matrix_s": matrix, "scenarios": results}
        print(json.dumps(doc, indent=2))
        return
    print("changeover cost matrix (s, internal critical path from the planner; row = from, column = to)")
    print("          " + "".join(f"{b:>9}" for b in names))
    for a in names:
        print(f"{a:>9} " + "".join(f"{matrix[a][b]:>9.1f}" for b in names))
    print()
    header = (
        f"{'scenario':<26}{'order':<10}{'changeover s':>13}{'changeovers':>12}{'lateness s':>12}"
        f"{'makespan s':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for label in ("fifo", "edd", "proposal"):
            f = r[label]
            print(
                f"{r['scenario'] if label == 'fifo' else '':<26}{label:<10}{f['changeover_s']:>13.1f}"
                f"{f['changeovers']:>12}{f['lateness_s']:>12.1f}{f['makespan_s']:>12.1f}"
            )
        print(
            f"{'':<26}scheduler run time: median {r['scheduler_ms_median']} ms, "
            f"max {r['scheduler_ms_max']} ms "
            f"({TIMING_REPEATS} runs); {r['due_dates']} due dates"
        )
    print(
        f"\nseed {args.seed}; {ORDERS} orders per scenario; "
        "the cell starts with an unknown setup in the books"
    )


if __name__ == "__main__":
    main()
