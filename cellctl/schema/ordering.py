"""The order of a changeover's step kinds and a recipe's operator steps, from every 'after' and 'before'.

Both the loader (a cycle is a config error at its line) and the planner (steps are instantiated in this order)
use it, so a recipe the loader accepts is one the planner can order.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from cellctl.schema.cell import StepKind, StepTemplate
from cellctl.schema.recipe import OperatorStep

FIXTURE_SEQUENCE: tuple[StepKind, ...] = (
    StepKind.FIXTURE_UNCLAMP,
    StepKind.FIXTURE_MOVE,
    StepKind.FIXTURE_CLAMP,
)
"""A fixture must be unclamped to move and clamped again afterwards, whatever the templates say."""

Node = StepKind | str
"""A step kind, or the name of an operator step."""


class OrderCycle(ValueError):
    """The 'after' and 'before' of templates and operator steps leave ``nodes`` unordered; ``cycle`` is one
    cycle among them, its first node repeated at the end."""

    def __init__(self, nodes: list[Node], cycle: list[Node]) -> None:
        self.nodes = nodes
        self.cycle = cycle
        super().__init__(" -> ".join(str(n) for n in cycle))


def node_of(name: str) -> Node:
    """The node a name in 'after' or 'before' means: a step kind if it is one, else an operator step."""
    try:
        return StepKind(name)
    except ValueError:
        return name


def step_order(
    templates: Mapping[StepKind, StepTemplate], operator_steps: Mapping[str, OperatorStep] | None = None
) -> list[Node]:
    """Step kinds and operator step names in an order that respects every dependency; OrderCycle if none does.

    Each next node is the first one (templates' order, then the operator steps') whose predecessors are
    placed, so a consistent order is kept as it is.
    """
    edges: dict[Node, set[Node]] = {kind: set(t.after) for kind, t in templates.items()}
    for before, after in itertools.pairwise(FIXTURE_SEQUENCE):
        edges.setdefault(after, set()).add(before)
        edges.setdefault(before, set())
    steps = operator_steps or {}
    for name in steps:
        edges[name] = set()
    # A reference to nothing known is the recipe model's error to report; here it adds no edge.
    for name, step in steps.items():
        edges[name].update(n for n in map(node_of, step.after) if n in edges)
        for ref in map(node_of, step.before):
            if ref in edges:
                edges[ref].add(name)
    order: list[Node] = []
    placed: set[Node] = set()
    remaining = list(edges)
    while remaining:
        node = next((n for n in remaining if edges[n] <= placed), None)
        if node is None:
            raise OrderCycle(remaining, _cycle(remaining, edges, placed))
        order.append(node)
        placed.add(node)
        remaining.remove(node)
    return order


def _cycle(remaining: list[Node], edges: Mapping[Node, set[Node]], placed: set[Node]) -> list[Node]:
    """A cycle among ``remaining``: each of them waits for an unplaced node, so walking back repeats one."""
    trail: list[Node] = [remaining[0]]
    for _ in range(len(remaining) + 1):
        node = trail[-1]
        previous = next(n for n in remaining if n in edges[node] and n not in placed)
        if previous in trail:
            cycle = trail[trail.index(previous) :]
            return [*reversed(cycle), cycle[-1]]
        trail.append(previous)
    raise AssertionError("unreachable: a walk back through unplaced nodes repeats one")


__all__ = ["FIXTURE_SEQUENCE", "Node", "OrderCycle", "node_of", "step_order"]
