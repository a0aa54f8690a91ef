"""Orders over MQTT without a broker: the handler against the real ControlService and Store, on a fake engine.

Each test hands the handler one message as the publisher would and reads the replies it returns.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cellctl.api.mqtt_orders import (
    MAX_PAYLOAD,
    REPLY_SCHEMA,
    MqttOrders,
    OrderCommand,
    OrderReply,
    json_schemas,
)
from cellctl.api.protocol import Request
from cellctl.api.service import ControlService, MesCaller
from cellctl.core.events import Event, OperatorAction
from cellctl.engine import OrderRequest
from cellctl.errors import JobError, StoreError
from cellctl.schema.cell import Identity, MqttCommandsConfig
from cellctl.store import SCHEMA_VERSION, Store
from cellctl.store.commands import ClaimState, CommandClaim
from cellctl.telemetry.encoding import Outgoing

IDENTITY = Identity(enterprise="nordform", site="lyon", area="upholstery", line="line1", cell="cell3")
ROOT = "nordform/lyon/upholstery/line1/cell3"
REQUESTS = f"{ROOT}/cmd/order"
REPLIES = f"{ROOT}/cmd/reply"


@dataclass(frozen=True)
class View:
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass
class FakeEngine:
    """Keeps one job per order id (same content: same job; other content: refused), counts every call."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    """When set, a submit waits for it (to hold a command in the middle of running)."""
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a submit reached the engine."""

    async def submit(self, order: OrderRequest, *, by: str) -> View:
        self.calls.append(("submit", order.order_id, by))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if order.variant not in {"oslo", "bergen"}:
            raise JobError(f"unknown variant {order.variant!r}")
        job = self.jobs.get(order.order_id)
        if job is not None:
            if job["content"] != order.content():
                raise JobError(f"order {order.order_id!r}: already accepted with different content")
            return View(job["view"])
        view = {"job_id": f"J-{len(self.jobs) + 1}", "order_id": order.order_id, "status": "queued"}
        self.jobs[order.order_id] = {"content": order.content(), "view": view}
        return View(view)

    async def cancel(self, job_id: str, *, by: str) -> View:
        self.calls.append(("cancel", job_id, by))
        for job in self.jobs.values():
            if job["view"]["job_id"] == job_id:
                job["view"]["status"] = "cancelled"
                return View(job["view"])
        raise JobError(f"no job {job_id!r}")

    async def cancel_order(self, order_id: str, *, by: str) -> View:
        self.calls.append(("cancel_order", order_id, by))
        job = self.jobs.get(order_id)
        if job is None:
            raise JobError(f"no order {order_id!r}: it was never accepted")
        job["view"]["status"] = "cancelled"
        return View(job["view"])

    def status(self) -> View:
        return View({"state": "Idle"})

    def add_listener(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return lambda: None


class ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def record(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)

    @property
    def actions(self) -> list[OperatorAction]:
        return [e for e in self.events if isinstance(e, OperatorAction)]


@dataclass
class Rig:
    handler: MqttOrders
    engine: FakeEngine
    sink: ListSink
    store: Store

    async def send(self, command: dict[str, Any] | bytes, *, retained: bool = False) -> list[Outgoing]:
        payload = command if isinstance(command, bytes) else json.dumps(command).encode()
        return await self.handler.handle(REQUESTS, payload, retained=retained)

    async def reply(self, command: dict[str, Any] | bytes) -> dict[str, Any]:
        """The one reply to ``command``, on the default reply topic, checked against the reply model."""
        (out,) = await self.send(command)
        assert out.topic == REPLIES and out.qos == 1 and not out.retain
        body: dict[str, Any] = json.loads(out.payload)
        OrderReply.model_validate(body)
        return body


def submit(command_id: str = "c-1", **args: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "id": command_id,
        "cmd": "submit",
        "args": {"order_id": "PO-1", "variant": "oslo", "quantity": 2, **args},
    }


def make_rig(store: Store, **config: Any) -> Rig:
    engine, sink = FakeEngine(), ListSink()
    service = ControlService(engine, identity=IDENTITY, sink=sink)
    commands = MqttCommandsConfig.model_validate({"enabled": True, **config})
    return Rig(MqttOrders(service, store, IDENTITY, commands), engine, sink, store)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "cellctl.db", synchronous="NORMAL")
    yield s
    await s.close()


@pytest.fixture
def rig(store: Store) -> Rig:
    return make_rig(store)


# --- running a command ----------------------------------------------------------------------------------


def test_the_handler_listens_on_the_command_topic_only(rig: Rig) -> None:
    assert list(rig.handler.subscriptions()) == [REQUESTS]
    assert rig.handler.reply_topic == REPLIES


async def test_a_submit_queues_the_order_and_replies_with_the_job(rig: Rig) -> None:
    reply = await rig.reply(submit())

    assert reply["schema"] == REPLY_SCHEMA and reply["v"] == 1 and reply["id"] == "c-1"
    assert reply["ok"] is True and "error" not in reply
    assert reply["result"] == {"job_id": "J-1", "order_id": "PO-1", "status": "queued"}
    assert rig.engine.calls == [("submit", "PO-1", "mqtt:mes")]


async def test_a_submit_is_journaled_as_an_operator_action_by_the_mes(rig: Rig) -> None:
    await rig.reply(submit("c-9"))

    (action,) = rig.sink.actions
    assert (action.action, action.by, action.accepted) == ("submit", "mqtt:mes", True)
    assert action.args["caller"] == {"via": "mqtt", "name": "mes", "command_id": "c-9"}
    assert action.args["order_id"] == "PO-1"


async def test_the_configured_mes_name_is_who_acted(store: Store) -> None:
    rig = make_rig(store, by="sap-me")

    await rig.reply(submit())

    assert rig.engine.calls == [("submit", "PO-1", "mqtt:sap-me")]
    assert rig.sink.actions[0].by == "mqtt:sap-me"


async def test_a_refused_submit_is_an_error_reply_and_a_refused_action(rig: Rig) -> None:
    reply = await rig.reply(submit(variant="narvik"))

    assert reply["ok"] is False and "result" not in reply
    assert reply["error"]["code"] == "job_error" and "narvik" in reply["error"]["message"]
    (action,) = rig.sink.actions
    assert action.accepted is False and "narvik" in action.reason


async def test_a_cancel_by_order_id_cancels_that_orders_job(rig: Rig) -> None:
    await rig.reply(submit("c-1"))

    reply = await rig.reply({"v": 1, "id": "c-2", "cmd": "cancel", "args": {"order_id": "PO-1"}})

    assert reply["ok"] is True and reply["result"]["status"] == "cancelled"
    assert rig.engine.calls[-1] == ("cancel_order", "PO-1", "mqtt:mes")
    assert [(a.action, a.args.get("order_id")) for a in rig.sink.actions] == [
        ("submit", "PO-1"),
        ("cancel", "PO-1"),
    ]


async def test_a_cancel_of_an_unknown_order_is_refused(rig: Rig) -> None:
    reply = await rig.reply({"v": 1, "id": "c-2", "cmd": "cancel", "args": {"order_id": "PO-404"}})

    assert reply["ok"] is False and reply["error"]["code"] == "job_error"
    assert "PO-404" in reply["error"]["message"]


async def test_the_same_order_id_again_under_a_new_command_id_answers_the_same_job(rig: Rig) -> None:
    first = await rig.reply(submit("c-1"))
    second = await rig.reply(submit("c-2"))

    assert second["ok"] and second["result"] == first["result"]
    assert len(rig.engine.jobs) == 1


# --- exactly once -----------------------------------------------------------------------------------------


async def test_a_repeated_command_id_gets_the_stored_reply_without_running_again(rig: Rig) -> None:
    (first,) = await rig.send(submit("c-1"))
    (again,) = await rig.send(submit("c-1"))

    assert again == first  # byte for byte, timestamp included
    assert rig.engine.calls == [("submit", "PO-1", "mqtt:mes")]
    assert len(rig.sink.actions) == 1


async def test_a_repeated_command_id_is_not_run_even_with_other_content(rig: Rig) -> None:
    (first,) = await rig.send(submit("c-1"))
    (again,) = await rig.send(submit("c-1", quantity=5))

    assert again == first
    assert len(rig.engine.calls) == 1


async def test_a_repeated_refused_command_gets_the_same_refusal_without_running(rig: Rig) -> None:
    (first,) = await rig.send(submit("c-1", variant="narvik"))
    (again,) = await rig.send(submit("c-1", variant="narvik"))

    assert again == first and json.loads(again.payload)["error"]["code"] == "job_error"
    assert len(rig.engine.calls) == 1


async def test_command_ids_are_remembered_across_a_restart(store: Store, tmp_path: Path) -> None:
    (first,) = await make_rig(store).send(submit("c-1"))
    await store.close()
    reopened = await Store.open(tmp_path / "cellctl.db", synchronous="NORMAL")
    try:
        rig = make_rig(reopened)
        (again,) = await rig.send(submit("c-1"))
    finally:
        await reopened.close()

    assert again == first
    assert rig.engine.calls == []


async def test_concurrent_duplicates_run_once(rig: Rig) -> None:
    rig.engine.gate = asyncio.Event()
    async with asyncio.timeout(5):
        async with asyncio.TaskGroup() as tg:
            one = tg.create_task(rig.send(submit("c-1")))
            two = tg.create_task(rig.send(submit("c-1")))
            await rig.engine.entered.wait()
            rig.engine.gate.set()

    assert one.result() == two.result()
    assert len(rig.engine.calls) == 1


async def test_a_command_claimed_by_a_run_that_stopped_runs_again(rig: Rig) -> None:
    # The process stopped after the claim, before the reply was stored.
    await rig.store.claim_command("mqtt:mes", "c-1", now=1e9, keep_s=1e9, keep_rows=100)

    reply = await rig.reply(submit("c-1"))

    assert reply["ok"] is True
    assert len(rig.engine.calls) == 1


async def test_a_retained_command_is_not_run_and_is_cleared_from_the_broker(rig: Rig) -> None:
    replies = await rig.send(submit("c-1"), retained=True)

    clear, reply = replies
    assert clear == Outgoing(REQUESTS, b"", retain=True)
    body = json.loads(reply.payload)
    assert reply.topic == REPLIES and body["id"] == "c-1"
    assert body["ok"] is False and body["error"]["code"] == "retained"
    assert rig.engine.calls == [] and rig.sink.actions == []


async def test_a_retained_command_does_not_use_up_its_id(rig: Rig) -> None:
    await rig.send(submit("c-1"), retained=True)

    reply = await rig.reply(submit("c-1"))

    assert reply["ok"] is True and len(rig.engine.calls) == 1


async def test_the_retained_copy_of_a_command_that_ran_gets_its_reply_and_is_cleared(rig: Rig) -> None:
    # Published with retain on while connected: it arrived live and ran; at the next connect it is retained.
    (first,) = await rig.send(submit("c-1"))

    clear, again = await rig.send(submit("c-1"), retained=True)

    assert clear == Outgoing(REQUESTS, b"", retain=True)
    assert again == first
    assert len(rig.engine.calls) == 1


async def test_an_empty_message_clearing_a_retained_command_is_not_answered(rig: Rig) -> None:
    assert await rig.handler.handle(REQUESTS, b"", retained=False) == []
    assert await rig.handler.handle(REQUESTS, b"", retained=True) == []


async def test_a_store_that_cannot_claim_the_id_refuses_the_command_unrun(store: Store) -> None:
    class BrokenLog:
        async def claim_command(self, source: str, command_id: str, **_: Any) -> CommandClaim:
            raise StoreError("disk is full")

        async def finish_command(self, source: str, command_id: str, reply: str, *, now: float) -> None:
            raise AssertionError("nothing ran, nothing to store")

        async def command_reply(self, source: str, command_id: str) -> str | None:
            raise StoreError("disk is full")

    rig = make_rig(store)
    handler = MqttOrders(
        ControlService(rig.engine, identity=IDENTITY, sink=rig.sink),
        BrokenLog(),
        IDENTITY,
        MqttCommandsConfig(enabled=True),
    )

    (out,) = await handler.handle(REQUESTS, json.dumps(submit()).encode(), retained=False)

    body = json.loads(out.payload)
    assert body["error"]["code"] == "unavailable" and "disk is full" in body["error"]["message"]
    assert rig.engine.calls == []


# --- malformed and not allowed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code", "names"),
    [
        (b"{not json", "bad_json", "not JSON"),
        (b"[1, 2]", "bad_request", "JSON object"),
        (b'"submit"', "bad_request", "JSON object"),
        (b"\xff\xfe", "bad_json", "not JSON"),
        (json.dumps({"v": 1, "cmd": "submit", "args": {}}).encode(), "bad_request", "id: Field required"),
        (json.dumps({"v": 1, "id": "", "cmd": "submit"}).encode(), "bad_request", "id:"),
        (json.dumps({"v": 1, "id": 7, "cmd": "submit"}).encode(), "bad_request", "id:"),
        (json.dumps({"v": 1, "id": "x" * 129, "cmd": "submit"}).encode(), "bad_request", "id:"),
    ],
)
async def test_a_command_without_a_readable_id_gets_a_reply_with_id_null(
    rig: Rig, payload: bytes, code: str, names: str
) -> None:
    reply = await rig.reply(payload)

    assert reply["id"] is None and reply["ok"] is False
    assert reply["error"]["code"] == code and names in reply["error"]["message"]
    assert rig.engine.calls == []


@pytest.mark.parametrize(
    ("command", "names"),
    [
        ({"v": 1, "id": "c-1", "cmd": "submit"}, "args.order_id: Field required"),
        (submit(quantity="ten"), "args.quantity"),
        (submit(quantity=2.5), "args.quantity"),
        (submit(quantity=0), "args.quantity"),
        (submit(parameters={"width": "wide"}), "args.parameters.width"),
        (submit(colour="red"), "args.colour: Extra inputs are not permitted"),
        (submit(due="tomorrow"), "args.due"),
        ({"id": "c-1", "cmd": "submit", "args": {}}, "v: Field required"),
        ({**submit(), "v": 2}, "v: Input should be 1"),
        ({**submit(), "cmd": 5}, "cmd:"),
        ({**submit(), "args": [1]}, "args:"),
        ({**submit(), "priority": 1}, "priority: Extra inputs are not permitted"),
        ({"v": 1, "id": "c-1", "cmd": "cancel", "args": {}}, "give exactly one of job_id and order_id"),
        ({"v": 1, "id": "c-1", "cmd": "cancel", "args": {"order_id": ""}}, "args.order_id"),
    ],
)
async def test_a_malformed_command_gets_an_error_naming_the_field_and_changes_nothing(
    rig: Rig, command: dict[str, Any], names: str
) -> None:
    reply = await rig.reply(command)

    assert reply["id"] == "c-1" and reply["ok"] is False
    assert reply["error"]["code"] == "bad_request" and names in reply["error"]["message"]
    assert rig.engine.calls == [] and rig.sink.actions == []
    assert await rig.store.command_count() == 0


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_a_non_finite_quantity_or_parameter_is_refused_naming_it(rig: Rig, constant: str) -> None:
    quantity = b'{"v":1,"id":"c-1","cmd":"submit","args":{"order_id":"PO-1","variant":"oslo","quantity":%s}}'
    parameter = (
        b'{"v":1,"id":"c-2","cmd":"submit","args":{"order_id":"PO-1","variant":"oslo","quantity":1,'
        b'"parameters":{"width":%s}}}'
    )

    by_quantity = await rig.reply(quantity % constant.encode())
    by_parameter = await rig.reply(parameter % constant.encode())

    assert "args.quantity" in by_quantity["error"]["message"]
    assert "args.parameters.width" in by_parameter["error"]["message"]
    assert rig.engine.calls == []


async def test_a_corrected_command_may_reuse_the_id_of_a_malformed_one(rig: Rig) -> None:
    await rig.reply(submit("c-1", quantity="ten"))

    reply = await rig.reply(submit("c-1"))

    assert reply["ok"] is True and len(rig.engine.calls) == 1


async def test_a_too_large_command_is_refused_unread(rig: Rig) -> None:
    payload = json.dumps(submit("c-1", note="x" * MAX_PAYLOAD)).encode()

    reply = await rig.reply(payload)

    assert reply["id"] is None and reply["error"]["code"] == "too_large"
    assert rig.engine.calls == []


@pytest.mark.parametrize("cmd", ["command", "status", "reorder", "watch", "journal", "self_destruct"])
async def test_commands_other_than_submit_and_cancel_are_not_allowed(rig: Rig, cmd: str) -> None:
    reply = await rig.reply({"v": 1, "id": "c-1", "cmd": cmd, "args": {"name": "start"}})

    assert reply["ok"] is False and reply["error"]["code"] == "not_allowed"
    assert cmd in reply["error"]["message"]
    assert rig.engine.calls == [] and rig.sink.actions == []


async def test_the_service_itself_refuses_an_mes_anything_but_submit_and_cancel() -> None:
    engine = FakeEngine()
    service = ControlService(engine, identity=IDENTITY)

    reply = await service.handle(Request(id=1, cmd="status"), MesCaller("mes"))

    assert not reply.ok and reply.error is not None and reply.error.code == "not_allowed"


# --- where replies go ---------------------------------------------------------------------------------------


async def test_a_reply_goes_to_the_requested_topic_under_the_reply_topic(rig: Rig) -> None:
    (out,) = await rig.send({**submit(), "reply_to": f"{REPLIES}/mes-7"})

    assert out.topic == f"{REPLIES}/mes-7" and json.loads(out.payload)["ok"] is True


async def test_a_reply_may_go_under_a_configured_prefix(store: Store) -> None:
    rig = make_rig(store, reply_prefixes=["plant/mes/replies"])

    (out,) = await rig.send({**submit(), "reply_to": "plant/mes/replies/cell3"})

    assert out.topic == "plant/mes/replies/cell3"


@pytest.mark.parametrize(
    "topic",
    [
        f"{ROOT}/state",
        f"{ROOT}/cmd/order",
        f"{REPLIES}x",
        "plant/anything",
        f"{REPLIES}/#",
        f"{REPLIES}/+/x",
        "",
        7,
    ],
)
async def test_a_reply_to_outside_the_allowed_topics_is_refused_on_the_reply_topic(
    rig: Rig, topic: object
) -> None:
    reply = await rig.reply({**submit(), "reply_to": topic})

    assert reply["id"] == "c-1" and reply["error"]["code"] == "bad_request"
    assert reply["error"]["message"].startswith("reply_to:")
    assert rig.engine.calls == []


# --- models and config --------------------------------------------------------------------------------


def test_the_request_and_reply_models_export_json_schemas() -> None:
    request = OrderCommand.model_json_schema()
    reply = OrderReply.model_json_schema(by_alias=True)

    assert set(request["required"]) == {"v", "id", "cmd"}
    assert request["properties"]["cmd"]["enum"] == ["submit", "cancel"]
    assert reply["properties"]["schema"]["const"] == REPLY_SCHEMA


async def test_commands_and_replies_on_the_wire_fit_the_exported_schemas(rig: Rig) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schemas = json_schemas()
    good = [
        submit("c-1", due="2026-11-28T14:00:00+01:00", parameters={"width": 4.5}),
        {"v": 1, "id": "c-2", "cmd": "cancel", "args": {"order_id": "PO-1"}},
    ]
    bad = [
        submit("c-3", quantity="ten"),
        {"v": 1, "id": "c-4", "cmd": "cancel", "args": {"order_id": "PO-1", "job_id": "J-1"}},
        {"v": 1, "id": "c-5", "cmd": "status"},
    ]
    replies = [await rig.reply(command) for command in (*good, *bad)]

    request = jsonschema.Draft202012Validator(schemas["cmd-order"])
    reply = jsonschema.Draft202012Validator(schemas["cmd-reply"])
    assert [request.is_valid(c) for c in (*good, *bad)] == [True, True, False, False, False]
    for body in replies:
        reply.validate(body)
    assert [r["ok"] for r in replies] == [True, True, False, False, False]


@pytest.mark.parametrize("prefix", ["plant/#", "plant/+/x", "$SYS/x", "plant/"])
def test_a_reply_prefix_with_wildcards_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ValidationError, match="not a topic prefix"):
        MqttCommandsConfig(reply_prefixes=(prefix,))


def test_orders_over_mqtt_are_off_unless_enabled() -> None:
    config = MqttCommandsConfig()

    assert config.enabled is False and config.by == "mes"


# --- the store's remembered ids ----------------------------------------------------------------------


async def test_remembered_ids_are_pruned_by_count(store: Store) -> None:
    for k in range(150):
        claim = await store.claim_command("mqtt:mes", f"c-{k}", now=1000.0, keep_s=3600, keep_rows=100)
        assert claim.state is ClaimState.NEW
        await store.finish_command("mqtt:mes", f"c-{k}", "{}", now=1000.0)

    assert await store.command_count() == 100
    newest = await store.claim_command("mqtt:mes", "c-149", now=1000.0, keep_s=3600, keep_rows=100)
    oldest = await store.claim_command("mqtt:mes", "c-0", now=1000.0, keep_s=3600, keep_rows=100)
    assert newest == CommandClaim(ClaimState.DONE, "{}")
    assert oldest.state is ClaimState.NEW


async def test_remembered_ids_are_pruned_by_age(store: Store) -> None:
    await store.claim_command("mqtt:mes", "old", now=1000.0, keep_s=60, keep_rows=100)
    await store.finish_command("mqtt:mes", "old", "{}", now=1000.0)
    await store.claim_command("mqtt:mes", "recent", now=1050.0, keep_s=60, keep_rows=100)
    await store.finish_command("mqtt:mes", "recent", "{}", now=1050.0)

    later = await store.claim_command("mqtt:mes", "new", now=1070.0, keep_s=60, keep_rows=100)

    assert later.state is ClaimState.NEW
    assert await store.command_count() == 2  # "old" went, "recent" and "new" stay


async def test_ids_of_different_senders_do_not_collide(store: Store) -> None:
    await store.claim_command("mqtt:mes", "c-1", now=1000.0, keep_s=60, keep_rows=100)
    await store.finish_command("mqtt:mes", "c-1", "{}", now=1000.0)

    other = await store.claim_command("mqtt:qms", "c-1", now=1000.0, keep_s=60, keep_rows=100)

    assert other.state is ClaimState.NEW


async def test_a_store_of_version_5_gains_the_commands_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    await (await Store.open(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE commands")
        # The commands table came with version 6.
        conn.execute("UPDATE schema_version SET version = 5")

    store = await Store.open(path)
    try:
        claim = await store.claim_command("mqtt:mes", "c-1", now=1.0, keep_s=60, keep_rows=100)
        settings = await store.settings()
    finally:
        await store.close()

    assert claim.state is ClaimState.NEW and settings["schema_version"] == SCHEMA_VERSION
