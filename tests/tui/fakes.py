"""A Link with canned, time-free status snapshots, for snapshot tests (deterministic SVGs)."""

from __future__ import annotations

import copy
from typing import Any

from cellctl.tui.pane import Outcome

IDLE: dict[str, Any] = {
    "cell": "cell3",
    "state": "Idle",
    "state_no": 4,
    "since": 0.0,
    "mode": "production",
    "allowed_commands": ["start", "stop", "abort"],
    "current_job": None,
    "queue": [],
    "variant": "oslo",
    "changeover": None,
    "counters": {"parts": 0, "good": 0, "bad": 0, "invalid": 0},
    "reason": "",
    "proposed_order": None,
    "prompts": [],
    "qualification": None,
    "recovery": None,
    "oee": None,
    "alarms": [],
    "spc": [],
    "store": None,
    "lease": None,
}

HELD_WITH_ALARM: dict[str, Any] = IDLE | {
    "state": "Held",
    "state_no": 10,
    "allowed_commands": ["unhold", "stop", "abort"],
    "current_job": {
        "job_id": "4eae567c62bd",
        "order_id": "SO-4711",
        "variant": "oslo",
        "quantity": 40,
        "produced": 17,
        "good": 16,
        "bad": 1,
        "invalid": 0,
        "status": "running",
    },
    "queue": [{"job_id": "9b1c", "order_id": "SO-4712", "variant": "bergen", "quantity": 10}],
    "counters": {"parts": 17, "good": 16, "bad": 1, "invalid": 0},
    "reason": "interlock guard_door: guard door open",
    "oee": {
        "window": {"name": "early 2026-11-28"},
        "oee": 0.612,
        "availability": 0.78,
        "performance": 0.83,
        "quality": 0.941,
    },
    "alarms": [
        {
            "id": "interlock:guard_door",
            "severity": "critical",
            "source": "safety.guard_closed",
            "message": "guard door open",
            "raised_ts": 1795816294.0,
            "active": True,
            "cleared_ts": None,
            "acked_by": None,
            "acked_ts": None,
        },
        {
            "id": "spc:width_mm",
            "severity": "warning",
            "source": "spc",
            "message": "7 points above the centre line",
            "raised_ts": 1795816200.0,
            "active": False,
            "cleared_ts": 1795816250.0,
            "acked_by": None,
            "acked_ts": None,
        },
    ],
    "lease": {"user": "anna", "role": "operator", "since": 1795816000.0, "connection": 7},
}


class FakeLink:
    """Always connected; answers every request ok (or as ``refuse`` says) and records what was asked."""

    def __init__(self, status: dict[str, Any], *, refuse: dict[str, Outcome] | None = None) -> None:
        self.connected = True
        self.status: dict[str, Any] | None = copy.deepcopy(status)
        self.caller: dict[str, Any] = {"user": "anna", "role": "operator", "connection": 7}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._refuse = refuse or {}

    async def request(self, cmd: str, **args: Any) -> Outcome:
        self.requests.append((cmd, args))
        refused = self._refuse.get(cmd)
        if refused is not None:
            return refused
        if cmd == "devices":
            return Outcome(True, result={"devices": DEVICES})
        return Outcome(True, result=self.status or {})


DEVICES: list[dict[str, Any]] = [
    {
        "device": "robot1",
        "protocol": "opcua",
        "state": "up",
        "state_for_s": 3600.0,
        "error": "",
        "tags": [
            {"tag": "program", "value": "oslo_seat", "quality": "good", "age_s": 0.2},
            {"tag": "busy", "value": False, "quality": "good", "age_s": 0.2},
        ],
    },
    {
        "device": "gauge",
        "protocol": "modbus",
        "state": "down",
        "state_for_s": 12.0,
        "error": "connection refused",
        "tags": [{"tag": "width_mm", "value": None, "quality": "bad", "age_s": 12.0}],
    },
]
