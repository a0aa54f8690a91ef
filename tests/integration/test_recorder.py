"""The recorder end to end: an event recorded by the engine's sink lands in the journal and on the broker."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cellctl.core.events import (
    DeviceHealthChanged,
    Measurement,
    OperatorAction,
    PartProduced,
    StateChanged,
    Verdict,
)
from cellctl.core.ports import EventSink
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.store import Store
from cellctl.telemetry.payloads import HealthMessage, PartMessage, QualityMessage, StateMessage, parse_message
from cellctl.telemetry.publisher import OutboxPublisher
from cellctl.telemetry.recorder import Recorder
from cellctl.telemetry.topics import topic_root
from tests.fixtures.broker import Mosquitto, collect
from tests.fixtures.telemetry import running

WAIT_S = 20.0


def part() -> PartProduced:
    return PartProduced(
        ts=5.0,
        part="J1-0001",
        job="J1",
        variant="oslo",
        index=1,
        verdict=Verdict.PASS,
        measurements=(
            Measurement(
                characteristic="width_mm",
                value=420.1,
                quality="good",
                units="mm",
                nominal=420,
                lsl=419,
                usl=421,
                verdict=Verdict.PASS,
            ),
        ),
    )


async def test_the_recorder_is_an_event_sink(store: Store, identity: Identity) -> None:
    sink: EventSink = Recorder(store, identity)

    journal_id = await sink.record(
        StateChanged(ts=1.0, state="Idle", state_no=4, previous="x", command=None, by="t")
    )

    assert [e.id for e in await store.journal()] == [journal_id]


async def test_a_recorded_event_has_its_journal_entry_and_outbox_rows(
    store: Store, identity: Identity
) -> None:
    recorder = Recorder(store, identity)

    journal_id = await recorder.record(part())

    [entry] = await store.journal()
    rows = await store.outbox_batch(10)
    assert (entry.id, entry.kind, entry.job_id) == (journal_id, "part", "J1")
    assert [r.topic for r in rows] == [
        f"{topic_root(identity)}/part",
        f"{topic_root(identity)}/quality/width_mm",
    ]


async def test_listeners_hear_of_each_record_with_telemetry_until_removed(
    store: Store, identity: Identity
) -> None:
    recorder = Recorder(store, identity)
    heard: list[int] = []
    remove = recorder.add_listener(lambda: heard.append(1))

    await recorder.record(part())
    await recorder.record(OperatorAction(ts=1.0, action="start", by="uid:1000"))  # journal only: no wake
    remove()
    await recorder.record(part())

    assert heard == [1]


async def test_a_failing_listener_does_not_fail_a_durable_record(store: Store, identity: Identity) -> None:
    recorder = Recorder(store, identity)

    def broken() -> None:
        raise RuntimeError("listener bug")

    recorder.add_listener(broken)

    journal_id = await recorder.record(part())

    assert [e.id for e in await store.journal()] == [journal_id]


async def test_an_event_that_cannot_become_telemetry_is_still_journaled(
    store: Store, identity: Identity
) -> None:
    recorder = Recorder(store, identity)
    odd = dataclasses.replace(
        part(), measurements=(dataclasses.replace(part().measurements[0], characteristic="a/b"),)
    )

    await recorder.record(odd)

    assert [e.kind for e in await store.journal()] == ["part"]
    assert await store.outbox_count() == 0


async def test_with_telemetry_off_only_the_journal_is_written(store: Store, identity: Identity) -> None:
    recorder = Recorder(store, identity, telemetry=False)

    await recorder.record(part())

    assert len(await store.journal()) == 1
    assert await store.outbox_count() == 0


@pytest.mark.broker
async def test_recorded_events_reach_the_broker_as_typed_messages(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    root = topic_root(identity)
    recorder = Recorder(store, identity)
    publisher = OutboxPublisher(
        store, MqttConfig(host=broker.host, port=broker.port), identity, wake=recorder.add_listener
    )

    async with collect(broker.host, broker.port, f"{root}/#") as c, running(publisher):
        await recorder.record(
            StateChanged(ts=1.0, state="Execute", state_no=6, previous="x", command=None, by="t")
        )
        await recorder.record(part())
        await recorder.record(DeviceHealthChanged(ts=6.0, device="robot1", state="up"))
        await c.wait_until(lambda ms: any(m.topic == f"{root}/health/robot1" for m in ms), timeout=WAIT_S)
        assert await publisher.flush(WAIT_S)

    data = {m.topic: (m, parse_message(m.payload)) for m in c.messages if not m.topic.endswith("/status")}
    assert isinstance(data[f"{root}/state"][1], StateMessage)
    assert isinstance(data[f"{root}/part"][1], PartMessage)
    assert isinstance(data[f"{root}/quality/width_mm"][1], QualityMessage)
    assert isinstance(data[f"{root}/health/robot1"][1], HealthMessage)
    assert json.loads(data[f"{root}/state"][0].payload)["data"]["state"] == "Execute"
    assert await store.outbox_count() == 0
    assert len(await store.journal()) == 3


@pytest.mark.broker
async def test_state_and_health_are_retained_for_late_subscribers(
    broker: Mosquitto, store: Store, identity: Identity
) -> None:
    root = topic_root(identity)
    recorder = Recorder(store, identity)
    publisher = OutboxPublisher(
        store, MqttConfig(host=broker.host, port=broker.port), identity, wake=recorder.add_listener
    )
    async with running(publisher):
        await recorder.record(
            StateChanged(ts=1.0, state="Idle", state_no=4, previous="x", command=None, by="t")
        )
        await recorder.record(DeviceHealthChanged(ts=2.0, device="gauge", state="down", error="refused"))
        await recorder.record(part())
        assert await publisher.flush(WAIT_S)

    retained = {f"{root}/state", f"{root}/health/gauge", f"{root}/status"}
    async with collect(broker.host, broker.port, f"{root}/#") as late:
        await late.wait_until(lambda ms: {m.topic for m in ms} >= retained, timeout=WAIT_S)

    assert all(m.retain for m in late.messages)
    assert {m.topic for m in late.messages} == retained  # the part and quality messages are not retained
