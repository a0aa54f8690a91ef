"""A Link with canned, time-free replies, for snapshots (deterministic SVGs) and canned-controller tests."""

from __future__ import annotations

import copy
from typing import Any

from cellctl.tui.pane import Outcome
from tests.tui.canned import DEVICES


class FakeLink:
    """Always connected; answers ``replies[cmd]`` where given (an ok or a refusal), the devices view for
    ``devices`` and ok with the status for the rest; every request is kept in ``sent``."""

    def __init__(self, status: dict[str, Any], replies: dict[str, Outcome] | None = None) -> None:
        self.connected = True
        self.status: dict[str, Any] | None = copy.deepcopy(status)
        self.caller: dict[str, Any] = {"user": "anna", "role": "operator", "connection": 7}
        self.replies = dict(replies or {})
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def request(self, cmd: str, **args: Any) -> Outcome:
        self.sent.append((cmd, args))
        reply = self.replies.get(cmd)
        if reply is not None:
            return reply
        if cmd == "devices":
            return Outcome(True, result={"devices": DEVICES})
        return Outcome(True, result=self.status or {})
