"""The control socket while the store fails: the cell is held with the `store` alarm, the API keeps answering,
a submit is refused with the store's error, and Unhold over the socket goes on once the store records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService
from cellctl.core.events import AlarmAction, AlarmEvent, PartProduced
from cellctl.engine import Engine, OrderRequest, State
from cellctl.engine.engine import STORE_ALARM
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from tests.integration.test_api import WAIT_S, start, stop
from tests.softcell import FailingStore, soft_cell


async def test_the_api_answers_while_the_store_fails_and_unhold_goes_on(
    config_dir: Path, tmp_path: Path
) -> None:
    config = load_config(config_dir)
    store = FailingStore()
    store.fail_from(lambda e: isinstance(e, PartProduced) and e.index == 2)
    engine = Engine(config, soft_cell(config.cell), store)
    engine_task = asyncio.get_running_loop().create_task(engine.run(), name="test:engine")
    await engine.wait_for(State.STOPPED, timeout=WAIT_S)
    server = ControlServer(tmp_path / "cell.sock", ControlService(engine, identity=config.cell.identity))
    server_task = await start(server)
    try:
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        async with ControlClient(server.path) as client:
            await client.request("command", name="reset")
            await engine.wait_for(State.IDLE, timeout=WAIT_S)
            await client.request("command", name="start")
            await engine.wait_for(State.HELD, timeout=WAIT_S)

            status = await client.request("status")
            assert status["state"] == "Held" and "disk is full" in status["reason"]
            alarm = next(a for a in status["alarms"] if a["id"] == STORE_ALARM)
            assert alarm["active"] and alarm["severity"] == "critical"
            with pytest.raises(ApiError, match="could not journal job"):
                await client.request("submit", order_id="PO-2", variant="oslo", quantity=1)
            assert not engine_task.done()

            store.heal()
            await client.request("command", name="unhold")
            await engine.wait_for(State.SUSPENDED, timeout=WAIT_S)
            status = await client.request("status")
    finally:
        await stop(server_task)
        await stop(engine_task)

    assert status["counters"]["parts"] == 2 and status["queue"] == []
    actions = [e.action for e in store.events if isinstance(e, AlarmEvent) and e.alarm == STORE_ALARM]
    assert actions == [AlarmAction.RAISED, AlarmAction.CLEARED]
