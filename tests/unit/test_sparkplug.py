"""The Sparkplug B encoding alone: payloads decoded with the protobuf schema, bdSeq and seq rules, metrics."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from pydantic import ValidationError

from cellctl.core.events import (
    DeviceHealthChanged,
    Event,
    JobEvent,
    JobStatus,
    Measurement,
    PartProduced,
    StateChanged,
    Verdict,
)
from cellctl.errors import StoreError
from cellctl.schema.cell import Identity, MqttConfig, SparkplugConfig
from cellctl.store import OutboxRow, Store
from cellctl.telemetry._sparkplug_b_pb2 import Payload
from cellctl.telemetry.encoding import Outgoing, Reaction
from cellctl.telemetry.payloads import JobData
from cellctl.telemetry.sparkplug import (
    BDSEQ_KEY,
    BDSEQ_METRIC,
    REBIRTH_METRIC,
    DataType,
    SparkplugEncoding,
    datatype_of,
    decode,
    device_catalogue,
    metric_value,
    node_catalogue,
)
from cellctl.telemetry.topics import messages_for

IDENTITY = Identity(enterprise="acme", site="oslo", area="a1", line="l1", cell="cell7")
GROUP = "acme:oslo:a1:l1"
NODE = f"spBv1.0/{GROUP}/{{}}/cell7"


class MemoryMeta:
    """A meta store in memory (the real one is the store's meta table, tested below)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def get_meta(self, key: str) -> str | None:
        return self.values.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self.values[key] = value


class Rows:
    """Outbox rows as the recorder queues them: ids in order, a sequence per stream."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._seqs: defaultdict[str, int] = defaultdict(int)

    def of(self, event: Event) -> list[OutboxRow]:
        rows = []
        for message in messages_for(event, IDENTITY):
            self._seqs[message.stream] += 1
            rows.append(
                OutboxRow(
                    id=next(self._ids),
                    topic=message.topic,
                    stream=str(message.stream),
                    seq=self._seqs[message.stream],
                    msg_id=str(uuid.uuid4()),
                    event_ts=event.ts,
                    body=json.dumps(message.body),
                    retain=message.retain,
                    qos=message.qos,
                )
            )
        return rows


def encoding(
    meta: MemoryMeta | None = None,
    *,
    host: str | None = None,
    devices: tuple[str, ...] = ("robot1", "press1"),
) -> SparkplugEncoding:
    return SparkplugEncoding(
        IDENTITY,
        SparkplugConfig(primary_host_id=host),
        meta or MemoryMeta(),
        devices=devices,
        characteristics=("bore",),
    )


def state(i: int, *, to: str | None = None, by: str = "op1") -> StateChanged:
    return StateChanged(
        ts=100.0 + i, state=to or f"S{i}", state_no=4, previous="Stopped", command="reset", by=by
    )


def job(status: JobStatus = JobStatus.STARTED, produced: int = 0) -> JobEvent:
    return JobEvent(
        ts=200.0,
        job="J1",
        order_id="O-1",
        variant="oslo",
        recipe_version=3,
        recipe_hash="abc",
        quantity=10,
        status=status,
        produced=produced,
        parameters={"pitch": 12.5},
    )


def part(characteristic: str = "bore") -> PartProduced:
    measurement = Measurement(
        characteristic=characteristic,
        value=10.01,
        quality="good",
        units="mm",
        nominal=10.0,
        lsl=9.9,
        usl=10.1,
        verdict=Verdict.PASS,
    )
    return PartProduced(
        ts=300.0,
        part="P1",
        job="J1",
        variant="oslo",
        index=1,
        verdict=Verdict.PASS,
        measurements=(measurement,),
    )


def only(messages: list[Outgoing]) -> Outgoing:
    assert len(messages) == 1, [m.topic for m in messages]
    return messages[0]


def metrics(payload: Payload) -> dict[str, object]:
    return {m.name: metric_value(m) for m in payload.metrics}


# --- bdSeq -------------------------------------------------------------------------------------------------


async def test_the_will_is_an_ndeath_with_the_bdseq_the_following_nbirth_carries() -> None:
    enc = encoding()
    will = await enc.will()
    birth = enc.births(now=1.0)[0]

    assert will.topic == NODE.format("NDEATH")
    assert (will.qos, will.retain) == (1, False)
    death = decode(will.payload)
    assert not death.HasField("seq")
    assert metrics(death) == {BDSEQ_METRIC: 0}
    assert birth.topic == NODE.format("NBIRTH")
    assert metrics(decode(birth.payload))[BDSEQ_METRIC] == 0


async def test_each_connection_attempt_takes_the_next_bdseq_wrapping_after_255() -> None:
    meta = MemoryMeta()
    enc = encoding(meta)
    seen = []
    for _ in range(258):
        will = await enc.will()
        seen.append(metrics(decode(will.payload))[BDSEQ_METRIC])

    assert seen[:3] == [0, 1, 2]
    assert seen[254:] == [254, 255, 0, 1]
    assert meta.values[BDSEQ_KEY] == "1"


async def test_the_bdseq_goes_on_from_the_stored_value_after_a_restart() -> None:
    meta = MemoryMeta()
    first = encoding(meta)
    await first.will()
    await first.will()

    again = encoding(meta)
    will = await again.will()

    assert metrics(decode(will.payload))[BDSEQ_METRIC] == 2
    assert metrics(decode(again.births(1.0)[0].payload))[BDSEQ_METRIC] == 2


@pytest.mark.parametrize("stored", ["x", "256", "-1"])
async def test_a_damaged_stored_bdseq_starts_over_at_0(stored: str) -> None:
    meta = MemoryMeta()
    meta.values[BDSEQ_KEY] = stored

    will = await encoding(meta).will()

    assert metrics(decode(will.payload))[BDSEQ_METRIC] == 0
    assert meta.values[BDSEQ_KEY] == "0"


async def test_a_clean_stop_says_ndeath_with_the_bdseq_of_the_connection() -> None:
    meta = MemoryMeta()
    meta.values[BDSEQ_KEY] = "41"
    enc = encoding(meta)
    await enc.will()

    goodbye = enc.goodbye(now=5.0)

    assert goodbye is not None and goodbye.topic == NODE.format("NDEATH")
    death = decode(goodbye.payload)
    assert metrics(death) == {BDSEQ_METRIC: 42}
    assert death.timestamp == 5000


class BrokenMeta(MemoryMeta):
    """A meta store on a full disk: nothing can be read or written."""

    async def get_meta(self, key: str) -> str | None:
        raise StoreError("disk full")

    async def set_meta(self, key: str, value: str) -> None:
        raise StoreError("disk full")


async def test_a_store_that_cannot_keep_the_bdseq_does_not_stop_the_connection() -> None:
    enc = encoding(BrokenMeta())

    seen = [metrics(decode((await enc.will()).payload))[BDSEQ_METRIC] for _ in range(3)]

    assert seen == [0, 1, 2]


# --- seq ---------------------------------------------------------------------------------------------------


async def test_seq_starts_at_0_on_the_nbirth_and_counts_every_birth_and_data_message_wrapping_after_255() -> (
    None
):
    enc = encoding()
    rows = Rows()
    await enc.will()
    seqs = [decode(m.payload).seq for m in enc.births(1.0)]
    for i in range(300):
        seqs.extend(
            decode(m.payload).seq
            for row in rows.of(state(i))
            for m in enc.encode(row, publish_ts=2.0, historical=False)
        )

    assert seqs[:3] == [0, 1, 2]  # NBIRTH, then a DBIRTH per device
    assert seqs == [i % 256 for i in range(303)]


async def test_a_rebirth_starts_seq_at_0_again_with_the_same_bdseq() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)
    for i in range(5):
        enc.encode(rows.of(state(i))[0], publish_ts=2.0, historical=False)

    again = enc.births(3.0)

    assert [decode(m.payload).seq for m in again] == [0, 1, 2]
    assert metrics(decode(again[0].payload))[BDSEQ_METRIC] == 0
    data = only(enc.encode(rows.of(state(9))[0], publish_ts=4.0, historical=False))
    assert decode(data.payload).seq == 3


# --- births ------------------------------------------------------------------------------------------------


async def test_births_carry_every_metric_with_a_datatype_null_before_a_value_is_known() -> None:
    enc = encoding()
    await enc.will()
    nbirth, *dbirths = enc.births(1.0)

    node = decode(nbirth.payload)
    names = [m.name for m in node.metrics]
    assert set(names) == {BDSEQ_METRIC, REBIRTH_METRIC, *node_catalogue(["bore"])}
    assert len(names) == len(set(names))
    assert "quality/bore/value" in names and "job/produced" in names and "state/state" in names
    assert all(m.HasField("datatype") and m.timestamp == 1000 for m in node.metrics)
    values = metrics(node)
    assert values[REBIRTH_METRIC] is False
    assert values["state/state"] is None
    assert next(m for m in node.metrics if m.name == "state/state").is_null
    assert (nbirth.qos, nbirth.retain) == (0, False)

    assert [b.topic for b in dbirths] == [
        f"spBv1.0/{GROUP}/DBIRTH/cell7/robot1",
        f"spBv1.0/{GROUP}/DBIRTH/cell7/press1",
    ]
    for birth in dbirths:
        device = decode(birth.payload)
        assert {m.name for m in device.metrics} == set(device_catalogue())
        assert {"health/state", "health/error"} <= {m.name for m in device.metrics}


async def test_births_after_data_carry_the_last_values_with_their_event_time() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)
    for row in rows.of(state(1, to="Execute")) + rows.of(
        DeviceHealthChanged(ts=50.0, device="robot1", state="down", error="refused")
    ):
        enc.encode(row, publish_ts=2.0, historical=False)

    nbirth, robot, _press = enc.births(3.0)

    node = decode(nbirth.payload)
    assert metrics(node)["state/state"] == "Execute"
    assert next(m for m in node.metrics if m.name == "state/state").timestamp == 101_000
    assert metrics(decode(robot.payload))["health/state"] == "down"
    assert metrics(decode(robot.payload))["health/error"] == "refused"


# --- data --------------------------------------------------------------------------------------------------


async def test_a_value_stream_sends_only_the_metrics_that_changed() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)
    first = rows.of(state(1, to="Idle"))[0]
    second = rows.of(state(2, to="Execute"))[0]

    full = decode(only(enc.encode(first, publish_ts=2.0, historical=False)).payload)
    changed = decode(only(enc.encode(second, publish_ts=3.0, historical=False)).payload)

    assert {"state/state", "state/by", "state/mode", "state/previous"} <= set(metrics(full))
    assert metrics(changed) == {"state/seq": 2, "state/msg_id": second.msg_id, "state/state": "Execute"}
    assert all(m.timestamp == 102_000 for m in changed.metrics)


async def test_a_record_stream_sends_every_field_of_each_record() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)
    enc.encode(rows.of(job(JobStatus.STARTED))[0], publish_ts=2.0, historical=False)

    data = only(enc.encode(rows.of(job(JobStatus.STARTED, produced=1))[0], publish_ts=3.0, historical=False))

    assert data.topic == NODE.format("NDATA")
    assert data.qos == 1
    values = metrics(decode(data.payload))
    expected = {f"job/{f}" for f in JobData.model_fields if f != "kind"} | {"job/seq", "job/msg_id"}
    assert set(values) == expected
    assert values["job/produced"] == 1 and values["job/status"] == "started"
    assert json.loads(str(values["job/parameters"])) == {"pitch": 12.5}


async def test_quality_values_go_out_as_metrics_of_their_characteristic() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)

    part_row, quality_row = rows.of(part())
    enc.encode(part_row, publish_ts=2.0, historical=False)
    values = metrics(decode(only(enc.encode(quality_row, publish_ts=2.0, historical=False)).payload))

    assert values["quality/bore/value"] == pytest.approx(10.01)
    assert values["quality/bore/verdict"] == "pass"
    assert values["quality/seq"] == 1


async def test_device_health_goes_out_as_ddata_of_its_device() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)

    row = rows.of(DeviceHealthChanged(ts=5.0, device="press1", state="up"))[0]
    data = only(enc.encode(row, publish_ts=6.0, historical=False))

    assert data.topic == f"spBv1.0/{GROUP}/DDATA/cell7/press1"
    assert metrics(decode(data.payload))["health/state"] == "up"


async def test_replayed_rows_are_marked_historical_and_live_rows_are_not() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)

    old = decode(only(enc.encode(rows.of(state(1))[0], publish_ts=2.0, historical=True)).payload)
    live = decode(only(enc.encode(rows.of(state(2))[0], publish_ts=3.0, historical=False)).payload)

    assert old.metrics and all(m.is_historical for m in old.metrics)
    assert live.metrics and not any(m.is_historical for m in live.metrics)


async def test_a_value_replayed_as_historical_goes_out_again_with_the_first_live_row() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)
    enc.encode(rows.of(state(1, to="Idle", by="op1"))[0], publish_ts=2.0, historical=True)

    live = metrics(
        decode(
            only(
                enc.encode(rows.of(state(2, to="Execute", by="op1"))[0], publish_ts=3.0, historical=False)
            ).payload
        )
    )
    later = metrics(
        decode(
            only(
                enc.encode(rows.of(state(3, to="Held", by="op1"))[0], publish_ts=4.0, historical=False)
            ).payload
        )
    )

    # "by" did not change, but the host's live tag never had it: the first live row sends it
    assert live["state/by"] == "op1"
    assert "state/by" not in later


async def test_a_row_sent_again_after_a_reconnect_still_says_which_message_it_is() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)
    row = rows.of(state(1))[0]
    enc.encode(row, publish_ts=2.0, historical=False)

    await enc.will()
    enc.births(3.0)
    again = metrics(decode(only(enc.encode(row, publish_ts=4.0, historical=True)).payload))

    assert again == {"state/seq": 1, "state/msg_id": row.msg_id}


async def test_a_characteristic_not_born_with_makes_the_births_go_out_again_before_its_data() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)
    enc.encode(rows.of(state(1))[0], publish_ts=2.0, historical=False)

    _part_row, quality_row = rows.of(part("flatness"))
    messages = enc.encode(quality_row, publish_ts=3.0, historical=False)

    assert [m.topic.split("/")[2] for m in messages] == ["NBIRTH", "DBIRTH", "DBIRTH", "NDATA"]
    payloads = [decode(m.payload) for m in messages]
    assert [p.seq for p in payloads] == [0, 1, 2, 3]
    assert "quality/flatness/value" in metrics(payloads[0])
    assert metrics(payloads[0])["state/state"] == "S1"
    assert metrics(payloads[3])["quality/flatness/value"] == pytest.approx(10.01)


async def test_a_device_not_born_with_gets_its_dbirth_before_its_ddata() -> None:
    enc = encoding()
    rows = Rows()
    await enc.will()
    enc.births(1.0)

    row = rows.of(DeviceHealthChanged(ts=5.0, device="gauge9", state="up"))[0]
    birth, data = enc.encode(row, publish_ts=6.0, historical=False)

    assert birth.topic == f"spBv1.0/{GROUP}/DBIRTH/cell7/gauge9"
    assert data.topic == f"spBv1.0/{GROUP}/DDATA/cell7/gauge9"
    assert [decode(birth.payload).seq, decode(data.payload).seq] == [3, 4]
    assert set(metrics(decode(birth.payload))) == set(device_catalogue())


# --- commands and the primary host -------------------------------------------------------------------------


def command(*metrics_: Payload.Metric) -> bytes:
    return Payload(timestamp=1, metrics=list(metrics_)).SerializeToString()


def test_an_ncmd_rebirth_request_asks_for_a_rebirth() -> None:
    enc = encoding()
    rebirth = Payload.Metric(name=REBIRTH_METRIC, datatype=DataType.BOOLEAN, boolean_value=True)

    assert NODE.format("NCMD") in enc.subscriptions()
    assert enc.on_message(NODE.format("NCMD"), command(rebirth)) is Reaction.REBIRTH


@pytest.mark.parametrize(
    "payload",
    [
        command(Payload.Metric(name=REBIRTH_METRIC, datatype=DataType.BOOLEAN, boolean_value=False)),
        command(Payload.Metric(name="Node Control/Reboot", datatype=DataType.BOOLEAN, boolean_value=True)),
        b"\xff\xff not protobuf",
    ],
    ids=["rebirth-false", "other-command", "garbage"],
)
def test_an_ncmd_that_is_not_a_rebirth_request_changes_nothing(payload: bytes) -> None:
    assert encoding().on_message(NODE.format("NCMD"), payload) is Reaction.NONE


def state_message(online: bool, ts: int) -> bytes:
    return json.dumps({"online": online, "timestamp": ts}).encode()


async def test_with_a_primary_host_births_wait_for_its_state_online() -> None:
    enc = encoding(host="scada1")
    topic = "spBv1.0/STATE/scada1"
    await enc.will()

    assert not enc.ready_on_connect()
    assert enc.subscriptions()[0] == topic
    assert enc.on_message(topic, state_message(False, 10)) is Reaction.NONE  # not born: nothing to end
    assert enc.on_message(topic, state_message(True, 20)) is Reaction.READY
    assert enc.on_message(topic, state_message(True, 20)) is Reaction.NONE
    assert enc.on_message(topic, state_message(False, 15)) is Reaction.NONE  # older than what we know
    assert enc.on_message(topic, state_message(False, 30)) is Reaction.NOT_READY
    assert enc.on_message(topic, b"{not json") is Reaction.NONE
    assert enc.on_message(topic, b"") is Reaction.NONE  # a cleared retained STATE


async def test_a_new_connection_waits_for_the_host_again() -> None:
    enc = encoding(host="scada1")
    topic = "spBv1.0/STATE/scada1"
    await enc.will()
    assert enc.on_message(topic, state_message(True, 20)) is Reaction.READY

    await enc.will()

    # The retained STATE is delivered again on the new connection: it makes the node ready again.
    assert enc.on_message(topic, state_message(True, 20)) is Reaction.READY


def test_without_a_primary_host_births_go_out_at_once() -> None:
    enc = encoding()
    assert enc.ready_on_connect()
    assert enc.subscriptions() == (NODE.format("NCMD"),)


# --- datatypes and config ----------------------------------------------------------------------------------


def test_datatypes_follow_the_payload_models() -> None:
    fields = JobData.model_fields
    assert datatype_of(fields["produced"].annotation) is DataType.INT64
    assert datatype_of(fields["due"].annotation) is DataType.DOUBLE
    assert datatype_of(fields["status"].annotation) is DataType.STRING
    assert datatype_of(fields["order_released"].annotation) is DataType.BOOLEAN
    assert datatype_of(fields["parameters"].annotation) is DataType.STRING
    assert node_catalogue()["alarm/active"] is DataType.BOOLEAN


def test_sparkplug_ids_default_from_the_identity() -> None:
    config = MqttConfig.model_validate({"encoding": "sparkplug-b"})

    assert config.sparkplug.group_for(IDENTITY) == GROUP
    assert config.sparkplug.edge_node_for(IDENTITY) == "cell7"
    assert config.sparkplug.primary_host_id is None
    assert MqttConfig().encoding == "uns-json"


@pytest.mark.parametrize("key", ["group_id", "edge_node_id", "primary_host_id"])
@pytest.mark.parametrize("bad", ["a/b", "a+", "#", ""])
def test_sparkplug_ids_that_are_not_one_topic_level_are_refused(key: str, bad: str) -> None:
    with pytest.raises(ValidationError, match=key):
        MqttConfig.model_validate({"sparkplug": {key: bad}})


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValidationError, match="encoding"):
        MqttConfig.model_validate({"encoding": "sparkplug-a"})


# --- the store's meta table --------------------------------------------------------------------------------


async def test_the_store_keeps_meta_values_across_a_reopen(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "cellctl.db", synchronous="NORMAL")
    try:
        assert await store.get_meta(BDSEQ_KEY) is None
        await store.set_meta(BDSEQ_KEY, "7")
        await store.set_meta(BDSEQ_KEY, "8")
    finally:
        await store.close()
    store = await Store.open(tmp_path / "cellctl.db", synchronous="NORMAL")
    try:
        assert await store.get_meta(BDSEQ_KEY) == "8"
        enc = SparkplugEncoding(IDENTITY, SparkplugConfig(), store)
        will = await enc.will()
        assert metrics(decode(will.payload))[BDSEQ_METRIC] == 9
        assert await store.get_meta(BDSEQ_KEY) == "9"
    finally:
        await store.close()
