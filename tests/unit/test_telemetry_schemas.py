"""The JSON Schemas of the MQTT messages: exported, committed in docs/telemetry, and true to the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cellctl.cli import main
from cellctl.cli.config_cmds import MQTT_MESSAGES, schema_texts
from cellctl.core.events import Event, Stream
from cellctl.telemetry.payloads import StateMessage, StatusMessage
from cellctl.telemetry.schemas import (
    INDEX_FILE,
    REGENERATE_COMMAND,
    TELEMETRY_MESSAGES,
    MessageSchema,
    schema_document,
    schema_file,
    schema_files,
)
from cellctl.telemetry.topics import STREAM_TOPICS, envelope_json, messages_for, topic_root
from cellctl.telemetry.uns import UnsJsonEncoding
from tests.unit.test_topics import IDENTITY, SAMPLES, as_row

DOCS = Path(__file__).resolve().parents[2] / "docs" / "telemetry"


def validator_for(schema_id: str) -> Any:
    """A draft 2020-12 validator of one exported schema (the test is skipped without ``jsonschema``)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = schema_files()[schema_file(schema_id)]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def wire_messages(event: Event) -> list[dict[str, Any]]:
    """The envelopes one event becomes on the wire, as a consumer decodes them."""
    return [
        json.loads(envelope_json(as_row(m, seq=7, event_ts=event.ts), publish_ts=99.0, historical=h))
        for m in messages_for(event, IDENTITY)
        for h in (False, True)
    ]


def test_the_committed_schemas_in_docs_are_the_generated_ones() -> None:
    generated = schema_texts("telemetry")
    committed = {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.json")}

    stale = sorted(set(committed) - set(generated))
    missing = sorted(set(generated) - set(committed))
    changed = sorted(n for n in set(generated) & set(committed) if generated[n] != committed[n])
    assert not (stale or missing or changed), (
        f"docs/telemetry is out of date (stale {stale}, missing {missing}, changed {changed}); "
        f"regenerate with `{REGENERATE_COMMAND}` and commit the result"
    )


def test_there_is_one_schema_per_stream_and_one_for_the_status() -> None:
    ids = {m.schema_id for m in TELEMETRY_MESSAGES}

    assert ids == {f"cellctl.{s.value}/1" for s in Stream} | {"cellctl.status/1"}
    assert set(schema_files()) == {schema_file(i) for i in ids} | {INDEX_FILE}
    assert schema_file("cellctl.state/1") == "cellctl.state-1.schema.json"


def test_the_index_maps_each_topic_to_its_schema_and_file() -> None:
    index = schema_files()[INDEX_FILE]
    by_schema = {entry["schema"]: entry for entry in index["messages"]}

    assert by_schema["cellctl.quality/1"] == {
        "topic": "{enterprise}/{site}/{area}/{line}/{cell}/quality/+",
        "schema": "cellctl.quality/1",
        "file": "cellctl.quality-1.schema.json",
        "direction": "publish",
        "retained": False,
        "stream": "quality",
    }
    assert by_schema["cellctl.status/1"]["retained"] is True
    assert all(entry["file"] in schema_files() for entry in index["messages"])


def test_each_schema_is_draft_2020_12_and_says_its_schema_id_is_a_constant() -> None:
    for message in TELEMETRY_MESSAGES:
        validator = validator_for(message.schema_id)

        assert validator.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert validator.schema["$id"] == message.file
        assert validator.schema["properties"]["schema"]["const"] == message.schema_id


@pytest.mark.parametrize("event_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_every_sample_payload_validates_against_its_exported_schema(event_type: type[Event]) -> None:
    for envelope in wire_messages(SAMPLES[event_type]):
        validator = validator_for(envelope["schema"])

        errors = [e.message for e in validator.iter_errors(envelope)]
        assert errors == [], f"{envelope['schema']}: {errors}"


@pytest.mark.parametrize(
    ("spoil", "what"),
    [
        (lambda m: m.pop("msg_id"), "a missing msg_id"),
        (lambda m: m.update(seq=0), "a sequence number below 1"),
        (lambda m: m.update(stream="job"), "another stream"),
        (lambda m: m["data"].update(state_no="six"), "a string where an integer goes"),
        (lambda m: m["data"].update(colour="red"), "an unknown data field"),
        (lambda m: m.update(schema="cellctl.state/2"), "another schema version"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_spoiled_state_message_is_refused_by_its_schema_and_by_its_model(spoil: Any, what: str) -> None:
    [envelope, _historical] = wire_messages(SAMPLES[next(iter(SAMPLES))])
    validator = validator_for("cellctl.state/1")
    assert validator.is_valid(envelope)

    spoil(envelope)

    assert not validator.is_valid(envelope), what
    with pytest.raises(ValueError):
        StateMessage.model_validate(envelope)


def test_changeover_data_of_an_unknown_kind_is_refused_by_the_changeover_schema() -> None:
    changeover = next(
        e for t, event in SAMPLES.items() if t.__name__ == "StepEvent" for e in wire_messages(event)
    )
    validator = validator_for("cellctl.changeover/1")
    assert validator.is_valid(changeover)

    changeover["data"]["kind"] = "state_changed"

    assert not validator.is_valid(changeover)


def test_the_birth_and_the_will_validate_against_the_status_schema() -> None:
    encoding = UnsJsonEncoding(IDENTITY, "cellctl-x", started_ts=1.5)
    validator = validator_for("cellctl.status/1")

    [birth] = encoding.births(now=2.0)
    goodbye = encoding.goodbye(now=3.0)
    assert goodbye is not None
    for payload in (birth.payload, goodbye.payload):
        assert list(validator.iter_errors(json.loads(payload))) == []
        StatusMessage.model_validate_json(payload)


async def test_the_will_validates_against_the_status_schema() -> None:
    will = await UnsJsonEncoding(IDENTITY, "cellctl-x").will()

    assert list(validator_for("cellctl.status/1").iter_errors(json.loads(will.payload))) == []


def test_every_sample_message_goes_out_on_its_streams_topic_with_its_retain_flag() -> None:
    root = topic_root(IDENTITY)
    filters = {t.stream.value: t for t in STREAM_TOPICS}
    seen: set[str] = set()

    for event in SAMPLES.values():
        for message in messages_for(event, IDENTITY):
            declared = filters[message.stream]
            levels, pattern = message.topic.split("/"), f"{root}/{declared.filter}".split("/")
            assert len(levels) == len(pattern)
            assert all(p in ("+", level) for level, p in zip(levels, pattern, strict=True)), message.topic
            assert message.retain == declared.retained
            seen.add(message.stream)

    assert seen == set(filters) == {s.value for s in Stream}


def test_a_schema_id_registered_twice_is_refused() -> None:
    twice = (*TELEMETRY_MESSAGES, MessageSchema("cellctl.state/1", StateMessage, "again"))

    with pytest.raises(ValueError, match=r"'cellctl.state/1' is registered twice"):
        schema_files(twice)
    with pytest.raises(ValueError, match="registered twice"):
        schema_document(twice)


def test_the_cli_exports_every_registered_mqtt_message() -> None:
    assert {m.schema_id for m in MQTT_MESSAGES} >= {m.schema_id for m in TELEMETRY_MESSAGES}
    assert set(schema_texts("telemetry")) == set(schema_files(MQTT_MESSAGES))


def test_schema_telemetry_prints_the_index_and_every_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "telemetry"]) == 0

    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"index", "schemas"}
    assert set(printed["schemas"]) == {m.schema_id for m in MQTT_MESSAGES}
    assert printed["schemas"]["cellctl.part/1"]["properties"]["stream"]["const"] == "part"


def test_schema_out_writes_one_file_per_schema_and_the_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "schemas"

    assert main(["schema", "all", "--out", str(out)]) == 0

    written = {p.name for p in out.iterdir()}
    assert written == set(schema_texts("telemetry")) | {"cell.schema.json", "recipe.schema.json"}
    assert json.loads((out / "cellctl.oee-1.schema.json").read_text())["$id"] == "cellctl.oee-1.schema.json"
    assert f"wrote {len(written)} files into {out}" in capsys.readouterr().out


def test_schema_out_into_a_folder_that_cannot_be_made_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    assert main(["schema", "telemetry", "--out", str(blocker / "sub")]) == 2

    assert f"cannot write into {blocker / 'sub'}" in capsys.readouterr().err
