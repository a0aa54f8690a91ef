"""Models of the cell file: identity, devices and their tags, broker, store, API and changeover templates."""

from __future__ import annotations

from datetime import datetime, tzinfo
from datetime import time as dt_time
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cellctl.core.conditions import Condition
from cellctl.core.devices import Handshake, MethodSignature, ProfileKind, ValueKind
from cellctl.core.events import Severity
from cellctl.core.oee import ChangeoverPolicy, ShiftSpec
from cellctl.schema.noderef import NodeRefError, parse_node_ref

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
"""A name that is safe in an MQTT topic level, a file name and a log key."""

LOCATED_ERROR = "config_value"
"""Error type of :func:`located`; its ``ctx["below"]`` holds the location below the model being checked."""


def located(message: str, *below: str | int) -> PydanticCustomError:
    """A validation error about a field below the model that raises it, so the loader can point at that field.

    A model validator's error is located at the model; ``below`` (appended by the loader) names the key inside
    it that is wrong, e.g. ``located("...", "tags", "busy", "node")`` from a device.
    """
    return PydanticCustomError(LOCATED_ERROR, "{reason}", {"reason": message, "below": below})


class Strict(BaseModel):
    """Base for config models: unknown keys are errors, so a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(Strict):
    """Where the cell sits in the ISA-95 hierarchy; the MQTT topic root is built from it."""

    enterprise: Name
    site: Name
    area: Name
    line: Name
    cell: Name


class Datatype(StrEnum):
    """Tag datatypes on the wire."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


INT_TYPES = frozenset({Datatype.INT16, Datatype.UINT16, Datatype.INT32, Datatype.UINT32})
FLOAT_TYPES = frozenset({Datatype.FLOAT32, Datatype.FLOAT64})
_REGISTERS: dict[Datatype, int] = {
    Datatype.BOOL: 1,
    Datatype.INT16: 1,
    Datatype.UINT16: 1,
    Datatype.INT32: 2,
    Datatype.UINT32: 2,
    Datatype.FLOAT32: 2,
    Datatype.FLOAT64: 4,
}


def register_count(datatype: Datatype, length: int | None = None) -> int:
    """Modbus registers one value of ``datatype`` occupies (``length`` of them for a string).

    Raises ``ValueError`` for a string without a length of at least 1.
    """
    if datatype is Datatype.STRING:
        if length is None or length < 1:
            raise ValueError("a string needs a length of at least 1 register")
        return length
    return _REGISTERS[datatype]


class Access(StrEnum):
    """Who may write a tag: the controller writes only tags declared ``w`` or ``rw``."""

    READ = "r"
    WRITE = "w"
    READ_WRITE = "rw"


class ModbusTable(StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"


class Order(StrEnum):
    """Word or byte order of a multi-register value."""

    BIG = "big"
    LITTLE = "little"


class TagConfig(Strict):
    """One tag: datatype, access, units, and its address (``node`` for OPC UA, ``table``/``address`` for
    Modbus)."""

    datatype: Datatype
    access: Access = Access.READ
    units: str = ""
    description: str = ""
    # OPC UA
    node: str | None = Field(
        default=None,
        description="node reference: 'ns=2;s=Robot1.Busy', 'nsu=<namespace uri>;s=Robot1.Busy' or a browse "
        "path '/Objects/<namespace uri>Robot1/<namespace uri>Busy' (docs/integrator.md)",
    )
    # Modbus
    table: ModbusTable | None = None
    address: Annotated[int, Field(ge=0, le=65535)] | None = None
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    length: Annotated[int, Field(ge=1, le=123)] | None = Field(
        default=None, description="registers of a string tag"
    )
    bit: Annotated[int, Field(ge=0, le=15)] | None = Field(default=None, description="bit in a register")
    scale: float = 1.0
    offset: float = 0.0
    poll_group: Name | None = Field(
        default=None, description="Modbus: a key of the device's poll_groups (default: poll_interval_s)"
    )
    verify: bool = Field(default=False, description="Modbus: read back after each write and compare")

    @property
    def writable(self) -> bool:
        """True when the controller may write this tag."""
        return self.access in (Access.WRITE, Access.READ_WRITE)

    @field_validator("node")
    @classmethod
    def _node_reference(cls, node: str | None) -> str | None:
        if node is not None:
            try:
                parse_node_ref(node)
            except NodeRefError as exc:
                raise ValueError(str(exc)) from None
        return node

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, scale: float) -> float:
        if scale == 0:
            raise ValueError("'scale' must not be 0")
        return scale

    @model_validator(mode="after")
    def _consistent(self) -> TagConfig:
        if self.datatype is Datatype.STRING and self.table is not None and self.length is None:
            raise located("a string tag in Modbus needs 'length' (registers)", "length")
        if (
            self.table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)
            and self.datatype is not Datatype.BOOL
        ):
            raise located(f"a {self.table.value} holds bits: datatype must be bool", "datatype")
        if self.bit is not None and self.datatype is not Datatype.BOOL:
            raise located("'bit' needs datatype bool", "bit")
        if self.bit is not None and self.table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT):
            raise located(f"'bit' selects a bit in a register; a {self.table.value} is a bit already", "bit")
        if self.writable and self.table in (ModbusTable.DISCRETE_INPUT, ModbusTable.INPUT_REGISTER):
            table = self.table.value.replace("_", " ")
            raise located(f"{table}s are read-only: access must be 'r'", "access")
        if self.verify and self.access is not Access.READ_WRITE:
            raise located("'verify' reads the tag back after a write: access must be 'rw'", "verify")
        return self


def value_kind(datatype: Datatype) -> ValueKind:
    """What kind of value (bool, int, float, string) a datatype carries, as profiles see it."""
    if datatype is Datatype.BOOL:
        return ValueKind.BOOL
    if datatype is Datatype.STRING:
        return ValueKind.STRING
    return ValueKind.INT if datatype in INT_TYPES else ValueKind.FLOAT


class MethodConfig(Strict):
    """One OPC UA method the controller calls: the object it is called on, the method, and the datatypes of
    its input and output arguments (the call sends and expects exactly these)."""

    object: str = Field(description="node reference of the object the method is called on")
    method: str = Field(description="node reference of the method")
    inputs: tuple[Datatype, ...] = ()
    outputs: tuple[Datatype, ...] = ()

    @field_validator("object", "method")
    @classmethod
    def _node_reference(cls, node: str) -> str:
        try:
            parse_node_ref(node)
        except NodeRefError as exc:
            raise ValueError(str(exc)) from None
        return node

    @property
    def signature(self) -> MethodSignature:
        """The argument kinds, as a profile needs them."""
        return MethodSignature(
            tuple(value_kind(d) for d in self.inputs), tuple(value_kind(d) for d in self.outputs)
        )


class SecurityPolicy(StrEnum):
    """OPC UA security policies cellctl connects with (the deprecated Basic128Rsa15 and Basic256 are not)."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class SecurityMode(StrEnum):
    """OPC UA message security mode."""

    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaSecurity(Strict):
    """How an OPC UA session is secured: policy and mode, cellctl's certificate and key, the folder of trusted
    server certificates, and the user (relative paths are from the cell file)."""

    policy: SecurityPolicy
    mode: SecurityMode | None = Field(
        default=None, description="default: SignAndEncrypt with a policy, None with policy None"
    )
    certificate: str | None = Field(default=None, description="cellctl's certificate (.der or .pem)")
    private_key: str | None = Field(default=None, description="its private key (.pem or .der)")
    trust_dir: str | None = Field(
        default=None, description="folder of trusted server (or CA) certificates (.der or .pem)"
    )
    username: str | None = None
    password: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        secured = self.policy is not SecurityPolicy.NONE
        if self.mode is None:
            object.__setattr__(self, "mode", SecurityMode.SIGN_AND_ENCRYPT if secured else SecurityMode.NONE)
        elif secured and self.mode is SecurityMode.NONE:
            raise located(f"policy {self.policy.value} needs mode Sign or SignAndEncrypt", "mode")
        elif not secured and self.mode is not SecurityMode.NONE:
            raise located(f"mode {self.mode.value} needs a policy other than None", "mode")
        if secured:
            for key in ("certificate", "private_key", "trust_dir"):
                if getattr(self, key) is None:
                    raise located(f"policy {self.policy.value} needs {key!r}", key)
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise located(f"'username' and 'password' go together: {missing!r} is missing", missing)
        return self

    @property
    def message_mode(self) -> SecurityMode:
        """The mode, its default filled in."""
        assert self.mode is not None  # set by the validator
        return self.mode


class Timeouts(Strict):
    """Link timeouts of one device, in seconds."""

    connect_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    request_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class PollGroup(Strict):
    """A set of Modbus tags polled together at their own rate."""

    interval_s: Annotated[float, Field(gt=0, le=3600)]


class DeviceConfig(Strict):
    """One device: how to reach it, which profile it plays and its tags."""

    driver: Literal["opcua", "modbus"]
    endpoint: str = Field(description="opc.tcp://host:port/path for OPC UA, tcp://host:port for Modbus")
    profile: ProfileKind
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    timeouts: Timeouts = Timeouts()
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.05
    poll_groups: dict[Name, PollGroup] = Field(
        default_factory=dict, description="Modbus: named poll rates that tags join with 'poll_group'"
    )
    publishing_interval_ms: Annotated[float, Field(ge=0, le=60000)] = 20.0
    tools: dict[Name, Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=dict, description="tool changers: tool name -> tool number"
    )
    handshake: Handshake = Field(
        default=Handshake.SIGNAL, description="robots: 'signal' (program/start/busy/done tags) or 'method'"
    )
    methods: dict[Name, MethodConfig] = Field(
        default_factory=dict, description="OPC UA devices: methods the controller calls, by name"
    )
    security: OpcUaSecurity | None = Field(
        default=None, description="OPC UA devices: session security; left out means policy None"
    )
    tags: dict[Name, TagConfig]

    # Field validators see the fields declared before theirs in info.data, so each error sits on its field.
    @field_validator("endpoint")
    @classmethod
    def _endpoint_scheme(cls, endpoint: str, info: ValidationInfo) -> str:
        driver = info.data.get("driver")
        if driver is None:
            return endpoint  # the driver is wrong already; that error says so
        scheme = "opc.tcp://" if driver == "opcua" else "tcp://"
        if not endpoint.startswith(scheme):
            raise ValueError(f"endpoint of a {driver} device must start with {scheme!r}")
        hostport = endpoint[len(scheme) :].split("/", 1)[0]
        host, colon, port = hostport.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"endpoint must be {scheme}host:port with a port in 1..65535, not {endpoint!r}")
        return endpoint

    @field_validator("tools")
    @classmethod
    def _tools_on_tool_changer(cls, tools: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        profile = info.data.get("profile")
        if tools and profile is not None and profile is not ProfileKind.TOOL_CHANGER:
            raise ValueError("'tools' is only for a tool_changer")
        if len(set(tools.values())) != len(tools):
            raise ValueError("two tools share one tool number")
        return tools

    @field_validator("handshake")
    @classmethod
    def _handshake_of_robot(cls, handshake: Handshake, info: ValidationInfo) -> Handshake:
        profile = info.data.get("profile")
        if profile is not None and profile is not ProfileKind.ROBOT:
            raise ValueError("'handshake' is only for a robot")
        if handshake is Handshake.METHOD and info.data.get("driver") == "modbus":
            raise ValueError("the method handshake calls methods, which only OPC UA devices have")
        return handshake

    @field_validator("methods")
    @classmethod
    def _methods_on_opcua(
        cls, methods: dict[str, MethodConfig], info: ValidationInfo
    ) -> dict[str, MethodConfig]:
        if methods and info.data.get("driver") == "modbus":
            raise ValueError("'methods' are only for OPC UA devices; a Modbus device has none")
        return methods

    @property
    def method_signatures(self) -> dict[str, MethodSignature]:
        """Argument kinds of each configured method, by name."""
        return {name: method.signature for name, method in self.methods.items()}

    @model_validator(mode="after")
    def _addresses(self) -> DeviceConfig:
        for name, tag in self.tags.items():
            if self.driver == "opcua":
                if tag.node is None:
                    raise located(f"tag {name!r}: an OPC UA tag needs 'node'", "tags", name, "node")
                if tag.table is not None or tag.address is not None:
                    raise located(f"tag {name!r}: an OPC UA tag has no Modbus address", "tags", name)
            else:
                for key in ("table", "address"):
                    if getattr(tag, key) is None:
                        raise located(f"tag {name!r}: a Modbus tag needs {key!r}", "tags", name, key)
                if tag.node is not None:
                    raise located(f"tag {name!r}: a Modbus tag has no OPC UA 'node'", "tags", name, "node")
        if self.security is not None and self.driver != "opcua":
            raise located("'security' is for OPC UA devices", "security")
        return self

    @model_validator(mode="after")
    def _poll_groups(self) -> DeviceConfig:
        if self.driver != "modbus":
            if self.poll_groups:
                raise located("'poll_groups' are for Modbus devices", "poll_groups")
            for name, tag in self.tags.items():
                for key in ("poll_group", "verify"):
                    if getattr(tag, key):
                        raise located(f"tag {name!r}: {key!r} is for Modbus tags", "tags", name, key)
            return self
        for name, tag in self.tags.items():
            if tag.poll_group is not None and tag.poll_group not in self.poll_groups:
                known = ", ".join(self.poll_groups) or "none"
                raise located(
                    f"tag {name!r}: unknown poll group {tag.poll_group!r} (poll_groups: {known})",
                    "tags",
                    name,
                    "poll_group",
                )
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port parsed from the endpoint."""
        rest = self.endpoint.split("://", 1)[1]
        hostport = rest.split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        return host, int(port)


SPARKPLUG_ID_PATTERN = r"^[^/+#\x00]+$"
SparkplugId = Annotated[str, Field(pattern=SPARKPLUG_ID_PATTERN, max_length=128)]
"""A Sparkplug group, edge node or host id: one MQTT topic level, so never '/', '+', '#' (spec 3.0, 4.1)."""


class SparkplugConfig(Strict):
    """Sparkplug B ids; a missing group or edge node id is derived from the cell's identity."""

    group_id: SparkplugId | None = Field(
        default=None, description="left out: enterprise:site:area:line of the identity"
    )
    edge_node_id: SparkplugId | None = Field(default=None, description="left out: the identity's cell")
    primary_host_id: SparkplugId | None = Field(
        default=None,
        description="a host application whose STATE must say online before births go out (left out: none)",
    )

    def group_for(self, identity: Identity) -> str:
        """The group id in use: configured, or ``enterprise:site:area:line``."""
        return self.group_id or ":".join((identity.enterprise, identity.site, identity.area, identity.line))

    def edge_node_for(self, identity: Identity) -> str:
        """The edge node id in use: configured, or the cell's name."""
        return self.edge_node_id or identity.cell


class MqttTls(Strict):
    """TLS to the broker (relative paths are from the cell file).

    The broker's certificate chain and host name are ALWAYS verified; there is deliberately no switch to turn
    that off: an unverified TLS link encrypts traffic to whoever answers, so a spoofed broker would collect
    every plant record and the login with it. For a broker with a self-made certificate, name its CA here.
    """

    ca_file: str | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the broker's certificate; left out: the system's CAs.",
    )
    cert_file: str | None = Field(
        default=None, description="PEM client certificate, for a broker that requires one (with key_file)."
    )
    key_file: str | None = Field(default=None, description="PEM private key of cert_file (keep it mode 600).")
    key_password: str | None = Field(default=None, description="Password of an encrypted key_file.")
    server_name: str | None = Field(
        default=None,
        description="The name the broker's certificate must carry, when it differs from host (e.g. host is "
        "an IP address and the certificate names the broker's DNS name).",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise located("a client certificate needs both cert_file and key_file", missing)
        if self.key_password is not None and self.key_file is None:
            raise located("key_password without key_file", "key_password")
        return self


MAX_KEEPALIVE_S = 10
"""Upper bound of ``mqtt.keepalive_s``: a silent link is seen within twice the keepalive, so within 20 s."""


_TOPIC_FORBIDDEN = frozenset("+#\x00")


class MqttCommandsConfig(Strict):
    """Orders from a plant MES over MQTT: requests on ``<root>/cmd/order``, replies on ``<root>/cmd/reply``.

    ``<root>`` is the cell's topic root (its identity); see ``cellctl.api.mqtt_orders``.
    """

    enabled: bool = False
    by: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        default="mes",
        description="Name of the MES in the journal: its actions are recorded as by 'mqtt:<by>'.",
    )
    reply_prefixes: tuple[Annotated[str, Field(min_length=1, max_length=200)], ...] = Field(
        default=(),
        description="Topics a request's reply_to may lie under, besides <root>/cmd/reply (no wildcards).",
    )
    remember_s: Annotated[float, Field(ge=60, le=90 * 86400)] = Field(
        default=7 * 86400,
        description="How long a command id is remembered with its reply; a repeat within it is not run.",
    )
    remember_max: Annotated[int, Field(ge=100, le=1_000_000)] = Field(
        default=10_000, description="At most this many command ids are remembered (the newest)."
    )

    @model_validator(mode="after")
    def _plain_prefixes(self) -> MqttCommandsConfig:
        for k, prefix in enumerate(self.reply_prefixes):
            if _TOPIC_FORBIDDEN.intersection(prefix) or prefix.startswith("$") or prefix.endswith("/"):
                raise located(
                    f"{prefix!r} is not a topic prefix (no '+', '#', NUL, leading '$' or trailing '/')",
                    "reply_prefixes",
                    k,
                )
        return self


class MqttConfig(Strict):
    """The MQTT broker telemetry goes to, and how the controller authenticates to it."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=1883, description="1883 is plain MQTT; a TLS listener is usually 8883."
    )
    client_id: str | None = None
    keepalive_s: Annotated[int, Field(ge=1, le=MAX_KEEPALIVE_S)] = Field(
        default=MAX_KEEPALIVE_S,
        description="MQTT keepalive; a link silent for twice this long is dropped and reconnected.",
    )
    username: str | None = None
    password: str | None = Field(
        default=None, description="Inline password (cellctl check warns: prefer password_file)."
    )
    password_file: str | None = Field(
        default=None,
        description="File holding the password (first line; relative to the cell file), read at start; "
        "refused when others may read it.",
    )
    tls: MqttTls | None = None
    window: Annotated[int, Field(ge=1, le=1000)] = 50
    encoding: Literal["uns-json", "sparkplug-b"] = Field(
        default="uns-json",
        description="uns-json: JSON envelopes on a Unified Namespace; sparkplug-b: Sparkplug B 3.0",
    )
    sparkplug: SparkplugConfig = SparkplugConfig()
    replay_rate: Annotated[float, Field(gt=0, le=1_000_000)] = 5000.0
    """Messages per second of backlog (queued before the session came up) replayed after a reconnect."""
    replay_share: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Share of ``window`` that backlog may hold in flight; the rest stays free for live messages."""

    commands: MqttCommandsConfig = MqttCommandsConfig()
    refused_backoff_s: Annotated[float, Field(ge=1, le=3600)] = Field(
        default=30.0,
        description="Retry interval after the broker refused the login or a certificate (a network outage "
        "retries faster, up to 5 s apart).",
    )
    outage_alarm_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=30.0,
        description="Raise the 'mqtt' alarm when the broker link has been down this long (a refusal alarms "
        "at once).",
    )

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise located("give password or password_file, not both", "password_file")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise located("a password needs a username", "username")
        return self


class StreamClass(StrEnum):
    """How the outbox treats a telemetry stream at its bound: records are never dropped, telemetry may be."""

    RECORDS = "records"
    TELEMETRY = "telemetry"


DEFAULT_STREAM_CLASSES: dict[str, StreamClass] = {
    "job": StreamClass.RECORDS,
    "changeover": StreamClass.RECORDS,
    "part": StreamClass.RECORDS,
    "quality": StreamClass.RECORDS,
    "alarm": StreamClass.RECORDS,
    "oee": StreamClass.RECORDS,
    "state": StreamClass.TELEMETRY,
    "health": StreamClass.TELEMETRY,
}
"""The class of every telemetry stream (core/events.py ``Stream``) unless ``store.streams`` says otherwise."""

Synchronous = Literal["NORMAL", "FULL", "EXTRA"]


class OutboxLimits(Strict):
    """The outbox's bound: rows and bytes (topic + JSON body) waiting for the broker."""

    max_rows: Annotated[int, Field(ge=100)] = 1_000_000
    max_bytes: Annotated[int, Field(ge=65_536)] = 512 * 1024 * 1024


class Durability(Strict):
    """SQLite ``synchronous`` of a transaction by class: FULL survives a power cut, NORMAL an app crash."""

    records: Synchronous = "FULL"
    telemetry: Synchronous = "NORMAL"


class StoreRetry(Strict):
    """How often a failing store is tried again (``interval_s`` doubling up to ``max_interval_s``)."""

    interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_interval_s: Annotated[float, Field(gt=0, le=600)] = 10.0

    @model_validator(mode="after")
    def _ordered(self) -> StoreRetry:
        if self.max_interval_s < self.interval_s:
            raise located("max_interval_s must not be less than interval_s", "max_interval_s")
        return self


class StoreConfig(Strict):
    """The SQLite file holding the journal and the outbox (relative paths are from the cell file).

    ``synchronous`` (older key) sets the durability of both classes when ``durability`` is not given.
    """

    path: str = "var/cellctl.db"
    synchronous: Synchronous = "FULL"
    durability: Durability = Durability()
    outbox: OutboxLimits = OutboxLimits()
    streams: dict[str, StreamClass] = Field(default_factory=dict)
    """Overrides of ``DEFAULT_STREAM_CLASSES`` by stream name."""
    retry: StoreRetry = StoreRetry()

    @field_validator("streams")
    @classmethod
    def _known_streams(cls, value: dict[str, StreamClass]) -> dict[str, StreamClass]:
        for name in value:
            if name not in DEFAULT_STREAM_CLASSES:
                known = ", ".join(DEFAULT_STREAM_CLASSES)
                raise located(f"unknown stream {name!r} (streams: {known})", name)
        return value

    def stream_classes(self) -> dict[str, StreamClass]:
        """Every stream's class: the defaults with this file's overrides."""
        return {**DEFAULT_STREAM_CLASSES, **self.streams}

    def synchronous_for(self) -> tuple[Synchronous, Synchronous]:
        """(records, telemetry) ``synchronous`` modes: ``durability``, else the older ``synchronous`` key for
        both when only it was written."""
        if "durability" not in self.model_fields_set and "synchronous" in self.model_fields_set:
            return self.synchronous, self.synchronous
        return self.durability.records, self.durability.telemetry


RoleName = Literal["viewer", "operator", "integrator"]
"""A control socket role, lowest first: viewer (reads), operator (runs the cell), integrator (modes)."""


class ApiRolesConfig(Strict):
    """Who may do what on the control socket.

    A peer's role: its user in ``users``, else the highest role of any group its user is in, else ``default``.
    The controller's own user and root are always integrators.
    """

    groups: dict[Annotated[str, Field(min_length=1, max_length=64)], RoleName] = Field(
        default_factory=dict,
        description="group name -> role of its members, e.g. cellctl-operators: operator",
    )
    users: dict[Annotated[str, Field(min_length=1, max_length=64)], RoleName] = Field(
        default_factory=dict, description="user name -> role; wins over the groups"
    )
    default: RoleName = Field(
        default="viewer", description="the role of anyone else who can open the socket (its mode is 0660)"
    )


class ApiConfig(Strict):
    """The control socket (relative paths are from the cell file)."""

    socket: str = "var/cellctl.sock"
    group: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None,
        description="the socket file's group (set before listening, mode 0660): the operators' group; "
        "the controller refuses to start when the host has no such group",
    )
    roles: ApiRolesConfig = ApiRolesConfig()


class StepKind(StrEnum):
    """Step templates the planner instantiates for each setting that differs."""

    TOOL_CHANGE = "tool_change"
    FIXTURE_UNCLAMP = "fixture_unclamp"
    FIXTURE_MOVE = "fixture_move"
    FIXTURE_CLAMP = "fixture_clamp"
    ROBOT_PROGRAM = "robot_program"
    SETPOINTS = "setpoints"


class Smed(StrEnum):
    """SMED class of a step: internal work needs the cell stopped, external work does not."""

    INTERNAL = "internal"
    EXTERNAL = "external"


class StepTemplate(Strict):
    """How a kind of changeover step runs: expected duration, timeout, SMED class and what must come first."""

    expected_s: Annotated[float, Field(ge=0, le=3600)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    smed: Smed = Smed.INTERNAL
    after: tuple[StepKind, ...] = ()
    retries: Annotated[int, Field(ge=0, le=5)] = 0
    interruptible: bool = Field(
        default=True,
        description="Hold, Stop and Suspend cancel the step when it is running; left out: false for "
        "tool_change, fixture_unclamp and fixture_clamp (cut half way they leave a tool half coupled or a "
        "part half clamped, so they finish), true for the others. Abort cancels every step.",
    )


NOT_INTERRUPTIBLE: frozenset[StepKind] = frozenset(
    {StepKind.TOOL_CHANGE, StepKind.FIXTURE_UNCLAMP, StepKind.FIXTURE_CLAMP}
)
"""Step kinds a Hold lets finish unless the cell file says otherwise: cut half way, they leave a tool half
coupled or clamps half closed; a move, a program load or a setpoint write can stop anywhere."""


def _default_templates() -> dict[StepKind, StepTemplate]:
    return {
        StepKind.FIXTURE_UNCLAMP: StepTemplate(expected_s=0.5, timeout_s=10, interruptible=False),
        StepKind.TOOL_CHANGE: StepTemplate(expected_s=6.0, timeout_s=30, interruptible=False),
        StepKind.FIXTURE_MOVE: StepTemplate(expected_s=3.0, timeout_s=30, after=(StepKind.FIXTURE_UNCLAMP,)),
        StepKind.FIXTURE_CLAMP: StepTemplate(
            expected_s=0.5, timeout_s=10, after=(StepKind.FIXTURE_MOVE,), interruptible=False
        ),
        StepKind.ROBOT_PROGRAM: StepTemplate(expected_s=1.0, timeout_s=20, after=(StepKind.TOOL_CHANGE,)),
        StepKind.SETPOINTS: StepTemplate(expected_s=0.2, timeout_s=5, smed=Smed.EXTERNAL),
    }


class ChangeoverConfig(Strict):
    """Step templates per step kind (kinds left out take the defaults) and the finalizers' deadline."""

    steps: dict[StepKind, StepTemplate] = Field(default_factory=_default_templates)
    abort_deadline_s: Annotated[float, Field(gt=0, le=10)] = Field(
        default=2.0,
        description="seconds the finalizers of interrupted steps may take (withdrawing a request, stopping "
        "a move) on Abort, Hold, Stop or Suspend; a finalizer still running then is cut and recorded",
    )

    @model_validator(mode="before")
    @classmethod
    def _interruptible_by_kind(cls, data: object) -> object:
        # A template that leaves 'interruptible' out takes its kind's default, not the field's.
        if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
            return data
        steps: dict[object, object] = {}
        for key, template in data["steps"].items():
            known = isinstance(key, str) and key in {k.value for k in NOT_INTERRUPTIBLE}
            if isinstance(template, dict) and "interruptible" not in template and known:
                template = {**template, "interruptible": False}
            steps[key] = template
        return {**data, "steps": steps}

    @model_validator(mode="after")
    def _complete_and_acyclic(self) -> ChangeoverConfig:
        given = set(self.steps)
        defaults = _default_templates()
        merged = {**defaults, **self.steps}
        object.__setattr__(self, "steps", merged)
        # Depth-first search for a cycle in 'after', naming it in the error.
        state: dict[StepKind, int] = {}

        def visit(kind: StepKind, trail: list[StepKind]) -> None:
            if state.get(kind) == 2:
                return
            if state.get(kind) == 1:
                cycle = [*trail[trail.index(kind) :], kind]
                # The defaults are acyclic, so the cycle runs through a template the file gives; point at
                # one whose 'after' differs from its default, as that is most likely the edit that closed it.
                culprit = next(
                    (k for k in cycle if k in given and merged[k].after != defaults[k].after),
                    next((k for k in cycle if k in given), kind),
                )
                raise located(
                    "templates form a cycle: " + " -> ".join(k.value for k in cycle),
                    "steps",
                    culprit.value,
                    "after",
                )
            state[kind] = 1
            for dep in merged[kind].after:
                visit(dep, [*trail, kind])
            state[kind] = 2

        for kind in merged:
            visit(kind, [])
        return self


class ProductionConfig(Strict):
    """Timeouts of the per-part cycle, in seconds, and the part's accept/reject outputs."""

    robot_cycle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    station_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    gauge_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    accept_output: str | None = Field(
        default=None,
        description="device.tag (bool, writable) set true for a part that passed, false otherwise; written "
        "only once the part's record is durable",
    )
    reject_output: str | None = Field(
        default=None,
        description="device.tag (bool, writable) set true for a part that failed or is invalid, false "
        "otherwise; written only once the part's record is durable",
    )


_CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class ShiftConfig(Strict):
    """A named shift in local time, ``"HH:MM"``; an end at or before the start runs past midnight."""

    name: Name
    start: Annotated[str, Field(pattern=_CLOCK_PATTERN)]
    end: Annotated[str, Field(pattern=_CLOCK_PATTERN)]


class OeeConfig(Strict):
    """How OEE is counted: the changeover policy, the shifts (reports and live figures per shift) and their
    time zone (an IANA name; left out: the controller's local time)."""

    changeover: ChangeoverPolicy = Field(
        default=ChangeoverPolicy.PLANNED_DOWNTIME,
        description="planned_downtime: changeover time is left out of planned time; availability_loss: it "
        "counts as downtime",
    )
    shifts: tuple[ShiftConfig, ...] = ()
    timezone: str | None = None

    @model_validator(mode="after")
    def _shifts_and_zone(self) -> OeeConfig:
        names = [s.name for s in self.shifts]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise located(f"shift {name!r} is named twice", "shifts", i, "name")
        for i, shift in enumerate(self.shifts):
            if shift.start == shift.end:
                raise located(f"shift {shift.name!r} starts and ends at {shift.start}", "shifts", i, "end")
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise located(f"unknown time zone {self.timezone!r}", "timezone") from None
        return self

    def shift_specs(self) -> tuple[ShiftSpec, ...]:
        """The shifts as the OEE core takes them."""
        return tuple(
            ShiftSpec(s.name, dt_time.fromisoformat(s.start), dt_time.fromisoformat(s.end))
            for s in self.shifts
        )

    def zone(self) -> tzinfo:
        """The shifts' time zone: the configured one, else the controller's local zone."""
        if self.timezone is not None:
            return ZoneInfo(self.timezone)
        local = datetime.now().astimezone().tzinfo
        assert local is not None  # astimezone() always sets one
        return local


class InterlockAction(StrEnum):
    """The PackML command an interlock issues when its condition holds."""

    SUSPEND = "suspend"
    HOLD = "hold"
    STOP = "stop"
    ABORT = "abort"


def _condition(text: str) -> str:
    Condition.parse(text)  # ValueError naming what is wrong
    return text


ConditionText = Annotated[
    str,
    Field(
        description="'device.tag <op> literal', <op> one of == != < <= > >=; literal true/false, a number "
        "or a quoted string"
    ),
]


class InterlockConfig(Strict):
    """A condition on a tag that suspends, holds, stops or aborts the cell once it held for ``settle_s``.

    A tag whose reading is not GOOD counts as meeting ``when`` (the unsafe side). Only a suspend may resume by
    itself, when ``resume_when`` has held for ``settle_s``; after a hold, stop or abort a person decides.
    """

    when: ConditionText
    action: InterlockAction
    settle_s: Annotated[float, Field(ge=0, le=60)] = 0.0
    resume_when: ConditionText | None = None
    severity: Severity = Severity.WARNING
    message: str = ""

    @field_validator("when", "resume_when")
    @classmethod
    def _parsed(cls, text: str | None) -> str | None:
        return None if text is None else _condition(text)

    @model_validator(mode="after")
    def _resume_only_after_suspend(self) -> InterlockConfig:
        if self.resume_when is not None and self.action is not InterlockAction.SUSPEND:
            raise located(
                f"'resume_when' is only for action 'suspend': after {self.action.value!r} a person decides",
                "resume_when",
            )
        return self

    @property
    def condition(self) -> Condition:
        """``when``, parsed."""
        return Condition.parse(self.when)

    @property
    def resume(self) -> Condition | None:
        """``resume_when``, parsed."""
        return None if self.resume_when is None else Condition.parse(self.resume_when)


class EstopConfig(Strict):
    """The e-stop input the cell watches: on its edge, Aborting then Aborted and no command leaves."""

    tag: str = Field(description="'device.tag' of the e-stop input (from the safety PLC)")
    active_when: bool | int = Field(
        default=False,
        description="the value that means the e-stop is pressed (false for a healthy-high input)",
    )

    @field_validator("tag")
    @classmethod
    def _qualified(cls, tag: str) -> str:
        device, dot, name = tag.partition(".")
        if not dot or not device or not name:
            raise ValueError(f"{tag!r} is not 'device.tag'")
        return tag

    @property
    def device(self) -> str:
        """The device the input is on."""
        return self.tag.partition(".")[0]

    @property
    def tag_name(self) -> str:
        """The tag's name on its device."""
        return self.tag.partition(".")[2]


def _mistyped(condition: Condition, datatype: Datatype) -> str | None:
    """Why ``condition`` cannot compare a tag of ``datatype`` with its literal (None: it can)."""
    literal = condition.literal
    if isinstance(literal, bool):
        fits = datatype is Datatype.BOOL
    elif isinstance(literal, str):
        fits = datatype is Datatype.STRING
    else:
        fits = datatype in INT_TYPES or datatype in FLOAT_TYPES
    if fits:
        return None
    return f"{condition.qualified_tag} is {datatype.value}: it cannot be compared with {literal!r}"


class CellConfig(Strict):
    """A cell file: everything cellctl needs to run one work cell."""

    schema_version: Literal[1] = 1
    identity: Identity
    devices: dict[Name, DeviceConfig]
    mqtt: MqttConfig = MqttConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    recipes_dir: str = "recipes"
    changeover: ChangeoverConfig = ChangeoverConfig()
    production: ProductionConfig = ProductionConfig()
    oee: OeeConfig = OeeConfig()
    interlocks: dict[Name, InterlockConfig] = Field(default_factory=dict)
    estop: EstopConfig | None = None

    @model_validator(mode="after")
    def _sort_outputs_exist(self) -> CellConfig:
        # An accept/reject output must be a writable bool tag of a device of this cell.
        for key in ("accept_output", "reject_output"):
            ref = getattr(self.production, key)
            if ref is None:
                continue
            device_name, _, tag_name = ref.partition(".")
            device = self.devices.get(device_name)
            if device is None or tag_name not in device.tags:
                raise located(f"{ref!r} is not a device.tag of this cell", "production", key)
            tag = device.tags[tag_name]
            if tag.access is Access.READ or tag.datatype is not Datatype.BOOL:
                raise located(
                    f"{ref!r} must be a writable bool tag (access w or rw, datatype bool)", "production", key
                )
        return self

    @model_validator(mode="after")
    def _safety_tags_exist(self) -> CellConfig:
        def missing(device: str, tag: str) -> str | None:
            if device not in self.devices:
                return f"unknown device {device!r} (devices: {', '.join(self.devices)})"
            if tag not in self.devices[device].tags:
                return f"device {device!r} has no tag {tag!r} (tags: {', '.join(self.devices[device].tags)})"
            return None

        for name, interlock in self.interlocks.items():
            for key in ("when", "resume_when"):
                condition = interlock.condition if key == "when" else interlock.resume
                if condition is None:
                    continue
                why = missing(condition.device, condition.tag) or _mistyped(
                    condition, self.devices[condition.device].tags[condition.tag].datatype
                )
                if why is not None:
                    raise located(f"interlock {name!r}: {why}", "interlocks", name, key)
        if self.estop is not None:
            why = missing(self.estop.device, self.estop.tag_name)
            if why is not None:
                raise located(f"e-stop: {why}", "estop", "tag")
        return self

    def devices_of(self, profile: ProfileKind) -> list[str]:
        """Names of the devices playing ``profile``, in file order."""
        return [name for name, dev in self.devices.items() if dev.profile is profile]
