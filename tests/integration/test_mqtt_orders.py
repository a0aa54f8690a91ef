"""Orders over MQTT end to end: a controller (CellApp on soft devices) with ``mqtt.commands`` enabled
against a private mosquitto; the test plays the MES with its own MQTT client and reads the replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cellctl.core.clock import Clock
from cellctl.core.events import OperatorAction
from cellctl.core.ports import Driver
from cellctl.drivers.soft import SoftDriver
from cellctl.runtime.app import CellApp, Controller
from cellctl.schema.cell import Identity, MqttCommandsConfig, MqttConfig
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.telemetry.topics import status_topic, topic_root
from tests.fixtures.broker import Collector, Mosquitto, Received, collect
from tests.fixtures.cellfolder import cell_folder

pytestmark = pytest.mark.broker

WAIT_S = 10.0


@dataclass
class Mes:
    """The test's side: the controller, the topics, and a client to send commands with."""

    controller: Controller
    client: aiomqtt.Client
    replies: Collector
    requests_topic: str
    replies_topic: str

    async def send(self, command: dict[str, Any] | bytes, *, retain: bool = False) -> None:
        payload = command if isinstance(command, bytes) else json.dumps(command).encode()
        await self.client.publish(self.requests_topic, payload, qos=1, retain=retain)

    async def reply(self, command_id: str | None, *, nth: int = 1) -> dict[str, Any]:
        """The ``nth`` reply carrying ``command_id``, waited for."""

        def mine(messages: list[Received]) -> list[dict[str, Any]]:
            bodies = [json.loads(m.payload) for m in messages if m.topic == self.replies_topic]
            return [b for b in bodies if b["id"] == command_id]

        await self.replies.wait_until(lambda ms: len(mine(ms)) >= nth, timeout=WAIT_S)
        return mine(self.replies.messages)[nth - 1]

    async def actions(self) -> list[dict[str, Any]]:
        """The operator actions journaled so far (their data)."""
        return [e.data for e in await self.controller.store.journal(kinds=[OperatorAction.kind])]

    def queue(self) -> list[dict[str, Any]]:
        return [job.to_dict() for job in self.controller.engine.status().queue]


def submit(command_id: str, order_id: str = "PO-1", **args: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "id": command_id,
        "cmd": "submit",
        "args": {"order_id": order_id, "variant": "oslo", "quantity": 2, **args},
    }


@pytest.fixture
def identity() -> Identity:
    """A cell of its own per test, so retained messages of other tests never show up."""
    return Identity(enterprise="acme", site="test", area="a1", line="l1", cell=f"c{uuid.uuid4().hex[:10]}")


@pytest.fixture
def loaded(tmp_path: Path, broker: Mosquitto, identity: Identity) -> LoadedConfig:
    cell_folder(tmp_path)
    config = load_config(tmp_path)
    mqtt = MqttConfig(
        host=broker.host, port=broker.port, keepalive_s=5, commands=MqttCommandsConfig(enabled=True)
    )
    return config.with_cell(config.cell.model_copy(update={"identity": identity, "mqtt": mqtt}))


def soft(name: str, config: LoadedConfig, clock: Clock) -> Driver:
    return SoftDriver(name, config.cell.devices[name].tags, clock=clock)


@contextlib.asynccontextmanager
async def controller(loaded: LoadedConfig) -> AsyncIterator[Controller]:
    """The controller running until the block ends, its command handler subscribed (the birth went out)."""
    identity = loaded.cell.identity
    stop = asyncio.Event()
    started: asyncio.Future[Controller] = asyncio.get_running_loop().create_future()

    async def ready(c: Controller) -> None:
        started.set_result(c)

    host, port = loaded.cell.mqtt.host, loaded.cell.mqtt.port
    async with collect(host, port, status_topic(identity)) as status, asyncio.TaskGroup() as tg:
        task = tg.create_task(CellApp(loaded, driver_factory=soft).run(stop, on_ready=ready))
        try:
            async with asyncio.timeout(WAIT_S):
                await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # it failed to start: its error, not a missing result
            running = started.result()
            # The birth is published after the subscriptions: from then on commands are heard.
            await status.wait_until(
                lambda ms: any(json.loads(m.payload)["status"] == "online" for m in ms), timeout=WAIT_S
            )
            yield running
        finally:
            stop.set()


@contextlib.asynccontextmanager
async def mes(loaded: LoadedConfig) -> AsyncIterator[Mes]:
    root = topic_root(loaded.cell.identity)
    host, port = loaded.cell.mqtt.host, loaded.cell.mqtt.port
    async with (
        collect(host, port, f"{root}/cmd/reply/#") as replies,
        aiomqtt.Client(host, port) as client,
        controller(loaded) as running,
    ):
        yield Mes(running, client, replies, f"{root}/cmd/order", f"{root}/cmd/reply")


async def test_a_submit_over_mqtt_queues_the_job_and_replies_with_it(loaded: LoadedConfig) -> None:
    async with mes(loaded) as m:
        await m.send(submit("c-1"))
        reply = await m.reply("c-1")
        queue = m.queue()
        actions = await m.actions()

    assert reply["ok"] is True and reply["schema"] == "cellctl.cmd-reply/1"
    job = reply["result"]
    assert (job["order_id"], job["status"], job["quantity"]) == ("PO-1", "queued", 2)
    assert [j["job_id"] for j in queue] == [job["job_id"]]
    (action,) = actions
    assert (action["action"], action["by"], action["accepted"]) == ("submit", "mqtt:mes", True)
    assert action["args"]["caller"] == {"via": "mqtt", "name": "mes", "command_id": "c-1"}


async def test_the_same_command_id_again_gets_the_same_reply_and_makes_one_job(loaded: LoadedConfig) -> None:
    async with mes(loaded) as m:
        await m.send(submit("c-1"))
        first = await m.reply("c-1")
        await m.send(submit("c-1"))
        again = await m.reply("c-1", nth=2)
        queue = m.queue()
        actions = await m.actions()

    assert again == first
    assert len(queue) == 1
    assert len(actions) == 1


async def test_the_same_order_under_a_new_command_id_is_answered_with_its_job(loaded: LoadedConfig) -> None:
    async with mes(loaded) as m:
        await m.send(submit("c-1"))
        first = await m.reply("c-1")
        await m.send(submit("c-2"))
        second = await m.reply("c-2")
        queue = m.queue()

    assert second["ok"] and second["result"]["job_id"] == first["result"]["job_id"]
    assert len(queue) == 1


async def test_a_retained_command_is_not_run_and_is_cleared(loaded: LoadedConfig) -> None:
    root = topic_root(loaded.cell.identity)
    host, port = loaded.cell.mqtt.host, loaded.cell.mqtt.port
    # Given a command left retained on the broker before the controller comes up
    async with aiomqtt.Client(host, port) as client:
        await client.publish(f"{root}/cmd/order", json.dumps(submit("c-1")).encode(), qos=1, retain=True)

    # When the controller connects
    async with mes(loaded) as m:
        reply = await m.reply("c-1")
        queue = m.queue()
        actions = await m.actions()

    # Then it is refused as retained, nothing is queued or journaled, and the broker no longer keeps it
    assert reply["ok"] is False and reply["error"]["code"] == "retained"
    assert queue == [] and actions == []
    async with collect(host, port, f"{root}/cmd/order") as late, aiomqtt.Client(host, port) as client:
        await client.publish(f"{root}/cmd/order", b"marker", qos=1)
        seen = await late.wait_until(lambda ms: any(r.payload == b"marker" for r in ms), timeout=WAIT_S)
    assert [r.payload for r in seen] == [b"marker"]


async def test_a_command_published_retained_while_connected_runs_once_across_a_restart(
    loaded: LoadedConfig,
) -> None:
    async with mes(loaded) as m:
        await m.send(submit("c-1"), retain=True)
        first = await m.reply("c-1")
    async with mes(loaded) as m:
        again = await m.reply("c-1")
        queue = m.queue()
        actions = await m.actions()

    assert first["ok"] is True and again == first
    assert len(queue) == 1 and len(actions) == 1


async def test_a_malformed_command_gets_an_error_naming_the_field_and_changes_nothing(
    loaded: LoadedConfig,
) -> None:
    async with mes(loaded) as m:
        await m.send(
            b'{"v":1,"id":"c-1","cmd":"submit","args":{"order_id":"PO-1","variant":"oslo","quantity":NaN}}'
        )
        nan = await m.reply("c-1")
        await m.send(b"this is not JSON")
        garbage = await m.reply(None)
        queue = m.queue()
        actions = await m.actions()

    assert nan["ok"] is False and nan["error"]["code"] == "bad_request"
    assert "args.quantity" in nan["error"]["message"]
    assert garbage["error"]["code"] == "bad_json"
    assert queue == [] and actions == []


async def test_a_cancel_by_order_id_cancels_its_job(loaded: LoadedConfig) -> None:
    async with mes(loaded) as m:
        await m.send(submit("c-1"))
        submitted = await m.reply("c-1")
        await m.send({"v": 1, "id": "c-2", "cmd": "cancel", "args": {"order_id": "PO-1"}})
        cancelled = await m.reply("c-2")
        queue = m.queue()
        actions = await m.actions()

    assert cancelled["ok"] is True
    assert cancelled["result"]["job_id"] == submitted["result"]["job_id"]
    assert cancelled["result"]["status"] == "cancelled"
    assert queue == []
    assert [(a["action"], a["by"], a["args"].get("order_id")) for a in actions] == [
        ("submit", "mqtt:mes", "PO-1"),
        ("cancel", "mqtt:mes", "PO-1"),
    ]


async def test_a_command_other_than_submit_and_cancel_is_not_allowed(loaded: LoadedConfig) -> None:
    async with mes(loaded) as m:
        await m.send({"v": 1, "id": "c-1", "cmd": "command", "args": {"name": "reset"}})
        reply = await m.reply("c-1")
        state = m.controller.engine.status().state

    assert reply["ok"] is False and reply["error"]["code"] == "not_allowed"
    assert state == "Stopped"


async def test_a_reply_goes_to_the_reply_to_topic_the_command_names(loaded: LoadedConfig) -> None:
    async with mes(loaded) as m:
        m.replies_topic = f"{m.replies_topic}/line-mes"
        await m.send({**submit("c-1"), "reply_to": m.replies_topic})
        reply = await m.reply("c-1")

    assert reply["ok"] is True
