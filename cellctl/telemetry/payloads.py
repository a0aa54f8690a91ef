"""Versioned telemetry payload models: the envelope every message carries and the data of each event kind.

This module is the telemetry contract consumers code against. A change that removes or retypes a field
bumps the stream's schema version (``cellctl.<stream>/<n>``); adding an optional field does not.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cellctl.core.events import (
    AlarmAction,
    ChangeoverStatus,
    FirstArticleStatus,
    JobStatus,
    Severity,
    StepStatus,
    Stream,
    Verdict,
)

SCHEMA_VERSIONS: dict[str, int] = {stream.value: 1 for stream in Stream}
"""Current payload version of each stream."""


def schema_id(stream: str) -> str:
    """The envelope's ``schema`` value for a stream, e.g. ``cellctl.state/1``."""
    return f"cellctl.{stream}/{SCHEMA_VERSIONS.get(stream, 1)}"


class Payload(BaseModel):
    """Base of payload models: unknown fields are errors, so the contract stays exact.

    Field docstrings become the fields' descriptions in the exported JSON Schemas.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --- data of each event kind -------------------------------------------------------------------------


class StateData(Payload):
    """The PackML state machine moved (retained on ``<root>/state``)."""

    kind: Literal["state_changed"] = "state_changed"
    state: str
    state_no: int
    previous: str
    command: str | None
    by: str
    mode: str


class JobData(Payload):
    """An order changed status, with its counts so far."""

    kind: Literal["job"] = "job"
    job: str
    order_id: str
    variant: str
    recipe_version: int
    recipe_hash: str
    quantity: int
    status: JobStatus
    produced: int
    good: int
    bad: int
    invalid: int
    parameters: dict[str, float]
    by: str
    reason: str
    due: float | None = None
    """When the order should be finished (epoch seconds), if it says."""
    priority: int = 0
    part_parameters: list[dict[str, float]] = []
    """Batch size one: each part's parameter set, in part order (empty when the order has none)."""
    order_hash: str = ""
    """Digest of the order's content: a consumer sees whether a repeated order id is the same order."""
    order_released: bool = False
    """The order id may be submitted again (the job was not restored after an unclean stop)."""


class ChangeoverData(Payload):
    """A changeover started or ended; ``steps`` lists the plan's step ids in order."""

    kind: Literal["changeover"] = "changeover"
    changeover: str
    job: str
    from_variant: str | None
    to_variant: str
    status: ChangeoverStatus
    steps: list[str]
    planned_s: float
    duration_s: float | None
    reason: str


class StepData(Payload):
    """One changeover step started or ended."""

    kind: Literal["step"] = "step"
    changeover: str
    job: str
    step: str
    step_kind: str
    device: str | None
    status: StepStatus
    detail: str
    duration_s: float | None


class FirstArticleData(Payload):
    """The first-article gate after a changeover opened, failed, passed or was signed off."""

    kind: Literal["first_article"] = "first_article"
    changeover: str
    job: str
    variant: str
    status: FirstArticleStatus
    needed: int
    passes: int
    part: str | None
    by: str
    note: str


class StepKpiData(Payload):
    """One step's planned against actual seconds in a changeover's KPIs."""

    step: str
    device: str | None
    phase: Literal["external", "internal"]
    planned_s: float
    actual_s: float | None


class ChangeoverKpiData(Payload):
    """The SMED figures of one changeover (see ``cellctl.core.events.ChangeoverKpi`` for each definition)."""

    kind: Literal["changeover_kpi"] = "changeover_kpi"
    changeover: str
    job: str
    from_variant: str | None
    to_variant: str
    last_good_ts: float | None
    first_good_ts: float
    total_s: float | None
    external_s: float
    external_wait_s: float
    internal_s: float
    first_article_s: float
    planned_external_s: float
    planned_internal_s: float
    steps: list[StepKpiData]
    ended_by: Literal["part", "sign_off"]


class PartData(Payload):
    """A part finished with its overall verdict; ``checks`` maps each characteristic to its verdict."""

    kind: Literal["part"] = "part"
    part: str
    job: str
    variant: str
    index: int
    verdict: Verdict
    checks: dict[str, Verdict]
    parameters: dict[str, float]
    cycle_s: float
    first_article: bool = False


class QualityData(Payload):
    """One characteristic measured on one part; ``value`` is null when it could not be trusted."""

    kind: Literal["quality"] = "quality"
    part: str
    job: str
    variant: str
    index: int
    characteristic: str
    value: float | None
    quality: str
    units: str
    nominal: float
    lsl: float
    usl: float
    verdict: Verdict
    reason: str


class HealthData(Payload):
    """A device link changed state (retained per device on ``<root>/health/<device>``)."""

    kind: Literal["device_health"] = "device_health"
    device: str
    state: str
    error: str


class AlarmData(Payload):
    """An alarm was raised, cleared or acknowledged (``action``); ``active`` says whether it still is."""

    kind: Literal["alarm"] = "alarm"
    alarm: str
    severity: Severity
    active: bool
    message: str
    source: str
    action: AlarmAction = AlarmAction.RAISED
    by: str = "engine"
    acked_by: str | None = None
    raised_ts: float | None = None


class OeeData(Payload):
    """The OEE of one ended shift or window (see ``cellctl.core.events.OeeReport``), retained."""

    kind: Literal["oee_report"] = "oee_report"
    window: str
    window_start: float
    window_end: float
    policy: str
    oee: float | None
    availability: float | None
    performance: float | None
    quality: float | None
    planned_s: float
    run_s: float
    downtime_s: float
    changeover_s: float
    unknown_s: float
    ideal_s: float
    good: int
    bad: int
    invalid: int
    changeovers: int
    downtime: dict[str, float]
    downtime_count: dict[str, int]


# --- envelopes ---------------------------------------------------------------------------------------


class Envelope(Payload):
    """What every outbox message looks like on the wire.

    ``msg_id`` is unique per message (consumers de-duplicate on it: QoS 1 may deliver twice after a
    reconnect); ``seq`` counts up by one per message of the ``stream``, so a gap means a lost message.
    ``event_ts`` is when the fact happened, ``publish_ts`` when this copy was sent (Unix seconds).
    """

    model_config = ConfigDict(populate_by_name=True)

    schema_id: str = Field(alias="schema")
    """Schema id and version of this message, ``cellctl.<stream>/<n>``."""
    msg_id: str
    """Unique per message; a redelivered copy carries the same one (de-duplicate on it)."""
    seq: Annotated[int, Field(ge=1)]
    """Per-stream sequence number, up by one per message of the stream: a gap means a lost message."""
    stream: str
    """The stream this message belongs to."""
    event_ts: float
    """When the fact happened (Unix seconds)."""
    publish_ts: float
    """When this copy was sent (Unix seconds)."""
    historical: bool = False
    """Replayed backlog: queued while no broker session was up, so not a live value."""
    data: dict[str, Any]
    """The fact itself; its model depends on the stream (and on ``data.kind`` for changeover)."""


class StateMessage(Envelope):
    """``<root>/state``."""

    schema_id: Literal["cellctl.state/1"] = Field(alias="schema")
    stream: Literal["state"]
    data: StateData  # type: ignore[assignment]


class JobMessage(Envelope):
    """``<root>/job``."""

    schema_id: Literal["cellctl.job/1"] = Field(alias="schema")
    stream: Literal["job"]
    data: JobData  # type: ignore[assignment]


class ChangeoverMessage(Envelope):
    """``<root>/changeover``: a changeover, a step, its first-article gate or its KPIs (by ``data.kind``)."""

    schema_id: Literal["cellctl.changeover/1"] = Field(alias="schema")
    stream: Literal["changeover"]
    data: Annotated[  # type: ignore[assignment]
        ChangeoverData | StepData | FirstArticleData | ChangeoverKpiData, Field(discriminator="kind")
    ]


class PartMessage(Envelope):
    """``<root>/part``."""

    schema_id: Literal["cellctl.part/1"] = Field(alias="schema")
    stream: Literal["part"]
    data: PartData  # type: ignore[assignment]


class QualityMessage(Envelope):
    """``<root>/quality/<characteristic>``."""

    schema_id: Literal["cellctl.quality/1"] = Field(alias="schema")
    stream: Literal["quality"]
    data: QualityData  # type: ignore[assignment]


class HealthMessage(Envelope):
    """``<root>/health/<device>`` (retained)."""

    schema_id: Literal["cellctl.health/1"] = Field(alias="schema")
    stream: Literal["health"]
    data: HealthData  # type: ignore[assignment]


class AlarmMessage(Envelope):
    """``<root>/alarm``."""

    schema_id: Literal["cellctl.alarm/1"] = Field(alias="schema")
    stream: Literal["alarm"]
    data: AlarmData  # type: ignore[assignment]


class OeeMessage(Envelope):
    """``<root>/oee`` (retained): the last ended shift's OEE."""

    schema_id: Literal["cellctl.oee/1"] = Field(alias="schema")
    stream: Literal["oee"]
    data: OeeData  # type: ignore[assignment]


MESSAGE_MODELS: dict[str, type[Envelope]] = {
    "cellctl.state/1": StateMessage,
    "cellctl.job/1": JobMessage,
    "cellctl.changeover/1": ChangeoverMessage,
    "cellctl.part/1": PartMessage,
    "cellctl.quality/1": QualityMessage,
    "cellctl.health/1": HealthMessage,
    "cellctl.alarm/1": AlarmMessage,
    "cellctl.oee/1": OeeMessage,
}
"""Typed envelope model by ``schema`` value."""


STATUS_SCHEMA_ID: Literal["cellctl.status/1"] = "cellctl.status/1"
"""The ``schema`` of ``<root>/status`` messages."""


class CellIdentityData(Payload):
    """Where the cell sits in the ISA-95 hierarchy (the levels of its topic root)."""

    enterprise: str
    site: str
    area: str
    line: str
    cell: str


class StreamInfo(Payload):
    """One stream a birth announces: the topic filter it is published on and the schema of its messages."""

    model_config = ConfigDict(populate_by_name=True)

    stream: str
    topic: str
    """MQTT topic filter (``+`` stands for a characteristic or a device)."""
    schema_id: str = Field(alias="schema")
    retained: bool


class StatusMessage(Payload):
    """``<root>/status`` (retained): birth ``online`` on connect, ``offline`` as last will or on a clean stop.

    The birth carries metadata (``cell``, ``encoding``, ``streams``, ``started_ts``) so a consumer that
    subscribes late learns what this cell publishes and with which schemas. The last will is fixed when the
    connection opens and stays small: no timestamp, no metadata.
    """

    model_config = ConfigDict(populate_by_name=True)

    schema_id: Literal["cellctl.status/1"] = Field(default=STATUS_SCHEMA_ID, alias="schema")
    status: Literal["online", "offline"]
    client_id: str
    version: str
    """cellctl's version."""
    ts: float | None = None
    """When this message was made: for a birth, when this broker session came up."""
    reason: str = ""
    cell: CellIdentityData | None = None
    """Birth only: the cell's identity."""
    encoding: str | None = None
    """Birth only: the wire encoding's name (``uns-json``)."""
    streams: list[StreamInfo] | None = None
    """Birth only: every stream with its topic filter and schema id."""
    started_ts: float | None = None
    """Birth only: when this controller run started; the same across reconnects, new after a restart."""


def parse_message(payload: bytes | str) -> Envelope:
    """Validate a received outbox message against the model of its ``schema``; ValueError if unknown."""
    raw = json.loads(payload)
    if not isinstance(raw, dict):
        raise ValueError("a telemetry message is a JSON object")
    model = MESSAGE_MODELS.get(str(raw.get("schema")))
    if model is None:
        raise ValueError(f"unknown telemetry schema {raw.get('schema')!r}")
    return model.model_validate(raw)
