"""The demo end to end in-process: simulators and controller, the order book run to the end, a summary."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from cellctl.demo import ORDER_BOOK, render_summary, run_demo
from cellctl.schema.cell import MqttConfig
from tests.fixtures.broker import Mosquitto

CONFIG = Path(__file__).resolve().parents[2] / "config"


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=100, force_terminal=False), out


async def test_demo_without_broker_keeps_every_message_in_the_outbox() -> None:
    """Given no broker, when the demo runs, then every order completes and telemetry waits in the outbox."""
    console, out = _console()
    summary = await run_demo(CONFIG, time_scale=0.02, use_broker=False, console=console, timeout=60)
    assert summary.jobs_completed == len(ORDER_BOOK)
    assert summary.parts == sum(o.quantity for o in ORDER_BOOK)
    assert summary.good + summary.bad + summary.invalid == summary.parts
    assert [(c.from_variant, c.to_variant, c.status) for c in summary.changeovers] == [
        (None, "oslo", "completed"),
        ("oslo", "bergen", "completed"),
        ("bergen", "tromso", "completed"),
    ]
    assert summary.messages_delivered == 0
    # The changeover to tromso waited for its fabric roll: the scripted operator scanned it
    assert summary.operator_steps == ["operator:load_fabric"]
    assert summary.messages_buffered > summary.parts, "part, quality, state, job and step messages wait"
    render_summary(summary, console)
    text = out.getvalue()
    assert f"Parts made: {summary.parts}" in text
    assert f"{summary.messages_buffered} still buffered" in text
    assert "Operator steps confirmed by demo-operator: operator:load_fabric" in text


async def test_demo_with_a_broker_delivers_everything(mosquitto: Mosquitto) -> None:
    """Given a reachable broker, when the demo runs, then every message is delivered, none stays buffered."""
    if not mosquitto.running:
        mosquitto.start()
    broker = MqttConfig(host=mosquitto.host, port=mosquitto.port)
    console, _out = _console()
    summary = await run_demo(CONFIG, time_scale=0.02, broker=broker, console=console, timeout=60)
    assert summary.jobs_completed == len(ORDER_BOOK)
    assert summary.broker == f"{mosquitto.host}:{mosquitto.port}"
    assert summary.messages_buffered == 0
    assert summary.messages_delivered >= summary.parts * 4, "one part and three quality messages per part"
