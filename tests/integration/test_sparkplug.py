"""The publisher with the Sparkplug B encoding against a private mosquitto: deaths, births, seq, rebirth.

Payloads are decoded with the protobuf schema; each test has a group of its own, so nothing retained or
published by another test shows up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from ruamel.yaml import YAML

from cellctl.core.clock import Clock
from cellctl.core.events import DeviceHealthChanged, Measurement, PartProduced, StateChanged, Verdict
from cellctl.core.ports import Driver
from cellctl.drivers import SoftDriver
from cellctl.runtime.app import CellApp, Controller
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.store import Store
from cellctl.telemetry._sparkplug_b_pb2 import Payload
from cellctl.telemetry.publisher import OutboxPublisher
from cellctl.telemetry.recorder import Recorder
from cellctl.telemetry.sparkplug import (
    BDSEQ_METRIC,
    REBIRTH_METRIC,
    DataType,
    SparkplugEncoding,
    decode,
    metric_value,
)
from tests.fixtures.broker import Mosquitto, Received, collect
from tests.fixtures.cellfolder import cell_folder
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.telemetry import running

pytestmark = pytest.mark.broker

WAIT_S = 20.0  # generous: a reconnect may wait out one backoff (capped at 0.5 s here)


@dataclass(frozen=True)
class Node:
    """One test's Sparkplug edge node: its ids and topics."""

    identity: Identity
    group: str

    @property
    def edge(self) -> str:
        return self.identity.cell

    def topic(self, kind: str) -> str:
        return f"spBv1.0/{self.group}/{kind}/{self.edge}"

    @property
    def everything(self) -> str:
        return f"spBv1.0/{self.group}/#"


@pytest.fixture
def node() -> Node:
    identity = Identity(
        enterprise="acme", site="test", area="a1", line="l1", cell=f"c{uuid.uuid4().hex[:10]}"
    )
    return Node(identity, f"g{uuid.uuid4().hex[:10]}")


def sparkplug_publisher(
    store: Store, node: Node, host: str, port: int, *, primary_host: str | None = None
) -> OutboxPublisher:
    config = MqttConfig.model_validate(
        {
            "host": host,
            "port": port,
            "keepalive_s": 5,
            "encoding": "sparkplug-b",
            "sparkplug": {"group_id": node.group, "primary_host_id": primary_host},
        }
    )
    encoding = SparkplugEncoding(node.identity, config.sparkplug, store, devices=("robot1",))
    return OutboxPublisher(
        store, config, node.identity, backoff_base_s=0.05, backoff_cap_s=0.5, encoding=encoding
    )


def part(characteristic: str) -> PartProduced:
    measurement = Measurement(
        characteristic=characteristic,
        value=0.01,
        quality="good",
        units="mm",
        nominal=0.0,
        lsl=-0.1,
        usl=0.1,
        verdict=Verdict.PASS,
    )
    return PartProduced(
        ts=2000.0,
        part="P1",
        job="J1",
        variant="v",
        index=1,
        verdict=Verdict.PASS,
        measurements=(measurement,),
    )


def state(i: int) -> StateChanged:
    return StateChanged(ts=1000.0 + i, state=f"S{i}", state_no=i, previous="x", command=None, by="test")


def kind(message: Received) -> str:
    return message.topic.split("/")[2]


def of_kind(messages: list[Received], name: str) -> list[Payload]:
    return [decode(m.payload) for m in messages if kind(m) == name]


def count(name: str, n: int) -> Callable[[list[Received]], bool]:
    return lambda messages: sum(1 for m in messages if kind(m) == name) >= n


def bdseq(payload: Payload) -> object:
    return next(metric_value(m) for m in payload.metrics if m.name == BDSEQ_METRIC)


def values(payload: Payload) -> dict[str, object]:
    return {m.name: metric_value(m) for m in payload.metrics}


async def publish(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def rebirth_request() -> bytes:
    metric = Payload.Metric(name=REBIRTH_METRIC, datatype=DataType.BOOLEAN, boolean_value=True)
    return Payload(timestamp=int(time.time() * 1000), metrics=[metric]).SerializeToString()


def host_state(online: bool) -> bytes:
    return json.dumps({"online": online, "timestamp": int(time.time() * 1000)}).encode()


# --- deaths and births across connections ------------------------------------------------------------------


async def test_a_dropped_link_fires_the_ndeath_will_with_its_bdseq_and_the_next_connection_takes_the_next(
    broker: Mosquitto, store: Store, node: Node
) -> None:
    async with TcpProxy(broker.host, broker.port) as proxy:
        publisher = sparkplug_publisher(store, node, proxy.host, proxy.port)
        recorder = Recorder(store, node.identity)
        recorder.add_listener(publisher.notify)
        async with collect(broker.host, broker.port, node.everything) as c:
            async with running(publisher):
                await c.wait_until(count("NBIRTH", 1), timeout=WAIT_S)
                await recorder.record(state(1))
                await c.wait_until(count("NDATA", 1), timeout=WAIT_S)
                # Acknowledged and deleted before the cut (the subscriber sees a message before its PUBACK
                # reaches the publisher; a row still in flight would be sent again after the reconnect)
                assert await publisher.flush(WAIT_S)
                # When the link drops without a DISCONNECT
                await proxy.cut()
                await c.wait_until(count("NDEATH", 1), timeout=WAIT_S)
                # And comes back
                await proxy.restore()
                await c.wait_until(count("NBIRTH", 2), timeout=WAIT_S)
                await recorder.record(state(2))
                await c.wait_until(count("NDATA", 2), timeout=WAIT_S)
            # The clean stop at the end says NDEATH itself, for the second connection
            await c.wait_until(count("NDEATH", 2), timeout=WAIT_S)

    first, second = of_kind(c.messages, "NBIRTH")
    death, goodbye = of_kind(c.messages, "NDEATH")
    assert not death.HasField("timestamp") and goodbye.HasField("timestamp")  # the will, then the node
    assert bdseq(goodbye) == 1
    # The will names the connection that died; the next connection takes the next bdSeq
    assert bdseq(death) == bdseq(first) == 0
    assert bdseq(second) == 1
    # seq starts at 0 with every NBIRTH and counts on through the DBIRTH and the data
    assert [p.seq for p in (first, second)] == [0, 0]
    dbirths = of_kind(c.messages, "DBIRTH")
    assert [p.seq for p in dbirths] == [1, 1]
    assert [p.seq for p in of_kind(c.messages, "NDATA")] == [2, 2]
    assert [kind(m) for m in c.messages] == [
        "NBIRTH",
        "DBIRTH",
        "NDATA",
        "NDEATH",
        "NBIRTH",
        "DBIRTH",
        "NDATA",
        "NDEATH",
    ]
    assert await store.get_meta("sparkplug.bdseq") == "1"


async def test_a_clean_stop_publishes_ndeath_and_a_restart_on_the_same_store_takes_the_next_bdseq(
    broker: Mosquitto, store: Store, node: Node
) -> None:
    async with collect(broker.host, broker.port, node.everything) as c:
        async with running(sparkplug_publisher(store, node, broker.host, broker.port)):
            await c.wait_until(count("NBIRTH", 1), timeout=WAIT_S)
        await c.wait_until(count("NDEATH", 1), timeout=WAIT_S)
        # A new publisher (as after a process restart) on the same store
        async with running(sparkplug_publisher(store, node, broker.host, broker.port)):
            await c.wait_until(count("NBIRTH", 2), timeout=WAIT_S)
        await c.wait_until(count("NDEATH", 2), timeout=WAIT_S)

    births, deaths = of_kind(c.messages, "NBIRTH"), of_kind(c.messages, "NDEATH")
    assert [bdseq(p) for p in births] == [0, 1]
    assert [bdseq(p) for p in deaths] == [0, 1]
    assert all(p.timestamp > 0 for p in deaths)  # said by the node itself, not the will


async def test_rows_go_out_as_ndata_and_ddata_and_leave_the_outbox(
    broker: Mosquitto, store: Store, node: Node
) -> None:
    publisher = sparkplug_publisher(store, node, broker.host, broker.port)
    recorder = Recorder(store, node.identity)
    recorder.add_listener(publisher.notify)
    async with collect(broker.host, broker.port, node.everything) as c, running(publisher):
        await c.wait_until(count("NBIRTH", 1), timeout=WAIT_S)
        await recorder.record(state(1))
        await recorder.record(DeviceHealthChanged(ts=5.0, device="robot1", state="down", error="refused"))
        await c.wait_until(count("DDATA", 1), timeout=WAIT_S)
        assert await publisher.flush(WAIT_S)

    [ndata] = of_kind(c.messages, "NDATA")
    [ddata] = of_kind(c.messages, "DDATA")
    assert values(ndata)["state/state"] == "S1"
    assert values(ddata)["health/state"] == "down"
    assert [m.topic for m in c.messages if kind(m) == "DDATA"] == [f"{node.topic('DDATA')}/robot1"]
    assert await store.outbox_count() == 0


async def test_rows_queued_while_offline_go_out_historical_after_the_births(
    broker: Mosquitto, store: Store, node: Node
) -> None:
    recorder = Recorder(store, node.identity)
    for i in range(3):
        await recorder.record(state(i))
    publisher = sparkplug_publisher(store, node, broker.host, broker.port)
    async with collect(broker.host, broker.port, node.everything) as c, running(publisher):
        await c.wait_until(count("NDATA", 3), timeout=WAIT_S)

    assert [kind(m) for m in c.messages][:2] == ["NBIRTH", "DBIRTH"]
    for payload in of_kind(c.messages, "NDATA"):
        assert payload.metrics and all(m.is_historical for m in payload.metrics)


# --- rebirth -----------------------------------------------------------------------------------------------


async def test_an_ncmd_rebirth_request_gets_nbirth_with_seq_0_and_the_same_bdseq_then_dbirths(
    broker: Mosquitto, store: Store, node: Node
) -> None:
    publisher = sparkplug_publisher(store, node, broker.host, broker.port)
    recorder = Recorder(store, node.identity)
    recorder.add_listener(publisher.notify)
    async with collect(broker.host, broker.port, node.everything) as c, running(publisher):
        await c.wait_until(count("DBIRTH", 1), timeout=WAIT_S)
        await recorder.record(state(1))
        await c.wait_until(count("NDATA", 1), timeout=WAIT_S)

        await publish(broker, node.topic("NCMD"), rebirth_request())
        await c.wait_until(count("DBIRTH", 2), timeout=WAIT_S)
        await recorder.record(state(2))
        await c.wait_until(count("NDATA", 2), timeout=WAIT_S)
        seen = list(c.messages)  # before the clean stop's NDEATH

    kinds = [kind(m) for m in seen if kind(m) != "NCMD"]
    assert kinds == ["NBIRTH", "DBIRTH", "NDATA", "NBIRTH", "DBIRTH", "NDATA"]
    first, again = of_kind(seen, "NBIRTH")
    assert bdseq(first) == bdseq(again)
    assert again.seq == 0
    assert values(again)["state/state"] == "S1"  # the births carry the current values
    assert [p.seq for p in of_kind(seen, "NDATA")] == [2, 2]


async def test_seq_stays_in_order_on_the_wire_when_births_go_out_while_a_backlog_drains(
    broker: Mosquitto, store: Store, node: Node
) -> None:
    # Given a backlog with a quality characteristic the births do not have half way (births again, from a row)
    recorder = Recorder(store, node.identity)
    rows = 1500
    for i in range(rows):
        await recorder.record(state(i))
        if i == rows // 2:
            await recorder.record(part("flatness"))
    publisher = sparkplug_publisher(store, node, broker.host, broker.port)
    # QoS 0 for the subscriber: the broker then forwards in the order it received, without an in-flight limit.
    async with collect(broker.host, broker.port, node.everything, qos=0) as c, running(publisher):
        # When a host asks for a rebirth while the backlog drains
        await c.wait_until(count("NDATA", 20), timeout=WAIT_S)
        await publish(broker, node.topic("NCMD"), rebirth_request())
        await c.wait_until(count("NBIRTH", 3), timeout=WAIT_S)
        await c.wait_until(count("NDATA", rows + 2), timeout=WAIT_S)
        seen = list(c.messages)  # before the clean stop's NDEATH

    # Then every message after an NBIRTH (seq 0) takes the next seq on the wire
    wire = [(kind(m), decode(m.payload).seq) for m in seen if kind(m) != "NCMD"]
    assert sum(1 for k, _ in wire if k == "NBIRTH") == 3
    for (_, before), (now_kind, now) in itertools.pairwise(wire):
        assert now == (0 if now_kind == "NBIRTH" else (before + 1) % 256), wire
    states = [values(p).get("state/state") for p in of_kind(seen, "NDATA")]
    assert [s for s in states if s is not None] == [f"S{i}" for i in range(rows)]


# --- the primary host --------------------------------------------------------------------------------------


async def test_with_a_primary_host_births_and_data_wait_for_its_state_online(
    broker: Mosquitto, store: Store, node: Node
) -> None:
    host = f"h{uuid.uuid4().hex[:10]}"
    state_topic = f"spBv1.0/STATE/{host}"
    publisher = sparkplug_publisher(store, node, broker.host, broker.port, primary_host=host)
    recorder = Recorder(store, node.identity)
    recorder.add_listener(publisher.notify)
    try:
        async with collect(broker.host, broker.port, node.everything) as c, running(publisher):
            await recorder.record(state(1))
            # Then nothing goes out while the host has said nothing, though the link is up
            with pytest.raises(TimeoutError):
                await c.wait_until(count("NBIRTH", 1), timeout=1.0)
            assert publisher.connected
            assert await store.outbox_count() == 1

            # When the host says it is online (retained, as a host does)
            await publish(broker, state_topic, host_state(True), retain=True)
            await c.wait_until(count("NDATA", 1), timeout=WAIT_S)
            # And when it goes offline the node says NDEATH and waits again on a new connection
            await publish(broker, state_topic, host_state(False), retain=True)
            await c.wait_until(count("NDEATH", 1), timeout=WAIT_S)
            await publish(broker, state_topic, host_state(True), retain=True)
            await c.wait_until(count("DBIRTH", 2), timeout=WAIT_S)
            seen = list(c.messages)  # before the clean stop's NDEATH
    finally:
        await publish(broker, state_topic, b"", retain=True)  # clear the retained STATE

    assert [kind(m) for m in seen] == ["NBIRTH", "DBIRTH", "NDATA", "NDEATH", "NBIRTH", "DBIRTH"]
    first, second = of_kind(seen, "NBIRTH")
    [death] = of_kind(seen, "NDEATH")
    assert bdseq(first) == bdseq(death) == 0
    assert bdseq(second) == 1


# --- the runtime -------------------------------------------------------------------------------------------


async def test_a_cell_file_asking_for_sparkplug_b_runs_the_publisher_with_it(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # Given the shipped cell with sparkplug-b in its mqtt section
    cell_folder(tmp_path)
    yaml = YAML()
    data: Any = yaml.load((tmp_path / "cell.yaml").read_text())
    group = f"g{uuid.uuid4().hex[:10]}"
    data["mqtt"] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 5,
        "encoding": "sparkplug-b",
        "sparkplug": {"group_id": group},
    }
    with (tmp_path / "cell.yaml").open("w") as fh:
        yaml.dump(data, fh)
    loaded = load_config(tmp_path)
    devices = list(loaded.cell.devices)
    characteristics = {c for recipe in loaded.recipes.values() for c in recipe.quality}

    def soft(name: str, config: LoadedConfig, clock: Clock) -> Driver:
        return SoftDriver(name, config.cell.devices[name].tags, clock=clock)

    stop = asyncio.Event()
    async with collect(broker.host, broker.port, f"spBv1.0/{group}/#") as c:

        async def births_then_stop(_controller: Controller) -> None:
            await c.wait_until(count("DBIRTH", len(devices)), timeout=WAIT_S)
            stop.set()

        # When it runs
        async with asyncio.timeout(WAIT_S):
            await CellApp(loaded, driver_factory=soft).run(stop, on_ready=births_then_stop)
        await c.wait_until(count("NDEATH", 1), timeout=WAIT_S)

    # Then it was born as an edge node named after the cell, with its recipes' characteristics and its devices
    edge = loaded.cell.identity.cell
    [nbirth] = [m for m in c.messages if m.topic == f"spBv1.0/{group}/NBIRTH/{edge}"]
    names = {m.name for m in decode(nbirth.payload).metrics}
    assert characteristics and {f"quality/{c}/value" for c in characteristics} <= names
    dbirths = [m.topic.rsplit("/", 1)[1] for m in c.messages if kind(m) == "DBIRTH"]
    assert dbirths[: len(devices)] == devices
