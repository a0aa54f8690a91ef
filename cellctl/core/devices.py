"""Equipment profiles: the typed tag slots each kind of device must bind, and their handshakes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ProfileKind(StrEnum):
    """Kinds of equipment a cell device can be."""

    ROBOT = "robot"
    TOOL_CHANGER = "tool_changer"
    FIXTURE = "fixture"
    PRESS = "press"
    GAUGE = "gauge"


class ValueKind(StrEnum):
    """What a slot needs from its tag's datatype."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"


@dataclass(frozen=True, slots=True)
class Slot:
    """A tag a profile needs: its name in the device's tag map, the value kind and whether it is written."""

    name: str
    kind: ValueKind
    writable: bool
    doc: str


PROFILE_SLOTS: dict[ProfileKind, tuple[Slot, ...]] = {
    ProfileKind.ROBOT: (
        Slot("program", ValueKind.INT, True, "program number requested by the controller"),
        Slot("active_program", ValueKind.INT, False, "program number the robot has loaded"),
        Slot("start", ValueKind.BOOL, True, "cycle start, held high until done"),
        Slot("busy", ValueKind.BOOL, False, "robot is running a cycle"),
        Slot("done", ValueKind.BOOL, False, "cycle finished; cleared when start drops"),
        Slot("fault_code", ValueKind.INT, False, "0 when healthy"),
        Slot("cycle_count", ValueKind.INT, False, "cycles completed since power-on"),
    ),
    ProfileKind.TOOL_CHANGER: (
        Slot("tool_request", ValueKind.INT, True, "tool number to mount"),
        Slot("tool_current", ValueKind.INT, False, "tool number mounted (0 for none)"),
        Slot("moving", ValueKind.BOOL, False, "a tool change is in progress"),
    ),
    ProfileKind.FIXTURE: (
        Slot("clamp", ValueKind.BOOL, True, "clamp command: true closes"),
        Slot("clamped", ValueKind.BOOL, False, "clamps confirmed closed"),
        Slot("in_position", ValueKind.BOOL, False, "every axis has reached its setpoint"),
    ),
    ProfileKind.PRESS: (
        Slot("start", ValueKind.BOOL, True, "station cycle start, held high until done"),
        Slot("busy", ValueKind.BOOL, False, "station is cycling"),
        Slot("done", ValueKind.BOOL, False, "station cycle finished; cleared when start drops"),
    ),
    ProfileKind.GAUGE: (
        Slot("trigger", ValueKind.BOOL, True, "measure request, held high until ready"),
        Slot("ready", ValueKind.BOOL, False, "measurements valid; cleared when trigger drops"),
    ),
}
"""Fixed slots per profile. Fixture axes add ``<axis>_sp`` (writable float) and ``<axis>_act`` (float) per
axis named in a recipe; gauges add one readable float per quality characteristic."""


def axis_setpoint_tag(axis: str) -> str:
    """Tag name of a fixture axis setpoint."""
    return f"{axis}_sp"


def axis_actual_tag(axis: str) -> str:
    """Tag name of a fixture axis actual position."""
    return f"{axis}_act"
