"""Acknowledging alarms over the control socket and with `cellctl ctl ack` / `ctl alarms`: each answer is
journaled as an OperatorAction with who sent it, and the AlarmEvent says who acknowledged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService
from cellctl.core.events import AlarmAction, AlarmEvent, OperatorAction, Severity
from cellctl.engine import Engine, State
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from tests.integration.test_api import WAIT_S, Cell, ListSink, run_ctl, start, stop
from tests.softcell import soft_cell


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    config = load_config(config_dir)
    sink = ListSink()
    engine = Engine(config, soft_cell(config.cell), sink)
    engine_task = asyncio.get_running_loop().create_task(engine.run(), name="test:engine")
    await engine.wait_for(State.STOPPED, timeout=WAIT_S)
    server = ControlServer(
        tmp_path / "cell.sock", ControlService(engine, identity=config.cell.identity, sink=sink)
    )
    server_task = await start(server)
    yield Cell(server.path, engine, sink)
    await stop(server_task)
    await stop(engine_task)


def acks(cell: Cell) -> list[OperatorAction]:
    return [e for e in cell.sink.events if isinstance(e, OperatorAction) and e.action == "ack"]


async def test_ack_over_the_socket_is_journaled_with_who_and_clears_a_cleared_alarm(cell: Cell) -> None:
    alarms = cell.engine.alarms
    await alarms.raise_alarm("spc:width_mm", severity=Severity.WARNING, message="7 points up", source="spc")
    await alarms.clear_alarm("spc:width_mm")

    async with ControlClient(cell.path) as client:
        status = await client.request("ack", alarm="spc:width_mm")

    assert status["alarms"] == []
    [action] = acks(cell)
    assert (
        action.accepted
        and action.args["alarm"] == "spc:width_mm"
        and action.by == "api:" + action.args["caller"]["user"]
    )
    acked = [
        e for e in cell.sink.events if isinstance(e, AlarmEvent) and e.action is AlarmAction.ACKNOWLEDGED
    ]
    assert [(e.alarm, e.acked_by) for e in acked] == [("spc:width_mm", action.by)]


async def test_acking_an_unknown_alarm_is_refused_and_journaled_as_refused(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request("ack", alarm="nothing")

    assert info.value.code == "alarm_refused"
    [action] = acks(cell)
    assert not action.accepted and "no such alarm" in action.reason


async def test_ctl_alarms_lists_and_ctl_ack_acknowledges(cell: Cell) -> None:
    await cell.engine.alarms.raise_alarm(
        "estop", severity=Severity.CRITICAL, message="e-stop pressed", source="x"
    )
    sock = str(cell.path)

    listed = await run_ctl("--socket", sock, "alarms")
    assert listed.code == 0 and "estop [critical] active" in listed.out and "not acked" in listed.out
    acked = await run_ctl("--socket", sock, "ack", "estop")
    assert acked.code == 0 and "alarm estop acknowledged" in acked.out
    shown = await run_ctl("--socket", sock, "alarms", "--json")

    [alarm] = json.loads(shown.out)
    assert alarm["active"] and alarm["acked_by"] == acks(cell)[0].by  # still active: shown until it clears
