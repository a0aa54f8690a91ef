"""Models of the cell file: identity, devices and their tags, broker, store, API and changeover templates."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cellctl.core.devices import ProfileKind

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$", max_length=64)]
"""A name that is safe in an MQTT topic level, a file name and a log key."""


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
    node: str | None = Field(default=None, description="NodeId string, e.g. 'ns=2;s=Robot.Busy'")
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

    @property
    def writable(self) -> bool:
        """True when the controller may write this tag."""
        return self.access in (Access.WRITE, Access.READ_WRITE)

    @model_validator(mode="after")
    def _consistent(self) -> TagConfig:
        if self.datatype is Datatype.STRING and self.table is not None and self.length is None:
            raise ValueError("a string tag in Modbus needs 'length' (registers)")
        if self.table in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT) and self.datatype is not Datatype.BOOL:
            raise ValueError(f"a {self.table.value} holds bits: datatype must be bool")
        if self.bit is not None and self.datatype is not Datatype.BOOL:
            raise ValueError("'bit' needs datatype bool")
        if self.scale == 0:
            raise ValueError("'scale' must not be 0")
        if self.writable and self.table in (ModbusTable.DISCRETE_INPUT, ModbusTable.INPUT_REGISTER):
            raise ValueError(f"a {self.table.value} is read-only: access must be 'r'")
        return self


class Timeouts(Strict):
    """Link timeouts of one device, in seconds."""

    connect_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    request_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class DeviceConfig(Strict):
    """One device: how to reach it, which profile it plays and its tags."""

    driver: Literal["opcua", "modbus"]
    endpoint: str = Field(description="opc.tcp://host:port/path for OPC UA, tcp://host:port for Modbus")
    profile: ProfileKind
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    timeouts: Timeouts = Timeouts()
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.05
    publishing_interval_ms: Annotated[float, Field(ge=0, le=60000)] = 20.0
    tools: dict[Name, Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=dict, description="tool changers: tool name -> tool number"
    )
    tags: dict[Name, TagConfig]

    @model_validator(mode="after")
    def _addresses(self) -> DeviceConfig:
        scheme = "opc.tcp://" if self.driver == "opcua" else "tcp://"
        if not self.endpoint.startswith(scheme):
            raise ValueError(f"endpoint of a {self.driver} device must start with {scheme!r}")
        for name, tag in self.tags.items():
            if self.driver == "opcua" and (tag.node is None or tag.table is not None):
                raise ValueError(f"tag {name!r}: an OPC UA tag needs 'node' and no Modbus 'table'")
            if self.driver == "modbus" and (tag.table is None or tag.address is None or tag.node is not None):
                raise ValueError(f"tag {name!r}: a Modbus tag needs 'table' and 'address' and no 'node'")
        if self.tools and self.profile is not ProfileKind.TOOL_CHANGER:
            raise ValueError("'tools' is only for a tool_changer")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port parsed from the endpoint."""
        rest = self.endpoint.split("://", 1)[1]
        hostport = rest.split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        return host, int(port)


class MqttConfig(Strict):
    """The MQTT broker telemetry goes to."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None
    keepalive_s: Annotated[int, Field(ge=1, le=60)] = 10
    username: str | None = None
    password: str | None = None
    window: Annotated[int, Field(ge=1, le=1000)] = 50


class StoreConfig(Strict):
    """The SQLite file holding the journal and the outbox (relative paths are from the cell file)."""

    path: str = "var/cellctl.db"
    synchronous: Literal["NORMAL", "FULL"] = "FULL"


class ApiConfig(Strict):
    """The control socket (relative paths are from the cell file)."""

    socket: str = "var/cellctl.sock"


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


def _default_templates() -> dict[StepKind, StepTemplate]:
    return {
        StepKind.FIXTURE_UNCLAMP: StepTemplate(expected_s=0.5, timeout_s=10),
        StepKind.TOOL_CHANGE: StepTemplate(expected_s=6.0, timeout_s=30),
        StepKind.FIXTURE_MOVE: StepTemplate(
            expected_s=3.0, timeout_s=30, after=(StepKind.FIXTURE_UNCLAMP,)
        ),
        StepKind.FIXTURE_CLAMP: StepTemplate(expected_s=0.5, timeout_s=10, after=(StepKind.FIXTURE_MOVE,)),
        StepKind.ROBOT_PROGRAM: StepTemplate(expected_s=1.0, timeout_s=20, after=(StepKind.TOOL_CHANGE,)),
        StepKind.SETPOINTS: StepTemplate(expected_s=0.2, timeout_s=5, smed=Smed.EXTERNAL),
    }


class ChangeoverConfig(Strict):
    """Step templates per step kind; kinds left out take the defaults."""

    steps: dict[StepKind, StepTemplate] = Field(default_factory=_default_templates)

    @model_validator(mode="after")
    def _complete_and_acyclic(self) -> ChangeoverConfig:
        merged = {**_default_templates(), **self.steps}
        object.__setattr__(self, "steps", merged)
        # Depth-first search for a cycle in 'after', naming it in the error.
        state: dict[StepKind, int] = {}

        def visit(kind: StepKind, trail: list[StepKind]) -> None:
            if state.get(kind) == 2:
                return
            if state.get(kind) == 1:
                cycle = [*trail[trail.index(kind):], kind]
                raise ValueError("templates form a cycle: " + " -> ".join(k.value for k in cycle))
            state[kind] = 1
            for dep in merged[kind].after:
                visit(dep, [*trail, kind])
            state[kind] = 2

        for kind in merged:
            visit(kind, [])
        return self


class ProductionConfig(Strict):
    """Timeouts of the per-part cycle, in seconds."""

    robot_cycle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    station_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    gauge_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0


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

    def devices_of(self, profile: ProfileKind) -> list[str]:
        """Names of the devices playing ``profile``, in file order."""
        return [name for name, dev in self.devices.items() if dev.profile is profile]
