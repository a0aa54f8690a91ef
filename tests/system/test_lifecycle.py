"""The service's lifecycle (issue 8): `cellctl run` as a child process under an sd_notify harness, on the
simulators (in this process, so their command counters are read directly): READY, STATUS and watchdog pings,
SIGTERM in production and in a changeover, a restart after SIGKILL, SIGHUP reload, and both event loops."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cellctl.api.client import ControlClient
from cellctl.errors import ApiError, CellctlError
from device_sims.harness import SimCell, free_port
from tests.fixtures.sdnotify import SdNotify
from tests.fixtures.unitfile import seconds, service_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
T = 30.0
"""Bound of every wait on the controller (s)."""
WATCHDOG_USEC = 2_000_000
"""WatchdogSec=2 for the child: a ping every 1 s."""
SETTLE_S = 0.5
"""After the child exited: a command it had sent reaches the simulators well within this."""
TIMEOUT_STOP_S = seconds(service_settings()["TimeoutStopSec"][0])
"""systemd kills a stop that takes longer than this (the unit file's figure)."""


@pytest.fixture
def sim_time_scale() -> float:
    """A tool change of 1.2 s: a changeover lasts 1-2 s, long enough to be interrupted in the middle."""
    return 0.3


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short folder for the store, the control socket and the cell file (socket paths are limited)."""
    with tempfile.TemporaryDirectory(prefix="lc-") as folder:
        yield Path(folder)


def _write_cell(folder: Path, sims: SimCell, *, down: str | None = None, recipes: Path | None = None) -> Path:
    """The example cell on the simulators, without MQTT, its store and socket in ``folder``; ``down``: that
    device points at a port nobody listens on (its simulator is down)."""
    yaml = YAML()
    data: Any = yaml.load((CONFIG / "cell.yaml").read_text())
    data["identity"]["cell"] = "lifecycle"
    for name in data["devices"]:
        data["devices"][name]["endpoint"] = sims.endpoint(name)
    if down is not None:
        scheme = sims.endpoint(down).split("://", 1)[0]
        data["devices"][down]["endpoint"] = f"{scheme}://127.0.0.1:{free_port()}"
    data["mqtt"] = {"enabled": False}
    data["store"] = {"path": str(folder / "cellctl.db")}
    data["api"] = {"socket": str(folder / "ctl.sock")}
    data["recipes_dir"] = str(recipes or CONFIG / "recipes")
    with (folder / "cell.yaml").open("w") as fh:
        yaml.dump(data, fh)
    return folder


@dataclass
class Child:
    """`cellctl run` as a child process, its output (JSON log lines) gathered in the background."""

    proc: asyncio.subprocess.Process
    lines: list[str]
    changed: asyncio.Event
    task: asyncio.Task[None]

    async def wait_line(self, text: str, timeout: float = T) -> dict[str, Any]:
        """The first log line whose event contains ``text`` (bounded)."""
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                for line in self.lines:
                    if text in line:
                        try:
                            return dict(json.loads(line))
                        except ValueError:
                            return {"event": line}
                if self.task.done():
                    raise AssertionError("the controller ended its output:\n" + "\n".join(self.lines[-30:]))
                await self.changed.wait()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = T) -> int:
        """Send ``sig`` and wait for the exit (killed past ``timeout``); the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await asyncio.wait([self.task], timeout=5)
        self.task.cancel()
        return code


async def _spawn(folder: Path, *args: str, env: dict[str, str] | None = None) -> Child:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cellctl", "run", "--config", str(folder), "--log-format", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO,
        env={**base, **(env or {})},
    )  # fmt: skip
    lines: list[str] = []
    changed = asyncio.Event()

    async def gather() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip())
            changed.set()
        changed.set()

    return Child(proc, lines, changed, asyncio.create_task(gather(), name="test:child-output"))


@pytest.fixture
async def children() -> AsyncIterator[list[Child]]:
    """Children spawned by a test; any still running at its end is killed."""
    spawned: list[Child] = []
    yield spawned
    for child in spawned:
        await child.stop(signal.SIGKILL, timeout=5)


async def _client(folder: Path, child: Child) -> ControlClient:
    """A client on the controller's socket once it answers (bounded)."""
    async with asyncio.timeout(T):
        while True:
            if child.proc.returncode is not None:
                raise AssertionError("controller exited:\n" + "\n".join(child.lines[-30:]))
            client = ControlClient(folder / "ctl.sock")
            try:
                await client.__aenter__()
                await client.request("status")
                return client
            except (CellctlError, OSError):
                await client.close()
                await asyncio.sleep(0.05)


async def _until(client: ControlClient, check: Any, timeout: float = T) -> dict[str, Any]:
    """Poll the status until ``check(status)`` holds (bounded); that status."""
    async with asyncio.timeout(timeout):
        while True:
            status = await client.request("status")
            if check(status):
                return status
            await asyncio.sleep(0.02)


async def _reset_and_start(client: ControlClient) -> None:
    """Reset (retried while the e-stop input is not read yet, right after the start), then Start."""
    async with asyncio.timeout(T):
        while True:
            try:
                await client.request("command", name="reset")
                break
            except ApiError as exc:
                if exc.code != "interlock":
                    raise
                await asyncio.sleep(0.1)
    await _until(client, lambda s: s["state"] == "Idle")
    await client.request("command", name="start")


def _journal(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every journal entry (kind, data), read-only after the controller exited."""
    db = sqlite3.connect(f"file:{folder / 'cellctl.db'}?mode=ro", uri=True)
    try:
        return [(k, json.loads(d)) for k, d in db.execute("SELECT kind, data FROM journal ORDER BY id")]
    finally:
        db.close()


def _sent(sims: SimCell) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    return Counter(sims.counters), Counter(sims.writes)


# ---------------------------------------------------------------------------------------------------------
# sd_notify: READY, STATUS, WATCHDOG, STOPPING


async def test_ready_comes_with_the_socket_listening_and_a_device_down_then_pings_then_stopping(
    sim_cell: SimCell, short_tmp: Path, sd_notify: SdNotify, children: list[Child]
) -> None:
    """Given robot1's simulator down, when `cellctl run` starts under the harness, then READY=1 comes with the
    control socket accepting, the status reports robot1 down, STATUS lines carry the cell state, WATCHDOG=1
    comes about every WatchdogSec/2, and SIGTERM sends STOPPING=1, then the process exits 0."""
    folder = _write_cell(short_tmp, sim_cell, down="robot1")
    child = await _spawn(folder, env=sd_notify.env(WATCHDOG_USEC))
    children.append(child)
    ready = await sd_notify.wait_key("READY", "1", timeout=T)
    # The socket listens by READY: one connection attempt, no retry.
    async with ControlClient(folder / "ctl.sock") as client:
        status = await client.request("status")
        assert status["state"] == "Stopped"
        devices = {d["device"]: d for d in (await client.request("devices"))["devices"]}
        assert devices["robot1"]["state"] != "up", "READY did not wait for the devices"
        assert ready.fields["STATUS"].startswith("state=Stopped ")
        async with asyncio.timeout(T):
            while devices["robot1"]["state"] != "down":
                await asyncio.sleep(0.1)
                devices = {d["device"]: d for d in (await client.request("devices"))["devices"]}
        assert status["state"] == "Stopped"
    await sd_notify.wait_key("WATCHDOG", "1", count=5, timeout=T)
    at = [n.at for n in sd_notify.with_key("WATCHDOG", "1")]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    half = WATCHDOG_USEC / 2_000_000
    assert all(0.8 * half <= g < 2 * half for g in gaps), f"pings every WatchdogSec/2 = {half} s: {gaps}"
    after_ready = [n for n in sd_notify.with_key("STATUS") if n.at >= ready.at]
    assert len(after_ready) >= 5 and all("state=Stopped" in n.fields["STATUS"] for n in after_ready)

    assert await child.stop(signal.SIGTERM) == 0, "\n".join(child.lines[-20:])
    stopping = sd_notify.with_key("STOPPING", "1")
    assert len(stopping) == 1 and stopping[0].at > ready.at
    assert len(sd_notify.with_key("READY")) == 1


# ---------------------------------------------------------------------------------------------------------
# SIGTERM: an orderly stop, and nothing sent after it


async def _sigterm_and_settle(child: Child, sims: SimCell) -> None:
    """SIGTERM; the exit is 0 within TimeoutStopSec; the simulators' counters do not move after the exit."""
    sent = time.monotonic()
    code = await child.stop(signal.SIGTERM, timeout=TIMEOUT_STOP_S)
    took = time.monotonic() - sent
    assert code == 0, "\n".join(child.lines[-30:])
    assert took < TIMEOUT_STOP_S
    at_exit = _sent(sims)
    await asyncio.sleep(SETTLE_S)  # a bounded look for anything still on its way (nothing may be)
    assert _sent(sims) == at_exit, "a device was commanded after the stop completed"


async def test_sigterm_in_production_stops_the_cell_in_order_and_sends_nothing_after(
    sim_cell: SimCell, short_tmp: Path, children: list[Child]
) -> None:
    """Given a job in production, when SIGTERM arrives, then the journal ends Stopping -> Stopped by the
    system, the job is left started (to go on after a restart), the exit is 0 in time, and nothing is sent
    to the devices after the exit."""
    folder = _write_cell(short_tmp, sim_cell)
    child = await _spawn(folder)
    children.append(child)
    client = await _client(folder, child)
    try:
        await client.request("submit", order_id="SO-P", variant="oslo", quantity=50)
        await _reset_and_start(client)
        await _until(
            client,
            lambda s: (
                s["state"] == "Execute"
                and s["changeover"] is None
                and (s["current_job"] or {}).get("produced", 0) >= 1
            ),
        )
    finally:
        await client.close()
    await _sigterm_and_settle(child, sim_cell)

    journal = _journal(folder)
    _assert_stopped_by_the_shutdown(journal)
    jobs = [d for k, d in journal if k == "job" and d["order_id"] == "SO-P"]
    # Left started with its count: after a restart it goes on from there (issue 4), nothing is lost.
    assert jobs[-1]["status"] == "started"
    parts = [d for k, d in journal if k == "part"]
    assert parts and len({p["index"] for p in parts}) == len(parts)


def _assert_stopped_by_the_shutdown(journal: list[tuple[str, dict[str, Any]]]) -> None:
    """The journal's last state changes are the shutdown's Stop (sent by the system) and the engine's Stopped
    at its end."""
    changes = [d for k, d in journal if k == "state_changed"]
    assert [(c["previous"], c["state"], c["command"], c["by"]) for c in changes[-2:]] == [
        ("Execute", "Stopping", "stop", "system"),
        ("Stopping", "Stopped", None, "engine"),
    ], changes[-3:]


async def test_sigterm_in_a_changeover_stops_it_in_order_and_sends_nothing_after(
    sim_cell: SimCell, short_tmp: Path, children: list[Child]
) -> None:
    """Given a changeover in progress, when SIGTERM arrives, then the journal ends Stopping -> Stopped, the
    changeover is journaled as the engine ends one cut by a Stop, the exit is 0 in time, and nothing is sent
    to the devices after the exit."""
    folder = _write_cell(short_tmp, sim_cell)
    child = await _spawn(folder)
    children.append(child)
    client = await _client(folder, child)
    try:
        await client.request("submit", order_id="SO-C", variant="bergen", quantity=5)
        await _reset_and_start(client)
        await _until(client, lambda s: s["changeover"] is not None and s["changeover"]["done"] >= 1)
    finally:
        await client.close()
    await _sigterm_and_settle(child, sim_cell)

    journal = _journal(folder)
    _assert_stopped_by_the_shutdown(journal)
    changeovers = [d for k, d in journal if k == "changeover"]
    # The engine ends a changeover cut by a Stop as failed, saying so (held by stop, with the steps done);
    # the step the Stop interrupted is journaled as failed, and none is left started.
    assert [c["status"] for c in changeovers] == ["started", "failed"]
    assert "held by stop" in changeovers[-1]["reason"]
    last_step: dict[str, str] = {}
    for kind, data in journal:
        if kind == "step":
            last_step[data["step"]] = data["status"]
    assert "started" not in last_step.values(), last_step
    assert sum(1 for st in last_step.values() if st == "done") < len(changeovers[-1]["steps"])
