"""Canned, time-free controller replies for the FakeLink: a cell producing oslo seats with a queue and a
proposal, the same cell waiting for a person during a changeover to tromso, a control chart, an idle cell, a
cell held by an alarm, and the devices view."""

from __future__ import annotations

import math
from typing import Any

T0 = 1_795_800_000.0
"""A fixed wall time (2026-11-27 14:40 UTC): nothing in a snapshot depends on the clock."""


def job(job_id: str, order_id: str, variant: str, quantity: int, **more: Any) -> dict[str, Any]:
    """A JobView as the status carries it."""
    return {
        "job_id": job_id,
        "order_id": order_id,
        "variant": variant,
        "recipe_version": 1,
        "recipe_hash": "0c25082cf179adc8",
        "quantity": quantity,
        "priority": 0,
        "parameters": {},
        "status": "queued",
        "produced": 0,
        "good": 0,
        "bad": 0,
        "invalid": 0,
        "submitted_at": T0 - 600,
        "submitted_by": "api:operator",
        "started_at": None,
        "finished_at": None,
        "reason": "",
        "due": None,
        "part_parameters": [],
        **more,
    }


SPC_SUMMARY = {
    "characteristic": "seat_width",
    "kind": "I-MR",
    "points": 40,
    "cp": 1.71,
    "cpk": 1.38,
    "centre": 420.0,
    "lcl": 419.47,
    "ucl": 420.53,
    "lsl": 418.8,
    "usl": 421.2,
    "last_violation": {"index": 31, "label": "P-0031", "rules": [1]},
}

STATUS: dict[str, Any] = {
    "cell": "cell3",
    "state": "Execute",
    "state_no": 6,
    "since": T0 - 300,
    "mode": "production",
    "allowed_commands": ["stop", "hold", "suspend", "abort"],
    "current_job": job(
        "J-1001", "SO-4711", "oslo", 40, status="started", produced=12, good=11, bad=1, started_at=T0 - 290
    ),
    "queue": [
        job("J-1002", "SO-4712", "tromso", 5, due=T0 + 7200),
        job("J-1003", "SO-4713", "oslo", 20),
        job("J-1004", "SO-4714", "bergen", 8, parameters={"staple_pitch": 12.0}),
    ],
    "variant": "oslo",
    "changeover": None,
    "counters": {"parts": 40, "good": 38, "bad": 1, "invalid": 1},
    "reason": "",
    "proposed_order": {
        "job_ids": ["J-1003", "J-1002", "J-1004"],
        "changeover_s": 46.0,
        "queue_changeover_s": 90.5,
    },
    "prompts": [],
    "qualification": None,
    "recovery": None,
    "oee": None,
    "alarms": [],
    "spc": [SPC_SUMMARY],
    "store": None,
}
"""Producing: oslo running, three jobs queued, a better order proposed, one characteristic charted."""


def _step(step_id: str, kind: str, device: str, expected: float, **more: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "kind": kind,
        "device": device,
        "description": step_id,
        "after": [],
        "expected_s": expected,
        "external": False,
        "status": "done",
        "duration_s": expected * 0.9,
        "detail": "",
        **more,
    }


CHANGEOVER_STARTED = T0 - 52.0

PROMPT: dict[str, Any] = {
    "changeover": "CO-0042",
    "step": "operator:load_fabric",
    "device": "stapler",
    "kind": "operator_step",
    "instruction": "Load the wide fabric roll on the stapler's cover feeder",
    "evidence": "scan the roll label",
    "since": T0 - 10.0,
}
"""The fabric roll's step waiting for a person (the status's ``prompts``)."""

WAITING: dict[str, Any] = {
    **STATUS,
    "mode": "changeover",
    "current_job": job("J-1002", "SO-4712", "tromso", 5),
    "queue": [job("J-1003", "SO-4713", "oslo", 20)],
    "proposed_order": None,
    "spc": [],
    "changeover": {
        "changeover_id": "CO-0042",
        "job_id": "J-1002",
        "from_variant": "oslo",
        "to_variant": "tromso",
        "planned_s": 40.1,
        "critical_path": ["stapler:setpoints", "operator:load_fabric"],
        "started_at": CHANGEOVER_STARTED,
        "done": 6,
        "total": 7,
        "steps": [
            _step("fixture:fixture_unclamp", "fixture_unclamp", "fixture", 0.4),
            _step("stapler:setpoints", "setpoints", "stapler", 0.1, external=True),
            _step("fixture:fixture_move", "fixture_move", "fixture", 2.0, duration_s=4.5),
            _step("toolchanger:tool_change", "tool_change", "toolchanger", 4.0),
            _step(
                "operator:load_fabric",
                "operator",
                "stapler",
                40.0,
                status="waiting",
                duration_s=None,
            ),
            _step("fixture:fixture_clamp", "fixture_clamp", "fixture", 0.4),
            _step("robot1:robot_program", "robot_program", "robot1", 0.5, external=True),
        ],
    },
    "prompts": [PROMPT],
}
"""A changeover oslo -> tromso: six steps done, the fabric roll waits for a person; 52 s into 40 s planned."""


def _width(n: int) -> float:
    """A steady process with a small wobble, a shift late on, and one part far off."""
    if n == 31:
        return 421.4  # out of spec (and beyond the control limits)
    wobble = 0.12 * math.sin(n * 1.7) + 0.05 * math.cos(n * 0.9)
    return round(420.0 + wobble + (0.3 if n >= 34 else 0.0), 3)


CHART: dict[str, Any] = {
    "kind": "I-MR",
    "subgroup": 1,
    "baseline": 25,
    "limits": {
        "centre": 420.0,
        "sigma": 0.177,
        "lcl": 419.47,
        "ucl": 420.53,
        "process_sigma": 0.177,
        "r_centre": 0.2,
        "r_lcl": 0.0,
        "r_ucl": 0.653,
        "baseline": 25,
    },
    "spec": {"lsl": 418.8, "usl": 421.2, "nominal": 420.0},
    "cp": 1.71,
    "cpk": 1.38,
    "rules": [1, 2, 3, 4],
    "points": [
        {
            "index": n,
            "value": _width(n),
            "range": None if n == 1 else round(abs(_width(n) - _width(n - 1)), 3),
            "ts": T0 - 4.0 * (41 - n),
            "label": f"P-{n:04d}",
            "violations": [1] if n == 31 else [3] if n == 38 else [],
        }
        for n in range(1, 41)
    ],
    "last_violation": None,
}
"""The chart of oslo/seat_width: 40 parts, limits from the first 25; P-0031 out of spec, P-0038 rule 3."""


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
