"""Small text helpers the TUI's header and panes share: numbers, percentages, times, severities, the lease
holder."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.text import Text

SEVERITY_STYLE: dict[str, str] = {
    "critical": "bold white on red",
    "error": "bold red",
    "warning": "bold yellow",
    "info": "cyan",
}


def pct(value: object) -> str:
    """A fraction as ``87.5 %``; ``-`` when unknown."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{100.0 * value:.1f} %"
    return "-"


def num(value: object, fmt: str) -> str:
    """A finite number in ``fmt`` (``.2f``, ``d``...); ``-`` when absent or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return format(value, fmt)


def clock(ts: object) -> str:
    """Epoch seconds as local ``HH:MM:SS``; ``-`` when absent."""
    if isinstance(ts, int | float) and not isinstance(ts, bool) and ts > 0:
        return time.strftime("%H:%M:%S", time.localtime(ts))
    return "-"


def seconds(value: object) -> str:
    """A duration as ``12 s``, ``4 min`` or ``3.2 h``; ``-`` when absent."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def severity_style(severity: str) -> str:
    """The style an alarm of this severity is drawn in."""
    return SEVERITY_STYLE.get(severity, "")


def lease_holder(status: dict[str, Any]) -> dict[str, Any] | None:
    """The control lease's holder from a status (None: free, or a server that has no lease)."""
    lease = status.get("lease")
    if isinstance(lease, dict):
        holder = lease.get("holder", lease)
        return holder if isinstance(holder, dict) else None
    return None


def is_mine(holder: dict[str, Any] | None, caller: dict[str, Any]) -> bool:
    """Whether the holder is this connection (by connection number, else by user and pid)."""
    if holder is None or not caller:
        return False
    if "connection" in holder and "connection" in caller:
        return bool(holder["connection"] == caller["connection"])
    return bool(holder.get("user") == caller.get("user") and holder.get("pid") == caller.get("pid"))


def lease_text(status: dict[str, Any], caller: dict[str, Any]) -> Text:
    """Who has control: ``you (operator)``, ``alice (integrator)``, ``free`` or ``-`` (no lease here)."""
    if "lease" not in status:
        return Text("-", "dim")
    holder = lease_holder(status)
    if holder is None:
        return Text("free", "dim")
    role = holder.get("role")
    suffix = f" ({role})" if role else ""
    if is_mine(holder, caller):
        return Text(f"you{suffix}", "bold green")
    return Text(f"{holder.get('user', '?')}{suffix}", "bold yellow")
