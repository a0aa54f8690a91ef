"""The retained ``<root>/status`` of the UNS encoding: a birth with the cell's metadata, a small will."""

from __future__ import annotations

import json

from cellctl import __version__
from cellctl.telemetry.payloads import StatusMessage
from cellctl.telemetry.uns import UnsJsonEncoding
from tests.unit.test_topics import IDENTITY, ROOT


def test_the_birth_names_the_cell_version_encoding_and_session_times() -> None:
    encoding = UnsJsonEncoding(IDENTITY, "cellctl-x", started_ts=100.0)

    [birth] = encoding.births(now=160.0)

    body = json.loads(birth.payload)
    assert (birth.topic, birth.retain, birth.qos) == (f"{ROOT}/status", True, 1)
    assert (body["status"], body["client_id"], body["version"], body["encoding"]) == (
        "online",
        "cellctl-x",
        __version__,
        "uns-json",
    )
    assert body["cell"] == {
        "enterprise": "nordform",
        "site": "lyon",
        "area": "upholstery",
        "line": "line1",
        "cell": "cell3",
    }
    assert (body["ts"], body["started_ts"]) == (160.0, 100.0)


def test_the_birth_lists_every_stream_with_its_topic_filter_schema_and_retain_flag() -> None:
    [birth] = UnsJsonEncoding(IDENTITY, "cellctl-x", started_ts=1.0).births(now=2.0)

    streams = {s["stream"]: s for s in json.loads(birth.payload)["streams"]}

    assert set(streams) == {"state", "job", "changeover", "part", "quality", "health", "alarm", "oee"}
    assert streams["quality"] == {
        "stream": "quality",
        "topic": f"{ROOT}/quality/+",
        "schema": "cellctl.quality/1",
        "retained": False,
    }
    assert streams["state"]["topic"] == f"{ROOT}/state" and streams["state"]["retained"] is True


def test_a_rebirth_after_a_reconnect_keeps_the_start_time_and_moves_the_session_time() -> None:
    encoding = UnsJsonEncoding(IDENTITY, "cellctl-x", started_ts=100.0)

    first, again = (
        StatusMessage.model_validate_json(encoding.births(now=t)[0].payload) for t in (110.0, 300.0)
    )

    assert (first.started_ts, again.started_ts) == (100.0, 100.0)
    assert (first.ts, again.ts) == (110.0, 300.0)


async def test_the_will_stays_small_without_metadata() -> None:
    encoding = UnsJsonEncoding(IDENTITY, "cellctl-x", started_ts=1.0)

    will = json.loads((await encoding.will()).payload)
    goodbye = encoding.goodbye(now=5.0)

    assert will == {
        "schema": "cellctl.status/1",
        "status": "offline",
        "client_id": "cellctl-x",
        "version": __version__,
        "ts": None,
        "reason": "connection lost",
    }
    assert goodbye is not None
    assert set(json.loads(goodbye.payload)) == set(will)
