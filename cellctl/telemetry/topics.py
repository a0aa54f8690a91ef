"""The telemetry topic scheme: which messages each recorded event becomes, and the envelope sent per row.

Topics hang under ``{enterprise}/{site}/{area}/{line}/{cell}`` (ISA-95, from the cell's identity):

====================================  ========  ===========================  =========
topic                                 stream    event                        retained
====================================  ========  ===========================  =========
``<root>/state``                      state     StateChanged                 yes
``<root>/job``                        job       JobEvent                     no
``<root>/changeover``                 change…   ChangeoverEvent, StepEvent,  no
                                                FirstArticleEvent,
                                                ChangeoverKpi
``<root>/part``                       part      PartProduced                 no
``<root>/quality/<characteristic>``   quality   PartProduced (one each)      no
``<root>/health/<device>``            health    DeviceHealthChanged          yes
``<root>/alarm``                      alarm     AlarmEvent                   no
``<root>/oee``                        oee       OeeReport                    yes
``<root>/status``                     —         birth / last will            yes
====================================  ========  ===========================  =========

OperatorAction is journaled only: who did what already reaches the plant through ``by`` on state and job
messages, and command arguments and refusals stay on the cell (they may name people).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from cellctl.core.events import (
    AlarmEvent,
    ChangeoverEvent,
    ChangeoverKpi,
    DeviceHealthChanged,
    Event,
    FirstArticleEvent,
    JobEvent,
    OeeReport,
    OperatorAction,
    PartProduced,
    StateChanged,
    StepEvent,
    Stream,
    Verdict,
)
from cellctl.schema.cell import Identity
from cellctl.store import OutboxMessage, OutboxRow
from cellctl.telemetry.payloads import (
    AlarmData,
    ChangeoverData,
    ChangeoverKpiData,
    FirstArticleData,
    HealthData,
    JobData,
    OeeData,
    PartData,
    Payload,
    QualityData,
    StateData,
    StepData,
    schema_id,
)

_log = structlog.get_logger("cellctl.telemetry")
_FORBIDDEN_IN_LEVEL = frozenset("/+#\x00")

Mapper = Callable[[Any, str], list[OutboxMessage]]


@dataclass(frozen=True, slots=True)
class StreamTopic:
    """Where one stream is published: ``filter`` is the MQTT topic filter under the root (``+`` for a level
    named per characteristic or device)."""

    stream: Stream
    filter: str
    retained: bool


STREAM_TOPICS: tuple[StreamTopic, ...] = (
    StreamTopic(Stream.STATE, "state", retained=True),
    StreamTopic(Stream.JOB, "job", retained=False),
    StreamTopic(Stream.CHANGEOVER, "changeover", retained=False),
    StreamTopic(Stream.PART, "part", retained=False),
    StreamTopic(Stream.QUALITY, "quality/+", retained=False),
    StreamTopic(Stream.HEALTH, "health/+", retained=True),
    StreamTopic(Stream.ALARM, "alarm", retained=False),
    StreamTopic(Stream.OEE, "oee", retained=True),
)
"""The topic of each stream, as the table above says; the birth and the exported schema index list it."""

STATUS_FILTER = "status"
"""The retained birth / last-will topic under the root."""


def topic_root(identity: Identity) -> str:
    """``{enterprise}/{site}/{area}/{line}/{cell}``."""
    return "/".join(
        _level(v) for v in (identity.enterprise, identity.site, identity.area, identity.line, identity.cell)
    )


def status_topic(identity: Identity) -> str:
    """``<root>/status``: the retained birth / last-will topic."""
    return f"{topic_root(identity)}/{STATUS_FILTER}"


def _level(value: str) -> str:
    if not value or _FORBIDDEN_IN_LEVEL.intersection(value):
        raise ValueError(f"{value!r} cannot be an MQTT topic level (empty, or holds '/', '+', '#' or NUL)")
    return value


def _body(model: Payload) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


_P = TypeVar("_P", bound=Payload)


def _copied(model: type[_P], event: Event) -> _P:
    """The payload of an event whose wire fields are its own fields; non-finite floats go out as null."""
    data = {k: _finite(v) if isinstance(v, float) else v for k, v in event.to_data().items()}
    return model.model_validate(data)


def _state(event: StateChanged, root: str) -> list[OutboxMessage]:
    data = _copied(StateData, event)
    return [OutboxMessage(f"{root}/state", Stream.STATE, _body(data), retain=True)]


def _job(event: JobEvent, root: str) -> list[OutboxMessage]:
    return [OutboxMessage(f"{root}/job", Stream.JOB, _body(_copied(JobData, event)))]


def _changeover(event: ChangeoverEvent, root: str) -> list[OutboxMessage]:
    data = _copied(ChangeoverData, event)
    return [OutboxMessage(f"{root}/changeover", Stream.CHANGEOVER, _body(data))]


def _step(event: StepEvent, root: str) -> list[OutboxMessage]:
    return [OutboxMessage(f"{root}/changeover", Stream.CHANGEOVER, _body(_copied(StepData, event)))]


def _first_article(event: FirstArticleEvent, root: str) -> list[OutboxMessage]:
    data = _copied(FirstArticleData, event)
    return [OutboxMessage(f"{root}/changeover", Stream.CHANGEOVER, _body(data))]


def _changeover_kpi(event: ChangeoverKpi, root: str) -> list[OutboxMessage]:
    data = _copied(ChangeoverKpiData, event)
    return [OutboxMessage(f"{root}/changeover", Stream.CHANGEOVER, _body(data))]


def _part(event: PartProduced, root: str) -> list[OutboxMessage]:
    bodies = _part_bodies_fast(event) if _is_plain_part(event) else _part_bodies(event)
    messages = [OutboxMessage(f"{root}/part", Stream.PART, bodies[0])]
    for m, body in zip(event.measurements, bodies[1:], strict=True):
        topic = f"{root}/quality/{_level(m.characteristic)}"
        messages.append(OutboxMessage(topic, Stream.QUALITY, body))
    return messages


def _part_bodies(event: PartProduced) -> list[dict[str, Any]]:
    """The part body then one quality body per measurement, through the payload models (the contract)."""
    part = PartData(
        part=event.part,
        job=event.job,
        variant=event.variant,
        index=event.index,
        verdict=event.verdict,
        checks={m.characteristic: m.verdict for m in event.measurements},
        parameters=dict(event.parameters),
        cycle_s=event.cycle_s,
        first_article=event.first_article,
    )
    bodies = [_body(part)]
    for m in event.measurements:
        quality = QualityData(
            part=event.part,
            job=event.job,
            variant=event.variant,
            index=event.index,
            characteristic=m.characteristic,
            value=_finite(m.value),
            quality=m.quality,
            units=m.units,
            nominal=m.nominal,
            lsl=m.lsl,
            usl=m.usl,
            verdict=m.verdict,
            reason=m.reason,
        )
        bodies.append(_body(quality))
    return bodies


def _is_plain_part(event: PartProduced) -> bool:
    """Every field has exactly its declared type, so the payload models would pass each value unchanged."""
    if not (
        type(event.part) is str
        and type(event.job) is str
        and type(event.variant) is str
        and type(event.index) is int
        and type(event.verdict) is Verdict
        and type(event.cycle_s) is float
        and type(event.first_article) is bool
        and type(event.parameters) is dict
        and all(type(k) is str and type(v) is float for k, v in event.parameters.items())
    ):
        return False
    return all(
        type(m.characteristic) is str
        and (m.value is None or type(m.value) is float)
        and type(m.quality) is str
        and type(m.units) is str
        and type(m.nominal) is float
        and type(m.lsl) is float
        and type(m.usl) is float
        and type(m.verdict) is Verdict
        and type(m.reason) is str
        for m in event.measurements
    )


def _part_bodies_fast(event: PartProduced) -> list[dict[str, Any]]:
    """``_part_bodies`` for a plain event, built directly: validating and dumping five models per part was a
    tenth of its recording cost. Same keys in the same order, same values (tests/unit/test_topics.py)."""
    part, job, variant, index = event.part, event.job, event.variant, event.index
    bodies: list[dict[str, Any]] = [
        {
            "kind": "part",
            "part": part,
            "job": job,
            "variant": variant,
            "index": index,
            "verdict": event.verdict.value,
            "checks": {m.characteristic: m.verdict.value for m in event.measurements},
            "parameters": dict(event.parameters),
            "cycle_s": event.cycle_s,
            "first_article": event.first_article,
        }
    ]
    for m in event.measurements:
        bodies.append(
            {
                "kind": "quality",
                "part": part,
                "job": job,
                "variant": variant,
                "index": index,
                "characteristic": m.characteristic,
                "value": _finite(m.value),
                "quality": m.quality,
                "units": m.units,
                "nominal": m.nominal,
                "lsl": m.lsl,
                "usl": m.usl,
                "verdict": m.verdict.value,
                "reason": m.reason,
            }
        )
    return bodies


def _health(event: DeviceHealthChanged, root: str) -> list[OutboxMessage]:
    topic = f"{root}/health/{_level(event.device)}"
    return [OutboxMessage(topic, Stream.HEALTH, _body(_copied(HealthData, event)), retain=True)]


def _alarm(event: AlarmEvent, root: str) -> list[OutboxMessage]:
    return [OutboxMessage(f"{root}/alarm", Stream.ALARM, _body(_copied(AlarmData, event)))]


def _oee(event: OeeReport, root: str) -> list[OutboxMessage]:
    # Retained: a dashboard that connects mid-shift still sees the last shift's figures.
    return [OutboxMessage(f"{root}/oee", Stream.OEE, _body(_copied(OeeData, event)), retain=True)]


def _journal_only(event: Event, root: str) -> list[OutboxMessage]:
    return []


MAPPERS: dict[str, Mapper] = {
    StateChanged.kind: _state,
    JobEvent.kind: _job,
    ChangeoverEvent.kind: _changeover,
    StepEvent.kind: _step,
    FirstArticleEvent.kind: _first_article,
    ChangeoverKpi.kind: _changeover_kpi,
    PartProduced.kind: _part,
    DeviceHealthChanged.kind: _health,
    AlarmEvent.kind: _alarm,
    OperatorAction.kind: _journal_only,
    OeeReport.kind: _oee,
}
"""Event kind -> the messages it becomes; a new event kind adds one entry here."""

_unmapped_warned: set[str] = set()


def messages_for(event: Event, identity: Identity) -> list[OutboxMessage]:
    """The telemetry messages one event becomes (possibly none), in the order they are to be sent."""
    return messages_for_root(event, topic_root(identity))


def messages_for_root(event: Event, root: str) -> list[OutboxMessage]:
    """Like ``messages_for`` with the topic root already built (the recorder's hot path)."""
    mapper = MAPPERS.get(event.kind)
    if mapper is None:
        # Telemetry must never stop a fact from being journaled: record it, say so once.
        if event.kind not in _unmapped_warned:
            _unmapped_warned.add(event.kind)
            _log.warning("event kind has no telemetry mapping; journal only", kind=event.kind)
        return []
    return mapper(event, root)


def envelope_json(row: OutboxRow, publish_ts: float, *, historical: bool = False) -> bytes:
    """The wire payload of an outbox row: the envelope with the stored body spliced in as ``data``."""
    # Built as text, not with json.dumps of a dict: this runs once per message on the publisher's hot path.
    # Strings go through the json module's own escaping, floats through repr (what json.dumps writes).
    return (
        f'{{"schema":{_json_text(schema_id(row.stream))},"msg_id":{_json_text(row.msg_id)},'
        f'"seq":{int(row.seq)},"stream":{_json_text(row.stream)},'
        f'"event_ts":{float(row.event_ts)!r},"publish_ts":{float(publish_ts)!r},'
        f'"historical":{"true" if historical else "false"},"data":{row.body}}}'
    ).encode()


_json_text: Callable[[str], str] = json.encoder.encode_basestring
"""A JSON string literal of ``text`` (C-accelerated where available)."""
