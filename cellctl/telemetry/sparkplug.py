"""The Sparkplug B 3.0 wire encoding: the cell as one edge node, each configured device as a Sparkplug device.

Topics are ``spBv1.0/{group}/{NBIRTH|NDEATH|NDATA|NCMD}/{edge}`` and ``spBv1.0/{group}/{DBIRTH|DDATA}/{edge}/
{device}``. Each connection attempt takes the next ``bdSeq`` (0..255, kept in the store across restarts) into
its NDEATH will and the NBIRTH that follows; ``seq`` is 0 on the NBIRTH and counts every DBIRTH, NDATA and
DDATA up to 255, then wraps. Births carry every metric with its last value (null before one is known).

Each outbox row becomes one NDATA (node streams) or DDATA (``health``, on the row's device) whose metrics are
the row's payload fields flattened as ``<stream>/<field>`` (``quality/<characteristic>/<field>``,
``changeover/<kind>/<field>`` for a changeover's step, first-article and KPI records), plus ``<stream>/seq``
and ``<stream>/msg_id`` so a host can spot gaps and duplicates. Streams retained on the UNS (state, health,
OEE) are values: only the metrics that changed go out. The others are records: every field goes out, so one
message is one whole record. A row naming a metric the births did not have (a characteristic or device not
in the config) makes the births go out again first: a host never sees a metric it was not born with.

The payload schema is ``sparkplug_b.proto`` beside this module; protobuf does the encoding.
"""

from __future__ import annotations

import enum
import json
import math
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, Protocol, Union, get_args, get_origin

import structlog
from google.protobuf.message import DecodeError
from pydantic import BaseModel

from cellctl.errors import StoreError
from cellctl.schema.cell import Identity, SparkplugConfig
from cellctl.store import OutboxRow
from cellctl.telemetry._sparkplug_b_pb2 import Payload
from cellctl.telemetry.encoding import Outgoing, Reaction
from cellctl.telemetry.payloads import (
    AlarmData,
    ChangeoverData,
    ChangeoverKpiData,
    FirstArticleData,
    HealthData,
    JobData,
    OeeData,
    PartData,
    QualityData,
    StateData,
    StepData,
)

NAMESPACE = "spBv1.0"
BDSEQ_KEY = "sparkplug.bdseq"
"""Meta key under which the bdSeq of the latest connection attempt is kept."""
BDSEQ_METRIC = "bdSeq"
REBIRTH_METRIC = "Node Control/Rebirth"

_log = structlog.get_logger("cellctl.telemetry")
_MASK64 = (1 << 64) - 1


class DataType(IntEnum):
    """Sparkplug B datatype numbers cellctl uses (specification 6.4.16)."""

    INT64 = 4
    UINT64 = 8
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12


Value = bool | int | float | str | None

# The hot path compares plain ints: an enum member lookup costs more than the protobuf field it fills.
_INT64, _UINT64, _DOUBLE, _BOOLEAN, _STRING = (int(d) for d in DataType)


class MetaStore(Protocol):
    """Where the bdSeq survives a restart (``cellctl.store.Store`` is one)."""

    async def get_meta(self, key: str) -> str | None:
        """The value kept under ``key``, None when there is none."""
        ...

    async def set_meta(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` (durable on return)."""
        ...


# --- metric catalogue: names and datatypes from the payload models ---------------------------------------

_NODE_RECORDS: dict[str, type[BaseModel]] = {
    "state": StateData,
    "job": JobData,
    "changeover": ChangeoverData,
    "changeover/step": StepData,
    "changeover/first_article": FirstArticleData,
    "changeover/changeover_kpi": ChangeoverKpiData,
    "part": PartData,
    "alarm": AlarmData,
    "oee": OeeData,
}
"""Metric prefix -> the payload model whose fields are metrics below it."""
_NODE_STREAMS = ("state", "job", "changeover", "part", "quality", "alarm", "oee")
_DEVICE_STREAM = "health"
# Fields a metric's name already says (the record kind, the characteristic, the device): not metrics.
_NOT_METRICS = frozenset({"kind", "characteristic", "device"})


def datatype_of(annotation: Any) -> DataType:
    """The Sparkplug datatype of a payload field's type: nullable types map like their non-null part.

    Lists, dicts and nested records go out as String holding compact JSON.
    """
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return datatype_of(present[0]) if len(present) == 1 else DataType.STRING
    if origin is Literal:
        return _datatype_of_value(get_args(annotation)[0])
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum) or issubclass(annotation, str):
            return DataType.STRING
        if issubclass(annotation, bool):
            return DataType.BOOLEAN
        if issubclass(annotation, int):
            return DataType.INT64
        if issubclass(annotation, float):
            return DataType.DOUBLE
    return DataType.STRING


def _datatype_of_value(value: object) -> DataType:
    if isinstance(value, bool):
        return DataType.BOOLEAN
    if isinstance(value, int):
        return DataType.INT64
    if isinstance(value, float):
        return DataType.DOUBLE
    return DataType.STRING


def _record_metrics(prefix: str, model: type[BaseModel]) -> dict[str, DataType]:
    return {
        f"{prefix}/{name}": datatype_of(field.annotation)
        for name, field in model.model_fields.items()
        if name not in _NOT_METRICS
    }


def _envelope_metrics(stream: str) -> dict[str, DataType]:
    return {f"{stream}/seq": DataType.INT64, f"{stream}/msg_id": DataType.STRING}


def node_catalogue(characteristics: Iterable[str] = ()) -> dict[str, DataType]:
    """Every node metric but ``bdSeq`` and ``Node Control/Rebirth``, for the given quality characteristics."""
    catalogue: dict[str, DataType] = {}
    for stream in _NODE_STREAMS:
        catalogue.update(_envelope_metrics(stream))
    for prefix, model in _NODE_RECORDS.items():
        catalogue.update(_record_metrics(prefix, model))
    for characteristic in characteristics:
        catalogue.update(_record_metrics(f"quality/{characteristic}", QualityData))
    return catalogue


def device_catalogue() -> dict[str, DataType]:
    """Every metric of one device."""
    return {**_envelope_metrics(_DEVICE_STREAM), **_record_metrics(_DEVICE_STREAM, HealthData)}


# --- state -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Metric:
    """A metric's datatype and last value (``ts_ms`` 0 while none is known), as a host last got it."""

    datatype: int
    """A ``DataType`` number."""
    value: Value = None
    ts_ms: int = 0
    historical: bool = False
    """The value was last sent as historical (a host's live tag does not have it)."""


@dataclass(slots=True)
class _Target:
    """The node or one device: its metrics in birth order."""

    metrics: dict[str, _Metric]

    @classmethod
    def of(cls, catalogue: dict[str, DataType]) -> _Target:
        return cls({name: _Metric(int(datatype)) for name, datatype in catalogue.items()})


class SparkplugEncoding:
    """Sparkplug B 3.0 for one edge node; one instance lives as long as the publisher (it holds ``seq``)."""

    name = "sparkplug-b"

    def __init__(
        self,
        identity: Identity,
        config: SparkplugConfig,
        meta: MetaStore,
        *,
        devices: Iterable[str] = (),
        characteristics: Iterable[str] = (),
    ) -> None:
        """Encode for the cell of ``identity``; ``meta`` keeps the bdSeq across restarts.

        ``devices`` become Sparkplug devices and ``characteristics`` quality metrics from the first birth;
        others seen later make the births go out again.
        """
        self._group = config.group_for(identity)
        self._edge = config.edge_node_for(identity)
        self._host = config.primary_host_id
        self._meta = meta
        self._node = _Target.of(node_catalogue(characteristics))
        self._devices = {device: _Target.of(device_catalogue()) for device in devices}
        self._bdseq = 0
        self._last_bdseq: int | None = None
        self._seq = 0
        self._host_online = False
        self._host_ts = -1
        self._log = _log.bind(group=self._group, edge_node=self._edge)

    # --- topics -------------------------------------------------------------------------------------------

    def node_topic(self, kind: str) -> str:
        """``spBv1.0/{group}/{kind}/{edge}``."""
        return f"{NAMESPACE}/{self._group}/{kind}/{self._edge}"

    def device_topic(self, kind: str, device: str) -> str:
        """``spBv1.0/{group}/{kind}/{edge}/{device}``."""
        return f"{NAMESPACE}/{self._group}/{kind}/{self._edge}/{device}"

    @property
    def state_topic(self) -> str | None:
        """The primary host's STATE topic, None when no primary host is configured."""
        return None if self._host is None else f"{NAMESPACE}/STATE/{self._host}"

    @property
    def bdseq(self) -> int:
        """The bdSeq of the current (or last) connection."""
        return self._bdseq

    # --- Encoding -----------------------------------------------------------------------------------------

    async def will(self) -> Outgoing:
        """The NDEATH will of the next connection with the next bdSeq, kept in the store before connecting."""
        try:
            stored = await self._meta.get_meta(BDSEQ_KEY)
        except StoreError as exc:
            # The link matters more than the counter: go on from the last one this process used.
            self._log.warning(
                "could not read the sparkplug bdSeq; using the last one in memory", error=str(exc)
            )
            stored = None if self._last_bdseq is None else str(self._last_bdseq)
        self._bdseq = _next_bdseq(stored)
        self._last_bdseq = self._bdseq
        try:
            await self._meta.set_meta(BDSEQ_KEY, str(self._bdseq))
        except StoreError as exc:
            self._log.warning("could not keep the sparkplug bdSeq; a restart may repeat it", error=str(exc))
        self._host_online = False
        self._log.info("sparkplug connection attempt", bdseq=self._bdseq)
        return self._death(now=None)

    def subscriptions(self) -> Sequence[str]:
        """NCMD of this edge node, and the primary host's STATE when one is configured."""
        state = self.state_topic
        return (self.node_topic("NCMD"),) if state is None else (state, self.node_topic("NCMD"))

    def ready_on_connect(self) -> bool:
        """False with a primary host: births wait until its STATE says online."""
        return self._host is None

    def births(self, now: float) -> list[Outgoing]:
        """NBIRTH (seq 0, this connection's bdSeq) and one DBIRTH per device, each with every metric."""
        self._seq = 0
        now_ms = _ms(now)
        node = Payload(timestamp=now_ms, seq=self._next_seq())
        _add_metric(node, BDSEQ_METRIC, _INT64, self._bdseq, now_ms)
        _add_metric(node, REBIRTH_METRIC, _BOOLEAN, False, now_ms)
        _add_current(node, self._node, now_ms)
        messages = [self._birth(self.node_topic("NBIRTH"), node)]
        for device, target in self._devices.items():
            messages.append(self._device_birth(device, target, now_ms))
        return messages

    def encode(self, row: OutboxRow, *, publish_ts: float, historical: bool) -> list[Outgoing]:
        """One NDATA or DDATA for the row, after births again if the row brings a metric not born yet."""
        device, values = _row_metrics(row)
        births: list[Outgoing] = []
        if device is None:
            target = self._node
            if _register(target, values):
                births = self.births(publish_ts)
        else:
            known = self._devices.get(device)
            target = self._devices.setdefault(device, known or _Target.of(device_catalogue()))
            if _register(target, values) or known is None:
                births = [self._device_birth(device, target, _ms(publish_ts))]

        ts_ms = _ms(row.event_ts)
        envelope = (f"{row.stream}/seq", f"{row.stream}/msg_id")
        payload = Payload(timestamp=_ms(publish_ts), seq=self._next_seq())
        for name, raw in values.items():
            metric = target.metrics[name]
            value = _coerce(metric.datatype, raw, name)
            # Retained streams are values and go out by exception; records go out whole. The envelope
            # always goes: a row sent again after a reconnect still says which message it is. A value last
            # sent as historical did not update the host's live tag, so the first live row sends it again.
            unchanged = metric.ts_ms and metric.value == value and (historical or not metric.historical)
            if row.retain and unchanged and name not in envelope:
                continue
            metric.value, metric.ts_ms, metric.historical = value, ts_ms, historical
            _add_metric(payload, name, metric.datatype, value, ts_ms, historical=historical)
        topic = self.node_topic("NDATA") if device is None else self.device_topic("DDATA", device)
        data = Outgoing(topic, payload.SerializeToString(), qos=row.qos, retain=False)
        return [*births, data]

    def on_message(self, topic: str, payload: bytes) -> Reaction:
        """NCMD ``Node Control/Rebirth`` -> REBIRTH; the primary host's STATE -> READY or NOT_READY."""
        if topic == self.state_topic:
            return self._on_state(payload)
        if topic == self.node_topic("NCMD"):
            return self._on_command(payload)
        return Reaction.NONE

    def goodbye(self, now: float) -> Outgoing | None:
        """NDEATH with this connection's bdSeq: a clean stop suppresses the will, so it is said here."""
        return self._death(now=now)

    # --- internals ----------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _death(self, *, now: float | None) -> Outgoing:
        # The will is fixed when the connection opens, so only a goodbye carries a timestamp.
        payload = Payload() if now is None else Payload(timestamp=_ms(now))
        metric = Payload.Metric(name=BDSEQ_METRIC, datatype=_INT64, long_value=self._bdseq)
        if now is not None:
            metric.timestamp = _ms(now)
        payload.metrics.append(metric)
        # Spec 3.0: the NDEATH will is QoS 1 and not retained.
        return Outgoing(self.node_topic("NDEATH"), payload.SerializeToString(), qos=1, retain=False)

    def _device_birth(self, device: str, target: _Target, now_ms: int) -> Outgoing:
        payload = Payload(timestamp=now_ms, seq=self._next_seq())
        _add_current(payload, target, now_ms)
        return self._birth(self.device_topic("DBIRTH", device), payload)

    @staticmethod
    def _birth(topic: str, payload: Payload) -> Outgoing:
        # Spec 3.0: births are QoS 0, not retained.
        return Outgoing(topic, payload.SerializeToString(), qos=0, retain=False)

    def _on_state(self, payload: bytes) -> Reaction:
        if not payload:
            return Reaction.NONE  # the retained STATE was cleared: no news about the host
        try:
            state = json.loads(payload)
            online, ts = state["online"], state.get("timestamp", 0)
            if not isinstance(online, bool) or not isinstance(ts, int):
                raise TypeError("online must be a boolean and timestamp an integer")
        except (ValueError, KeyError, TypeError) as exc:
            self._log.warning("primary host STATE not understood; ignored", error=str(exc))
            return Reaction.NONE
        # An older STATE delivered late (another host connection) must not undo a newer one.
        if ts < self._host_ts:
            return Reaction.NONE
        self._host_ts = ts
        if online and not self._host_online:
            self._host_online = True
            self._log.info("primary host online", host=self._host)
            return Reaction.READY
        if not online and self._host_online:
            self._host_online = False
            self._log.warning("primary host offline", host=self._host)
            return Reaction.NOT_READY
        return Reaction.NONE

    def _on_command(self, payload: bytes) -> Reaction:
        command = Payload()
        try:
            command.ParseFromString(payload)
        except DecodeError as exc:
            self._log.warning("NCMD is not a Sparkplug B payload; ignored", error=str(exc))
            return Reaction.NONE
        for metric in command.metrics:
            if metric.name == REBIRTH_METRIC and metric.WhichOneof("value") == "boolean_value":
                if metric.boolean_value:
                    return Reaction.REBIRTH
            else:
                self._log.info("NCMD metric not supported; ignored", metric=metric.name)
        return Reaction.NONE


# --- helpers ---------------------------------------------------------------------------------------------


def _next_bdseq(stored: str | None) -> int:
    """The bdSeq after the stored one, wrapping after 255; 0 for a first connection or a damaged value."""
    if stored is None:
        return 0
    try:
        value = int(stored)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        # A value that cannot be trusted either way: start over at 0, as a new edge node does.
        _log.warning("stored sparkplug bdSeq is not 0..255; starting over at 0", stored=stored)
        return 0
    return (value + 1) % 256


def _ms(ts: float) -> int:
    return max(0, round(ts * 1000))


def _row_metrics(row: OutboxRow) -> tuple[str | None, dict[str, Any]]:
    """The device (None: the node) and the metric name -> raw value pairs of one outbox row."""
    data = row.data()
    stream = row.stream
    device: str | None = None
    if stream == _DEVICE_STREAM:
        device = str(data.get("device", ""))
        prefix = stream
    elif stream == "quality":
        prefix = f"quality/{data.get('characteristic', '')}"
    elif stream == "changeover" and data.get("kind", "changeover") != "changeover":
        prefix = f"changeover/{data['kind']}"
    else:
        prefix = stream
    values: dict[str, Any] = {f"{stream}/seq": row.seq, f"{stream}/msg_id": row.msg_id}
    values.update({f"{prefix}/{k}": v for k, v in data.items() if k not in _NOT_METRICS})
    return device, values


def _register(target: _Target, values: dict[str, Any]) -> bool:
    """Add metrics ``target`` does not have yet (datatype from the catalogue or the value); True if any."""
    new = [name for name in values if name not in target.metrics]
    for name in new:
        target.metrics[name] = _Metric(int(_datatype_of_value(values[name])))
    return bool(new)


def _coerce(datatype: int, value: Any, name: str) -> Value:
    """The value as its metric's datatype; a value that does not fit goes out as null (and is logged)."""
    if value is None:
        return None
    kind = type(value)
    if datatype == _STRING:
        return value if kind is str else json.dumps(value, separators=(",", ":"), sort_keys=True)
    if datatype == _BOOLEAN and kind is bool:
        return bool(value)
    if datatype in (_INT64, _UINT64):
        if kind is int:
            return int(value)
        if kind is float and value.is_integer():
            return int(value)
    if datatype == _DOUBLE and (kind is float or kind is int):
        return float(value) if math.isfinite(value) else None
    _log.warning("metric value does not fit its datatype; sent as null", metric=name, value=repr(value))
    return None


def _add_metric(
    payload: Payload, name: str, datatype: int, value: Value, ts_ms: int, *, historical: bool = False
) -> None:
    # Filled in place: a metric built apart and appended is copied into the payload (twice the work).
    metric = payload.metrics.add()
    metric.name = name
    metric.timestamp = ts_ms
    metric.datatype = datatype
    if historical:
        metric.is_historical = True
    if value is None:
        metric.is_null = True
    elif datatype == _BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype in (_INT64, _UINT64):
        # Int64 travels in the unsigned 64-bit field as two's complement (spec 6.4.16).
        metric.long_value = int(value) & _MASK64
    elif datatype == _DOUBLE:
        metric.double_value = float(value)
    else:
        metric.string_value = str(value)


def _add_current(payload: Payload, target: _Target, now_ms: int) -> None:
    """Every metric of ``target`` with its last value (null, stamped ``now_ms``, before one is known)."""
    for name, metric in target.metrics.items():
        _add_metric(payload, name, metric.datatype, metric.value, metric.ts_ms or now_ms)
        metric.historical = False  # a birth sets the host's live tags


def decode(payload: bytes) -> Payload:
    """Parse a Sparkplug B payload (for tests and diagnostics); DecodeError if it is not one."""
    message = Payload()
    message.ParseFromString(payload)
    return message


def metric_value(metric: Payload.Metric) -> Value:
    """A decoded metric's value as Python (Int64 back from two's complement; None when null)."""
    if metric.is_null:
        return None
    which = metric.WhichOneof("value")
    if which is None:
        return None
    value: Value = getattr(metric, which)
    if which == "long_value" and metric.datatype == DataType.INT64 and isinstance(value, int) and value >> 63:
        return value - (1 << 64)
    return value
