"""Topic scheme and payloads: every event type becomes the expected topics, and payloads match the models."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.core.events import (
    ALL_EVENT_TYPES,
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverKpi,
    ChangeoverStatus,
    DeviceHealthChanged,
    Event,
    FirstArticleEvent,
    FirstArticleStatus,
    JobEvent,
    JobStatus,
    Measurement,
    OeeReport,
    OperatorAction,
    PartProduced,
    Severity,
    StateChanged,
    StepEvent,
    StepKpi,
    StepStatus,
    Verdict,
)
from cellctl.schema.cell import Identity
from cellctl.store import OutboxMessage, OutboxRow
from cellctl.telemetry.payloads import (
    AlarmMessage,
    ChangeoverData,
    ChangeoverMessage,
    Envelope,
    HealthMessage,
    JobMessage,
    OeeMessage,
    PartMessage,
    QualityMessage,
    StateMessage,
    StatusMessage,
    StepData,
    parse_message,
)
from cellctl.telemetry.topics import (
    _is_plain_part,
    _part_bodies,
    _part_bodies_fast,
    envelope_json,
    messages_for,
    status_topic,
    topic_root,
)

IDENTITY = Identity(enterprise="nordform", site="lyon", area="upholstery", line="line1", cell="cell3")
ROOT = "nordform/lyon/upholstery/line1/cell3"


def measurement(name: str, value: float | None, verdict: Verdict) -> Measurement:
    return Measurement(
        characteristic=name,
        value=value,
        quality="good",
        units="mm",
        nominal=420.0,
        lsl=419.0,
        usl=421.0,
        verdict=verdict,
    )


SAMPLES: dict[type[Event], Event] = {
    StateChanged: StateChanged(
        ts=10.0, state="Execute", state_no=6, previous="Starting", command=None, by="engine"
    ),
    JobEvent: JobEvent(
        ts=11.0,
        job="J1",
        order_id="O-7",
        variant="oslo",
        recipe_version=2,
        recipe_hash="f00d",
        quantity=5,
        status=JobStatus.COMPLETED,
        produced=5,
        good=4,
        bad=1,
        parameters={"pitch_mm": 12.0},
        by="mes",
    ),
    ChangeoverEvent: ChangeoverEvent(
        ts=12.0,
        changeover="C1",
        job="J1",
        from_variant=None,
        to_variant="oslo",
        status=ChangeoverStatus.STARTED,
        steps=("tool_change", "fixture_move"),
        planned_s=9.5,
    ),
    StepEvent: StepEvent(
        ts=13.0,
        changeover="C1",
        job="J1",
        step="tool_change",
        step_kind="tool_change",
        device="toolchanger",
        status=StepStatus.DONE,
        duration_s=6.1,
    ),
    PartProduced: PartProduced(
        ts=14.0,
        part="J1-0001",
        job="J1",
        variant="oslo",
        index=1,
        verdict=Verdict.FAIL,
        measurements=(
            measurement("width_mm", 420.2, Verdict.PASS),
            measurement("depth_mm", 425.0, Verdict.FAIL),
        ),
        parameters={"pitch_mm": 12.0},
        cycle_s=31.5,
    ),
    DeviceHealthChanged: DeviceHealthChanged(ts=15.0, device="robot1", state="down", error="timeout"),
    AlarmEvent: AlarmEvent(
        ts=16.0,
        alarm="estop",
        severity=Severity.CRITICAL,
        active=True,
        message="emergency stop pressed",
        source="safety",
    ),
    OperatorAction: OperatorAction(ts=17.0, action="start", by="uid:1000", args={"job": "J1"}),
    FirstArticleEvent: FirstArticleEvent(
        ts=18.0,
        changeover="C1",
        job="J1",
        variant="oslo",
        status=FirstArticleStatus.SIGNED_OFF,
        needed=2,
        passes=1,
        by="api:ana",
        note="checked by hand",
    ),
    ChangeoverKpi: ChangeoverKpi(
        ts=19.0,
        changeover="C1",
        job="J1",
        from_variant="bergen",
        to_variant="oslo",
        last_good_ts=1.0,
        first_good_ts=19.0,
        total_s=18.0,
        external_s=0.5,
        external_wait_s=0.0,
        internal_s=6.0,
        first_article_s=12.0,
        planned_external_s=0.1,
        planned_internal_s=6.4,
        steps=(
            StepKpi(
                step="toolchanger:setpoints",
                device="toolchanger",
                phase="external",
                planned_s=0.1,
                actual_s=0.5,
            ),
            StepKpi(
                step="fixture:fixture_move", device="fixture", phase="internal", planned_s=2.0, actual_s=None
            ),
        ),
    ),
    OeeReport: OeeReport(
        ts=20.0,
        window="early 2026-03-02",
        window_start=0.0,
        window_end=28800.0,
        policy="planned_downtime",
        oee=0.5,
        availability=0.8,
        performance=0.9,
        quality=None,
        planned_s=28000.0,
        run_s=22400.0,
        downtime_s=5600.0,
        changeover_s=800.0,
        unknown_s=0.0,
        ideal_s=20000.0,
        good=0,
        bad=0,
        invalid=0,
        changeovers=1,
        downtime={"held: cell_held (robot1)": 5600.0},
        downtime_count={"held: cell_held (robot1)": 2},
    ),
}

EXPECTED: dict[type[Event], list[tuple[str, str, bool, type[Envelope]]]] = {
    StateChanged: [(f"{ROOT}/state", "state", True, StateMessage)],
    JobEvent: [(f"{ROOT}/job", "job", False, JobMessage)],
    ChangeoverEvent: [(f"{ROOT}/changeover", "changeover", False, ChangeoverMessage)],
    StepEvent: [(f"{ROOT}/changeover", "changeover", False, ChangeoverMessage)],
    PartProduced: [
        (f"{ROOT}/part", "part", False, PartMessage),
        (f"{ROOT}/quality/width_mm", "quality", False, QualityMessage),
        (f"{ROOT}/quality/depth_mm", "quality", False, QualityMessage),
    ],
    DeviceHealthChanged: [(f"{ROOT}/health/robot1", "health", True, HealthMessage)],
    AlarmEvent: [(f"{ROOT}/alarm", "alarm", False, AlarmMessage)],
    OperatorAction: [],
    FirstArticleEvent: [(f"{ROOT}/changeover", "changeover", False, ChangeoverMessage)],
    ChangeoverKpi: [(f"{ROOT}/changeover", "changeover", False, ChangeoverMessage)],
    OeeReport: [(f"{ROOT}/oee", "oee", True, OeeMessage)],
}


def as_row(message: OutboxMessage, seq: int = 1, event_ts: float = 1.0) -> OutboxRow:
    """What the store would hand the publisher for this message."""
    return OutboxRow(
        id=seq,
        topic=message.topic,
        stream=message.stream,
        seq=seq,
        msg_id=f"m-{seq}",
        event_ts=event_ts,
        body=json.dumps(message.body, allow_nan=False),
        retain=message.retain,
        qos=message.qos,
    )


def test_every_event_type_has_a_sample_and_an_expectation() -> None:
    assert set(SAMPLES) == set(ALL_EVENT_TYPES) == set(EXPECTED)


@pytest.mark.parametrize("event_type", ALL_EVENT_TYPES, ids=lambda t: t.__name__)
def test_an_event_becomes_the_expected_topics_streams_and_retain_flags(event_type: type[Event]) -> None:
    messages = messages_for(SAMPLES[event_type], IDENTITY)

    assert [(m.topic, m.stream, m.retain, m.qos) for m in messages] == [
        (topic, stream, retain, 1) for topic, stream, retain, _model in EXPECTED[event_type]
    ]


@pytest.mark.parametrize("event_type", ALL_EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_payload_validates_against_its_versioned_model(event_type: type[Event]) -> None:
    event = SAMPLES[event_type]

    for message, (_t, stream, _r, model) in zip(
        messages_for(event, IDENTITY), EXPECTED[event_type], strict=True
    ):
        parsed = parse_message(envelope_json(as_row(message, seq=3, event_ts=event.ts), publish_ts=99.0))
        assert isinstance(parsed, model)
        assert (parsed.schema_id, parsed.stream, parsed.seq, parsed.event_ts) == (
            f"cellctl.{stream}/1",
            stream,
            3,
            event.ts,
        )


def test_the_state_payload_carries_the_packml_state() -> None:
    [message] = messages_for(SAMPLES[StateChanged], IDENTITY)

    assert message.body == {
        "kind": "state_changed",
        "state": "Execute",
        "state_no": 6,
        "previous": "Starting",
        "command": None,
        "by": "engine",
        "mode": "production",
    }


def test_a_part_gives_one_part_message_with_its_checks_and_one_quality_message_per_measurement() -> None:
    part, width, depth = messages_for(SAMPLES[PartProduced], IDENTITY)

    assert part.body["verdict"] == "fail"
    assert part.body["checks"] == {"width_mm": "pass", "depth_mm": "fail"}
    assert (width.body["characteristic"], width.body["value"], width.body["verdict"]) == (
        "width_mm",
        420.2,
        "pass",
    )
    assert (depth.body["part"], depth.body["index"], depth.body["usl"]) == ("J1-0001", 1, 421.0)


def test_a_measurement_that_is_not_a_number_is_sent_as_null() -> None:
    event = PartProduced(
        ts=1.0,
        part="P",
        job="J",
        variant="v",
        index=1,
        verdict=Verdict.INVALID,
        measurements=(measurement("width_mm", math.nan, Verdict.INVALID),),
    )

    _part, quality = messages_for(event, IDENTITY)

    assert quality.body["value"] is None
    assert quality.body["verdict"] == "invalid"


def test_changeover_and_step_share_a_topic_and_are_told_apart_by_kind() -> None:
    [changeover] = messages_for(SAMPLES[ChangeoverEvent], IDENTITY)
    [step] = messages_for(SAMPLES[StepEvent], IDENTITY)

    parsed_changeover = parse_message(envelope_json(as_row(changeover), 1.0))
    parsed_step = parse_message(envelope_json(as_row(step), 1.0))

    assert isinstance(parsed_changeover.data, ChangeoverData)
    assert parsed_changeover.data.steps == ["tool_change", "fixture_move"]
    assert isinstance(parsed_step.data, StepData)
    assert parsed_step.data.duration_s == 6.1


def test_an_operator_action_is_journaled_only() -> None:
    assert messages_for(SAMPLES[OperatorAction], IDENTITY) == []


def test_the_topic_root_follows_the_isa95_identity() -> None:
    assert topic_root(IDENTITY) == ROOT
    assert status_topic(IDENTITY) == f"{ROOT}/status"


def test_a_characteristic_that_cannot_be_a_topic_level_is_refused() -> None:
    event = PartProduced(
        ts=1.0,
        part="P",
        job="J",
        variant="v",
        index=1,
        verdict=Verdict.PASS,
        measurements=(measurement("width/mm", 1.0, Verdict.PASS),),
    )

    with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
        messages_for(event, IDENTITY)


def test_the_envelope_carries_ids_sequence_and_both_timestamps_around_the_stored_body() -> None:
    row = OutboxRow(
        id=9,
        topic=f"{ROOT}/alarm",
        stream="alarm",
        seq=42,
        msg_id="0f8e",
        event_ts=100.25,
        body='{"a":1}',
        retain=False,
        qos=1,
    )

    envelope = json.loads(envelope_json(row, publish_ts=101.5))

    assert envelope == {
        "schema": "cellctl.alarm/1",
        "msg_id": "0f8e",
        "seq": 42,
        "stream": "alarm",
        "event_ts": 100.25,
        "publish_ts": 101.5,
        "historical": False,
        "data": {"a": 1},
    }
    replayed = json.loads(envelope_json(row, publish_ts=101.5, historical=True))
    assert replayed["historical"] is True


def test_an_unknown_schema_is_refused_by_the_parser() -> None:
    with pytest.raises(ValueError, match="unknown telemetry schema"):
        parse_message(b'{"schema": "cellctl.state/2"}')


def test_the_status_message_has_its_own_schema() -> None:
    status = StatusMessage(status="online", client_id="c", version="0.1.0", ts=5.0)

    assert json.loads(status.model_dump_json(by_alias=True)) == {
        "schema": "cellctl.status/1",
        "status": "online",
        "client_id": "c",
        "version": "0.1.0",
        "ts": 5.0,
        "reason": "",
        "cell": None,
        "encoding": None,
        "streams": None,
        "started_ts": None,
    }


# --- the part's bodies built without the payload models -----------------------------------------------

# No lone surrogates: names come from the cell's config (a restricted pattern) and text from UTF-8, neither of
# which can hold one; pydantic's JSON dump turns one in a dict key into U+FFFD while our direct body keeps it.
VALID_CHARS = st.characters(blacklist_categories=("Cs",))
TOPIC_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/+#\x00")
TOPIC_SAFE = st.text(alphabet=TOPIC_CHARS, min_size=1, max_size=8)
FLOATS = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, -0.0])
ANY_VERDICT = st.sampled_from(Verdict)


def _measurements(floats: st.SearchStrategy[Any]) -> st.SearchStrategy[Measurement]:
    return st.builds(
        Measurement,
        characteristic=st.sampled_from(["width_mm", "depth_mm"]) | TOPIC_SAFE,
        value=st.none() | floats,
        quality=st.text(alphabet=VALID_CHARS, max_size=5),
        units=st.text(alphabet=VALID_CHARS, max_size=5),
        nominal=floats,
        lsl=floats,
        usl=floats,
        verdict=ANY_VERDICT,
        reason=st.text(alphabet=VALID_CHARS, max_size=5),
    )


def _parts(floats: st.SearchStrategy[Any], ints: st.SearchStrategy[Any]) -> st.SearchStrategy[PartProduced]:
    return st.builds(
        PartProduced,
        ts=st.floats(min_value=0, max_value=2e9),
        part=st.text(alphabet=VALID_CHARS, max_size=8),
        job=st.text(alphabet=VALID_CHARS, max_size=8),
        variant=st.text(alphabet=VALID_CHARS, max_size=8),
        index=ints,
        verdict=ANY_VERDICT,
        measurements=st.lists(_measurements(floats), max_size=5).map(tuple),
        parameters=st.dictionaries(st.text(alphabet=VALID_CHARS, max_size=5), floats, max_size=3),
        cycle_s=floats,
        first_article=st.booleans(),
    )


def _text(bodies: list[dict[str, Any]]) -> list[str]:
    # JSON text tells 1 from 1.0 and keeps key order, which == on dicts does not.
    return [json.dumps(b) for b in bodies]


@given(_parts(FLOATS, st.integers()))
def test_the_direct_part_bodies_are_the_payload_models_dumps(event: PartProduced) -> None:
    assert _is_plain_part(event)
    assert _text(_part_bodies_fast(event)) == _text(_part_bodies(event))


@given(_parts(FLOATS | st.integers(-(2**40), 2**40) | st.booleans(), st.integers() | st.booleans()))
def test_a_part_is_sent_as_the_payload_models_dump_it_whatever_its_field_types(event: PartProduced) -> None:
    # Ints where floats belong (or bools) take the models' path, which converts them; plain parts do not.
    bodies = [m.body for m in messages_for(event, IDENTITY)]
    assert _text(bodies) == _text(_part_bodies(event))


def test_a_part_with_an_int_where_a_float_belongs_is_converted_by_the_models() -> None:
    sample = SAMPLES[PartProduced]
    assert isinstance(sample, PartProduced)
    event = dataclasses.replace(sample, cycle_s=31)
    assert not _is_plain_part(event)
    (part, *_) = messages_for(event, IDENTITY)
    assert json.dumps(part.body["cycle_s"]) == "31.0"
