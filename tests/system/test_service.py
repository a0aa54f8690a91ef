"""System test: `python -m device_sims` and `cellctl run` as subprocesses, orders through `cellctl ctl`,
telemetry on a private mosquitto, and the journal checked against what a subscriber received."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.fixtures.broker import Collector, Mosquitto
from tests.fixtures.child import Child, spawn

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
ROOT = "nordform/lyon/upholstery/line1/systest"
"""Topic root of this test's cell: its own cell name, so retained messages of other tests never mix in."""


async def _ctl(config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cellctl",
        "ctl",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def _write_cell(folder: Path, endpoints: dict[str, str], broker: Mosquitto) -> Path:
    """The shipped cell pointed at the running simulators and the private broker, with its own store."""
    yaml = YAML()
    data: Any = yaml.load((CONFIG / "cell.yaml").read_text())
    data["identity"]["cell"] = "systest"
    for name, endpoint in endpoints.items():
        data["devices"][name]["endpoint"] = endpoint
    data["mqtt"] = {"host": broker.host, "port": broker.port, "keepalive_s": 5}
    data["store"] = {"path": str(folder / "cellctl.db")}
    data["api"] = {"socket": str(folder / "cellctl.sock")}
    data["recipes_dir"] = str(CONFIG / "recipes")
    with (folder / "cell.yaml").open("w") as fh:
        yaml.dump(data, fh)
    return folder


@pytest.fixture
async def sims() -> AsyncIterator[tuple[Child, dict[str, str]]]:
    """`python -m device_sims` on free ports, with the endpoints it printed, by device."""
    p = await spawn(sys.executable, "-m", "device_sims", str(CONFIG), "--ephemeral", "--time-scale", "0.02")
    try:
        await p.wait_for(r"^ready$", timeout=30)
        endpoints: dict[str, str] = {}
        for line in p.lines:
            if line.startswith("listening "):
                _, endpoint, devices = line.split(" ", 2)
                for device in devices.split(","):
                    endpoints[device] = endpoint
        yield p, endpoints
    finally:
        assert await p.stop() == 0, "\n".join(p.lines[-20:])


def _payloads(collector: Collector, match: Callable[[str], bool]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in collector.messages if match(m.topic)]


async def test_service_runs_two_orders_end_to_end(
    tmp_path: Path, mosquitto: Mosquitto, sims: tuple[Child, dict[str, str]]
) -> None:
    """Given the simulators and `cellctl run` as processes, when two orders of different variants are queued
    through `cellctl ctl`, then the journal and the MQTT subscriber see the same complete story."""
    if not mosquitto.running:
        mosquitto.start()
    _sim_proc, endpoints = sims
    assert set(endpoints) == {"robot1", "toolchanger", "fixture", "stapler", "gauge", "safety"}
    config = _write_cell(tmp_path, endpoints, mosquitto)

    async with Collector(mosquitto.host, mosquitto.port, f"{ROOT}/#") as collector:
        service = await spawn(
            sys.executable, "-m", "cellctl", "run", "--config", str(config), "--log-format", "json"
        )
        try:
            await service.wait_for(r"controller ready", timeout=30)
            # Devices come up on their own after READY: reset once every link reported up.
            await collector.wait_until(
                lambda ms: (
                    {m.topic.rsplit("/", 1)[1] for m in ms if "/health/" in m.topic and b'"up"' in m.payload}
                    >= set(endpoints)
                ),
                timeout=20,
            )
            for args in (
                ("reset",),
                ("start",),
                ("submit", "SO-1", "oslo", "2"),
                ("submit", "SO-2", "bergen", "2", "--param", "staple_pitch=9.5"),
            ):
                code, out = await _ctl(config, *args)
                assert code == 0, f"cellctl ctl {' '.join(args)} -> {code}: {out}"

            def both_jobs_done(ms: list[Any]) -> bool:
                jobs = [json.loads(m.payload)["data"] for m in ms if m.topic == f"{ROOT}/job"]
                return sum(1 for j in jobs if j["status"] == "completed") == 2

            await collector.wait_until(both_jobs_done, timeout=60)
            code, out = await _ctl(config, "status", "--json")
            assert code == 0 and json.loads(out)["counters"]["parts"] == 4
        finally:
            exit_code = await service.stop()
        assert exit_code == 0, "\n".join(service.lines[-30:])
        # The clean stop publishes the retained "offline" status last.
        await collector.wait_until(
            lambda ms: any(m.topic == f"{ROOT}/status" and b"offline" in m.payload for m in ms), timeout=10
        )

    # --- the journal ------------------------------------------------------------------------------------
    db = sqlite3.connect(tmp_path / "cellctl.db")
    rows = [
        (kind, stream, json.loads(data))
        for kind, stream, data in db.execute("SELECT kind, stream, data FROM journal ORDER BY id")
    ]
    outbox_left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    db.close()
    states = [d["state"] for k, _s, d in rows if k == "state_changed"]
    assert states[:5] == ["Stopped", "Resetting", "Idle", "Starting", "Execute"]
    assert states[-2:] == ["Stopping", "Stopped"], states
    changeovers = [d for k, _s, d in rows if k == "changeover" and d["status"] == "completed"]
    assert [(c["from_variant"], c["to_variant"]) for c in changeovers] == [(None, "oslo"), ("oslo", "bergen")]
    oslo_to_bergen = changeovers[1]
    steps_done = {
        d["step"]
        for k, _s, d in rows
        if k == "step" and d["status"] == "done" and d["changeover"] == oslo_to_bergen["changeover"]
    }
    assert steps_done == set(oslo_to_bergen["steps"])
    assert {"toolchanger:tool_change", "fixture:fixture_move", "robot1:robot_program"} <= steps_done
    parts = [d for k, _s, d in rows if k == "part"]
    assert [(p["variant"], p["index"]) for p in parts] == [
        ("oslo", 1),
        ("oslo", 2),
        ("bergen", 1),
        ("bergen", 2),
    ]
    assert all(p["verdict"] in ("pass", "fail", "invalid") for p in parts)
    assert [p["parameters"]["staple_pitch"] for p in parts] == [12.0, 12.0, 9.5, 9.5]
    assert outbox_left == 0, "every message was acknowledged by the broker before the store closed"

    # --- what the subscriber received ---------------------------------------------------------------------
    by_stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in collector.messages:
        if message.topic != f"{ROOT}/status":
            envelope = json.loads(message.payload)
            by_stream[envelope["stream"]].append(envelope)
    for stream, envelopes in by_stream.items():
        seqs = [e["seq"] for e in envelopes]
        assert seqs == list(range(1, len(seqs) + 1)), (
            f"{stream}: sequence not contiguous and in order: {seqs}"
        )
    received_parts = [e["data"] for e in by_stream["part"]]
    assert [(p["part"], p["verdict"]) for p in received_parts] == [(p["part"], p["verdict"]) for p in parts]
    assert len(by_stream["quality"]) == 4 * 3, "one quality message per part and characteristic"
    assert [e["data"]["state"] for e in by_stream["state"]] == states
    journal_steps = [d for k, _s, d in rows if k in ("changeover", "step", "first_article", "changeover_kpi")]
    assert len(by_stream["changeover"]) == len(journal_steps)
