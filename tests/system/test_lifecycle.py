"""The service's lifecycle (issue 8): `cellctl run` as a child process under an sd_notify harness, on the
simulators (in this process, so their command counters are read directly): READY, STATUS and watchdog pings,
SIGTERM in production and in a changeover, a restart after SIGKILL, SIGHUP reload, and both event loops."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cellctl.api.client import ControlClient
from cellctl.errors import ApiError, CellctlError
from device_sims.harness import SimCell, free_port
from tests.fixtures.child import Child, spawn
from tests.fixtures.sdnotify import SdNotify
from tests.unit.test_systemd_units import CONTROLLER, one, service

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
T = 30.0
"""Bound of every wait on the controller (s)."""
WATCHDOG_USEC = 2_000_000
"""WatchdogSec=2 for the child: a ping every 1 s."""
SETTLE_S = 0.5
"""After the child exited: a command it had sent reaches the simulators well within this."""
TIMEOUT_STOP_S = float(one(service(CONTROLLER), "TimeoutStopSec"))
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


async def _wait_log(child: Child, text: str, timeout: float = T) -> dict[str, Any]:
    """The first JSON log line of ``child`` holding ``text``, parsed (bounded)."""
    line = await child.wait_for(re.escape(text), timeout)
    try:
        return dict(json.loads(line))
    except ValueError:
        return {"event": line}


async def _spawn(folder: Path, *args: str, env: dict[str, str] | None = None) -> Child:
    """`cellctl run` on ``folder`` as a child, JSON logs, without this process's own sd_notify variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    return await spawn(
        sys.executable, "-m", "cellctl", "run", "--config", str(folder), "--log-format", "json", *args,
        env={**base, **(env or {})}, name="cellctl-run",
    )  # fmt: skip


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


async def _until(
    client: ControlClient, check: Any, *, request: str = "status", timeout: float = T
) -> dict[str, Any]:
    """Poll ``request`` (the status) until ``check(reply)`` holds (bounded); that reply."""
    async with asyncio.timeout(timeout):
        while True:
            reply = await client.request(request)
            if check(reply):
                return reply
            await asyncio.sleep(0.02)


def _device_states(reply: dict[str, Any]) -> dict[str, str]:
    return {d["device"]: d["state"] for d in reply["devices"]}


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
        assert _device_states(await client.request("devices"))["robot1"] != "up", "READY waited for devices"
        assert ready.fields["STATUS"].startswith("state=Stopped ")
        await _until(client, lambda r: _device_states(r)["robot1"] == "down", request="devices")
        assert (await client.request("status"))["state"] == "Stopped", "a device down is reported, not fatal"
    await sd_notify.wait_key("WATCHDOG", "1", count=5, timeout=T)
    at = [n.at for n in sd_notify.with_key("WATCHDOG", "1")]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    half = WATCHDOG_USEC / 2_000_000
    assert all(0.8 * half <= g < 2 * half for g in gaps), f"pings every WatchdogSec/2 = {half} s: {gaps}"
    after_ready = [n for n in sd_notify.with_key("STATUS") if n.at >= ready.at]
    assert len(after_ready) >= 3 and all("state=Stopped" in n.fields["STATUS"] for n in after_ready)

    assert await child.stop(signal.SIGTERM) == 0, "\n".join(child.lines[-20:])
    stopping = sd_notify.with_key("STOPPING", "1")
    assert len(stopping) == 1 and stopping[0].at > ready.at
    assert len(sd_notify.with_key("READY")) == 1


# ---------------------------------------------------------------------------------------------------------
# SIGTERM: an orderly stop, and nothing sent after it


async def _in_a_changeover(folder: Path, children: list[Child], *, order_id: str, quantity: int) -> Child:
    """`cellctl run` on ``folder`` with a bergen order started and its changeover one step or more in."""
    child = await _spawn(folder)
    children.append(child)
    client = await _client(folder, child)
    try:
        await client.request("submit", order_id=order_id, variant="bergen", quantity=quantity)
        await _reset_and_start(client)
        await _until(client, lambda s: s["changeover"] is not None and s["changeover"]["done"] >= 1)
    finally:
        await client.close()
    return child


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
    child = await _in_a_changeover(folder, children, order_id="SO-C", quantity=5)
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


# ---------------------------------------------------------------------------------------------------------
# a restart after SIGKILL


async def test_restarted_after_sigkill_in_a_changeover_it_comes_up_stopped_and_commands_nothing(
    sim_cell: SimCell, short_tmp: Path, children: list[Child]
) -> None:
    """Given a controller SIGKILLed in the middle of a changeover, when the service starts again, then the
    cell is Stopped with the unclean_stop alarm, and nothing is sent to the devices until the operator's Start
    (not after READY, not after Reset)."""
    folder = _write_cell(short_tmp, sim_cell)
    first = await _in_a_changeover(folder, children, order_id="SO-K", quantity=2)
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    await asyncio.sleep(SETTLE_S)  # bytes the dead process wrote reach the simulators
    at_kill = _sent(sim_cell)

    second = await _spawn(folder)
    children.append(second)
    client = await _client(folder, second)
    try:
        status = await _until(client, lambda s: any(a["id"] == "unclean_stop" for a in s["alarms"]))
        assert status["state"] == "Stopped"
        assert status["recovery"] is not None and status["recovery"]["changeover"] is not None
        # Every device connected and read.
        await _until(client, lambda r: set(_device_states(r).values()) == {"up"}, request="devices")
        await asyncio.sleep(SETTLE_S)  # a bounded look: connected and polled, still nothing commanded
        assert _sent(sim_cell) == at_kill, "a device was commanded after the restart, before Reset"
        await client.request("command", name="reset")
        await _until(client, lambda s: s["state"] == "Idle")
        assert _sent(sim_cell) == at_kill, "Reset commanded a device"
    finally:
        await client.close()
    assert await second.stop(signal.SIGTERM) == 0


# ---------------------------------------------------------------------------------------------------------
# SIGHUP: reload


async def test_sighup_refuses_a_broken_recipe_then_applies_a_changed_one_to_orders_accepted_after(
    sim_cell: SimCell, short_tmp: Path, sd_notify: SdNotify, children: list[Child]
) -> None:
    """Given a running controller with one queued oslo order, when oslo's recipe is broken and SIGHUP sent,
    then the reload is refused with file:line in one log line and the STATUS, and the service goes on with the
    old recipe; when the recipe is fixed with a new staple_pitch default (and a device endpoint changed) and
    SIGHUP sent again, then an order accepted afterwards takes the new default, the queued ones keep theirs,
    and the endpoint is reported as needing a restart."""
    recipes = short_tmp / "recipes"
    shutil.copytree(CONFIG / "recipes", recipes)
    folder = _write_cell(short_tmp, sim_cell, recipes=recipes)
    child = await _spawn(folder, env=sd_notify.env())
    children.append(child)
    oslo = recipes / "oslo.yaml"
    original = oslo.read_text()
    assert original.count("default: 12.0") == 1
    client = await _client(folder, child)
    try:
        await client.request("submit", order_id="SO-1", variant="oslo", quantity=1)

        oslo.write_text(original.replace("default: 12.0", "default: 30.0"))  # outside 8..16
        child.proc.send_signal(signal.SIGHUP)
        refused = await _wait_log(child, "reload refused")
        assert refused["level"] == "error"
        assert re.search(r"oslo\.yaml:\d+: parameters\.staple_pitch", refused["problems"]), refused
        await sd_notify.wait_for(
            lambda ns: any("reload refused" in n.fields.get("STATUS", "") for n in ns), T
        )
        await client.request("submit", order_id="SO-2", variant="oslo", quantity=1)

        oslo.write_text(original.replace("default: 12.0", "default: 10.0"))
        cell = (folder / "cell.yaml").read_text()
        gauge = sim_cell.endpoint("gauge")
        (folder / "cell.yaml").write_text(cell.replace(gauge, f"tcp://127.0.0.1:{free_port()}"))
        child.proc.send_signal(signal.SIGHUP)
        reloaded = await _wait_log(child, "configuration reloaded")
        assert reloaded["recipes"] == "recipes changed oslo"
        restart = await _wait_log(child, "needs a restart")
        assert restart["event"] == "needs a restart: devices"
        await sd_notify.wait_for(lambda ns: any(" reloaded " in n.fields.get("STATUS", "") for n in ns), T)
        await client.request("submit", order_id="SO-3", variant="oslo", quantity=1)

        queue = {j["order_id"]: j for j in (await client.request("status"))["queue"]}
        assert {o: j["parameters"]["staple_pitch"] for o, j in queue.items()} == {
            "SO-1": 12.0,
            "SO-2": 12.0,
            "SO-3": 10.0,
        }
        assert queue["SO-1"]["recipe_hash"] == queue["SO-2"]["recipe_hash"] != queue["SO-3"]["recipe_hash"]
        # The endpoint change waits for a restart: the gauge is still read where it was.
        assert _device_states(await client.request("devices"))["gauge"] in ("up", "connecting")
    finally:
        await client.close()
    assert await child.stop(signal.SIGTERM) == 0


# ---------------------------------------------------------------------------------------------------------
# both event loops


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_the_service_runs_on_each_event_loop(
    loop: str, sim_cell: SimCell, short_tmp: Path, sd_notify: SdNotify, children: list[Child]
) -> None:
    """Given `--loop asyncio` or `--loop uvloop`, the service logs that loop, sends READY, answers a request
    over its socket, and stops on SIGTERM with STOPPING and exit 0."""
    pytest.importorskip(loop)
    folder = _write_cell(short_tmp, sim_cell)
    child = await _spawn(folder, "--loop", loop, env=sd_notify.env())
    children.append(child)
    line = await _wait_log(child, '"event loop"')
    assert line["loop"] == loop and line["implementation"].startswith(f"{loop}.")
    await sd_notify.wait_key("READY", "1", timeout=T)
    async with ControlClient(folder / "ctl.sock") as client:
        assert (await client.request("status"))["state"] == "Stopped"
    assert await child.stop(signal.SIGTERM) == 0, "\n".join(child.lines[-20:])
    assert sd_notify.with_key("STOPPING", "1")
