"""End to end: a person runs the demo's order book from the operator TUI alone, on the simulated cell.

The simulators (OPC UA robot, Modbus tooling and gauge) and the controller run in this process, as in
``cellctl demo --tui``; the order book is queued as the plant's MES would queue it. Every action after that
is a key pressed in the TUI: Reset, Start, switching tabs, and the fabric roll scanned into the operator-step
modal (first the wrong roll, which is refused and shown, then the right one).

With ``CELLCTL_TUI_SCREENSHOTS=DIR`` the test also saves an SVG of each screen into DIR (how the pictures in
``docs/tui/`` are made: ``CELLCTL_TUI_SCREENSHOTS=docs/tui pytest tests/system/test_tui_demo.py``).
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from cellctl.demo import ORDER_BOOK, run_demo_for_operator
from cellctl.schema.load import load_config
from cellctl.tui.app import CellApp
from cellctl.tui.link import ControllerLink
from tests.tui.conftest import until

CONFIG = Path(__file__).resolve().parents[2] / "config"
TIME_SCALE = 0.02
WAIT_S = 60.0
wait = functools.partial(until, timeout=WAIT_S)
"""``until`` with room for a changeover and the whole order book."""
SIZE = (80, 24)
STEP = "operator:load_fabric"


def _roll_label() -> str:
    """What the label on the tromso fabric roll says (the recipe expects exactly this scan)."""
    step = load_config(CONFIG).recipes["tromso"].operator_steps["load_fabric"]
    assert step.evidence is not None and step.evidence.expect
    return step.evidence.expect


async def test_an_operator_runs_the_demo_order_book_from_the_tui_alone() -> None:
    shots = os.environ.get("CELLCTL_TUI_SCREENSHOTS")
    label = _roll_label()
    seen: dict[str, Any] = {}

    def status() -> dict[str, Any]:
        return app.link.status or {}

    async def shot(pilot: Pilot[None], name: str) -> None:
        if shots:
            await pilot.wait_for_scheduled_animations()
            await pilot.pause(0.2)  # a refresh after the last status, so the picture shows it
            pilot.app.save_screenshot(filename=f"{name}.svg", path=shots)

    async def operate(socket: Path) -> None:
        nonlocal app
        app = CellApp(ControllerLink(socket))
        async with app.run_test(size=SIZE) as pilot:
            # Given the cell stopped with the order book queued
            queued = len(ORDER_BOOK)
            await wait(pilot, lambda: len(status().get("queue", [])) == queued, "the queued orders")
            assert status()["state"] == "Stopped"

            # When the operator resets and starts it from the Overview tab
            await pilot.press("1", "r")
            await wait(pilot, lambda: status().get("state") == "Idle", "Idle after Reset")
            await pilot.press("s")
            await wait(pilot, lambda: status().get("state") == "Execute", "Execute after Start")
            await wait(pilot, lambda: status()["counters"]["parts"] >= 1, "the first part")
            await shot(pilot, "overview")
            await pilot.press("2")
            await pilot.pause()
            await shot(pilot, "orders")

            # Then the changeover to tromso waits for the fabric roll and the TUI brings its step forward
            await wait(pilot, lambda: any(p["step"] == STEP for p in status().get("prompts", [])), STEP)
            await wait(pilot, lambda: _modal_open(app), "the operator-step modal")
            await shot(pilot, "changeover")

            # When the wrong roll is scanned, then it is refused in the modal, which stays open
            await pilot.click("#evidence")
            await pilot.press(*"FAB-OSLO", "enter")
            await wait(pilot, lambda: "does not match" in _refusal(app), "the refusal shown")
            assert _modal_open(app)
            seen["refusal"] = _refusal(app)

            # When the label on the roll is scanned, then the step is confirmed and production goes on
            input_ = app.screen.query_one("#evidence")
            input_.value = ""  # type: ignore[attr-defined]
            await pilot.press(*label, "enter")
            await wait(pilot, lambda: not status().get("prompts"), "the step confirmed")
            await wait(pilot, lambda: not _modal_open(app), "the modal closed")

            await pilot.press("4")
            await wait(pilot, lambda: status()["counters"]["parts"] >= 7, "tromso parts")
            await shot(pilot, "quality")
            await pilot.press("6")
            await pilot.pause(1.2)  # the devices tab polls once a second
            await shot(pilot, "devices")
            await pilot.press("5")
            await pilot.pause()
            await shot(pilot, "alarms")

            # Then every order of the book is made
            total = sum(o.quantity for o in ORDER_BOOK)
            await wait(
                pilot,
                lambda: status()["counters"]["parts"] >= total and status().get("current_job") is None,
                "the whole order book",
            )
            seen["final"] = status()
            await pilot.press("q")

    app: CellApp
    await asyncio.wait_for(
        run_demo_for_operator(CONFIG, operate, time_scale=TIME_SCALE, use_broker=False), WAIT_S * 3
    )

    final = seen["final"]
    assert final["counters"]["parts"] == sum(o.quantity for o in ORDER_BOOK)
    assert final["queue"] == []
    assert "does not match" in seen["refusal"]


def _modal_open(app: CellApp) -> bool:
    return bool(app.screen.query("#evidence"))


def _refusal(app: CellApp) -> str:
    nodes = app.screen.query("#refusal")
    return str(nodes.first().render()) if nodes else ""
