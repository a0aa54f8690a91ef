"""Domain facts the engine records: each is journaled and turned into telemetry in one transaction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, ClassVar


class Stream(StrEnum):
    """Telemetry stream an event belongs to; each stream has its own sequence numbers."""

    STATE = "state"
    JOB = "job"
    CHANGEOVER = "changeover"
    PART = "part"
    QUALITY = "quality"
    HEALTH = "health"
    ALARM = "alarm"
    OEE = "oee"


class Verdict(StrEnum):
    """Outcome of a quality check: INVALID when a value could not be trusted, never a pass."""

    PASS = "pass"
    FAIL = "fail"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every recorded fact; ``ts`` is wall-clock seconds when it happened."""

    stream: ClassVar[Stream]
    kind: ClassVar[str]
    ts: float

    @property
    def job_id(self) -> str | None:
        """The job this fact belongs to, for indexing the journal."""
        return None

    def to_data(self) -> dict[str, Any]:
        """The event's fields as JSON-ready data (without the timestamp): ``dataclasses.asdict`` but cheap."""
        # asdict deep-copies every leaf, a quarter of a part's recording cost; _plain copies the containers
        # and shares the immutable leaves, which gives an equal result (tests/unit/test_events.py proves it).
        return {name: _plain(getattr(self, name)) for name in _field_names(type(self)) if name != "ts"}


_ATOMS: frozenset[type] = frozenset({str, int, float, bool, type(None)})
"""Leaves that deepcopy returns as they are; Enum members are such leaves too."""

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _plain(value: Any) -> Any:
    """``value`` as ``dataclasses.asdict`` turns a field: dataclasses to dicts, containers copied."""
    kind = type(value)
    if kind in _ATOMS or isinstance(value, Enum):
        return value
    if kind is tuple:
        return tuple([_plain(v) for v in value])
    if kind is list:
        return [_plain(v) for v in value]
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(kind)}
    # Anything else (a namedtuple, a dict subclass, a set...) in an untyped field: asdict's own way.
    return dataclasses.asdict(_Box(value))["value"]


@dataclass(frozen=True, slots=True)
class _Box:
    """Carries an unusual value through ``dataclasses.asdict``."""

    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(Event):
    """The PackML state machine moved."""

    stream: ClassVar[Stream] = Stream.STATE
    kind: ClassVar[str] = "state_changed"
    state: str
    state_no: int
    previous: str
    command: str | None
    by: str
    mode: str = "production"


class JobStatus(StrEnum):
    """Life of an order in the cell."""

    QUEUED = "queued"
    STARTED = "started"
    COMPLETED = "completed"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent(Event):
    """An order changed status."""

    stream: ClassVar[Stream] = Stream.JOB
    kind: ClassVar[str] = "job"
    job: str
    order_id: str
    variant: str
    recipe_version: int
    recipe_hash: str
    quantity: int
    status: JobStatus
    produced: int = 0
    good: int = 0
    bad: int = 0
    invalid: int = 0
    parameters: dict[str, float] = field(default_factory=dict)
    by: str = "engine"
    reason: str = ""
    due: float | None = None
    priority: int = 0
    part_parameters: list[dict[str, float]] = field(default_factory=list)
    """Batch size one: the resolved parameter set of each part, in part order (empty: ``parameters``)."""
    order_hash: str = ""
    """Digest of the order's content; the store keeps it with the order id (one job per order id)."""
    order_released: bool = False
    """The order id is free again: the job was not restored after an unclean stop (submit the order again)."""

    @property
    def job_id(self) -> str | None:
        """The job."""
        return self.job


class ChangeoverStatus(StrEnum):
    """Life of a changeover run."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeoverEvent(Event):
    """A changeover started or ended; ``steps`` lists the plan's step ids in order."""

    stream: ClassVar[Stream] = Stream.CHANGEOVER
    kind: ClassVar[str] = "changeover"
    changeover: str
    job: str
    from_variant: str | None
    to_variant: str
    status: ChangeoverStatus
    steps: tuple[str, ...] = ()
    planned_s: float = 0.0
    duration_s: float | None = None
    reason: str = ""

    @property
    def job_id(self) -> str | None:
        """The job that needed this changeover."""
        return self.job


class StepStatus(StrEnum):
    """Life of one changeover step."""

    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    WAITING = "waiting"
    """The step waits for a person (an operator step, or a step in doubt after a restart)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepEvent(Event):
    """A changeover step started or ended."""

    stream: ClassVar[Stream] = Stream.CHANGEOVER
    kind: ClassVar[str] = "step"
    changeover: str
    job: str
    step: str
    step_kind: str
    device: str | None
    status: StepStatus
    detail: str = ""
    duration_s: float | None = None

    @property
    def job_id(self) -> str | None:
        """The job that needed this changeover."""
        return self.job


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One quality characteristic measured on one part, with its limits and verdict."""

    characteristic: str
    value: float | None
    quality: str
    units: str
    nominal: float
    lsl: float
    usl: float
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartProduced(Event):
    """A part finished its cycle and got a verdict; telemetry sends one part and one quality message per
    characteristic."""

    stream: ClassVar[Stream] = Stream.PART
    kind: ClassVar[str] = "part"
    part: str
    job: str
    variant: str
    index: int
    verdict: Verdict
    measurements: tuple[Measurement, ...]
    parameters: dict[str, float] = field(default_factory=dict)
    cycle_s: float = 0.0
    first_article: bool = False
    """Made while the first-article gate after a changeover was open (in qualification)."""

    @property
    def job_id(self) -> str | None:
        """The job this part belongs to."""
        return self.job


class FirstArticleStatus(StrEnum):
    """Life of the first-article gate after a changeover."""

    STARTED = "started"
    PASSED = "passed"
    FAILED = "failed"
    SIGNED_OFF = "signed_off"


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstArticleEvent(Event):
    """The first-article gate opened, a part failed it, it passed, or a person signed it off.

    ``needed`` consecutive passes close the gate; ``passes`` is the run of passes so far; ``part`` is the part
    that passed or failed it; ``by`` and ``note`` say who signed off and why.
    """

    stream: ClassVar[Stream] = Stream.CHANGEOVER
    kind: ClassVar[str] = "first_article"
    changeover: str
    job: str
    variant: str
    status: FirstArticleStatus
    needed: int
    passes: int = 0
    part: str | None = None
    by: str = "engine"
    note: str = ""

    @property
    def job_id(self) -> str | None:
        """The job whose parts are qualifying the new setup."""
        return self.job


@dataclass(frozen=True, slots=True, kw_only=True)
class StepKpi:
    """One changeover step's planned against actual seconds.

    ``phase`` is where it ran (external: while the previous job still produced; internal: in the changeover
    proper); ``actual_s`` is None when it did not finish.
    """

    step: str
    device: str | None
    phase: str
    planned_s: float
    actual_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeoverKpi(Event):
    """The SMED figures of one changeover, recorded at the first good part of the new variant (or sign-off).

    Wall-clock instants: ``last_good_ts`` is the last PASS part made before the changeover's internal run
    started (None if the cell made none since it started), ``first_good_ts`` the first PASS part after the
    changeover completed (or the sign-off). Durations in seconds, from the monotonic clock:

    - ``total_s``: ``first_good_ts - last_good_ts`` (None without a last good part);
    - ``external_s``: the time of the external steps run ahead while the previous job still produced: the
      longest chain of their actual durations (each from its start to its confirmation; 0 when none ran
      ahead); ``external_wait_s`` is how long the changeover waited for them because they had not finished
      when the previous job did (downtime, inside ``total_s``);
    - ``internal_s``: the changeover run proper, from its start (after that wait) to its completion;
    - ``first_article_s``: from the changeover's completion to the first good part (or the sign-off), holds
      and failed first articles included.

    ``planned_external_s`` and ``planned_internal_s`` are the critical paths of the two runs as planned;
    ``steps`` lists each step's planned and actual seconds. ``ended_by`` is ``part`` or ``sign_off``.
    """

    stream: ClassVar[Stream] = Stream.CHANGEOVER
    kind: ClassVar[str] = "changeover_kpi"
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
    steps: tuple[StepKpi, ...] = ()
    ended_by: str = "part"

    @property
    def job_id(self) -> str | None:
        """The job the changeover was for."""
        return self.job


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceHealthChanged(Event):
    """A device link changed state."""

    stream: ClassVar[Stream] = Stream.HEALTH
    kind: ClassVar[str] = "device_health"
    device: str
    state: str
    error: str = ""


class Severity(StrEnum):
    """Alarm severity."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlarmAction(StrEnum):
    """What happened to an alarm."""

    RAISED = "raised"
    CLEARED = "cleared"
    ACKNOWLEDGED = "acknowledged"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmEvent(Event):
    """An alarm was raised, cleared or acknowledged.

    ``active`` is whether its condition is still present after this event; ``by`` who raised, cleared or
    acknowledged it; ``acked_by`` who has acknowledged it (None: not yet); ``raised_ts`` when it was raised.
    An event built with ``active=False`` and no action is a clear (the form before actions existed).
    """

    stream: ClassVar[Stream] = Stream.ALARM
    kind: ClassVar[str] = "alarm"
    alarm: str
    severity: Severity
    active: bool
    message: str
    source: str
    action: AlarmAction = AlarmAction.RAISED
    by: str = "engine"
    acked_by: str | None = None
    raised_ts: float | None = None

    def __post_init__(self) -> None:
        if self.action is AlarmAction.RAISED and not self.active:
            object.__setattr__(self, "action", AlarmAction.CLEARED)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorAction(Event):
    """A person (or a client) issued a command through the API; journaled with who sent it."""

    stream: ClassVar[Stream] = Stream.STATE
    kind: ClassVar[str] = "operator_action"
    action: str
    by: str
    args: dict[str, Any] = field(default_factory=dict)
    accepted: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OeeReport(Event):
    """The OEE of one ended window (a shift, the gap between shifts, or a day); see ``cellctl.core.oee``.

    Ratios are None when their denominator is zero; ``downtime`` is seconds by cause and ``downtime_count``
    how often each began (the Pareto).
    """

    stream: ClassVar[Stream] = Stream.OEE
    kind: ClassVar[str] = "oee_report"
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
    downtime: dict[str, float] = field(default_factory=dict)
    downtime_count: dict[str, int] = field(default_factory=dict)


ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    StateChanged,
    JobEvent,
    ChangeoverEvent,
    StepEvent,
    PartProduced,
    DeviceHealthChanged,
    AlarmEvent,
    OperatorAction,
    FirstArticleEvent,
    ChangeoverKpi,
    OeeReport,
)
