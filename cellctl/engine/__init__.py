"""The cell's brain: PackML state, job queue, changeover planning and sequencing, the per-part cycle.

Callers (the runtime and the control API) use only what is exported here.
"""

from cellctl.core.packml import Command, State
from cellctl.engine.durations import DurationEstimate, StepDurations
from cellctl.engine.engine import CellStatus, ChangeoverView, Counters, Engine, ProposedOrder, StepView
from cellctl.engine.jobs import JobView, OrderRequest

__all__ = [
    "CellStatus",
    "ChangeoverView",
    "Command",
    "Counters",
    "DurationEstimate",
    "Engine",
    "JobView",
    "OrderRequest",
    "ProposedOrder",
    "State",
    "StepDurations",
    "StepView",
]
