"""A whole cell of soft devices that answer the handshakes at once, for engine unit tests (no sockets)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cellctl.core.devices import ProfileKind
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.schema.cell import CellConfig

GaugeFn = Callable[[str], float]
"""Gauge channel name -> value measured for the next part."""


def _robot(dev: SoftDriver) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "program":
            dev.set("active_program", value)
        elif tag == "start" and value:
            if dev.last("active_program").value in (0, None):
                dev.set("fault_code", 1)
                return
            dev.set("busy", False)
            dev.set("done", True)
            count = dev.last("cycle_count").value
            dev.set("cycle_count", int(count if isinstance(count, int) else 0) + 1)
        elif tag == "start":
            dev.set("done", False)

    dev.on_write(hook)


def _tool_changer(dev: SoftDriver) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "tool_request":
            dev.set("tool_current", value)
            dev.set("moving", False)

    dev.on_write(hook)


def _fixture(dev: SoftDriver) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "clamp":
            dev.set("clamped", bool(value))
        elif tag.endswith("_sp"):
            if dev.last("clamped").value:
                return  # a clamped fixture refuses to move, as the simulator does
            dev.set(tag[: -len("_sp")] + "_act", value)
            dev.set("in_position", True)

    dev.on_write(hook)


def _press(dev: SoftDriver) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "start":
            dev.set("busy", False)
            dev.set("done", bool(value))

    dev.on_write(hook)


def _gauge(dev: SoftDriver, measure: GaugeFn, channels: list[str]) -> None:
    def hook(tag: str, value: TagValue) -> None:
        if tag == "trigger" and value:
            for channel in channels:
                dev.set(channel, measure(channel))
            dev.set("ready", True)
        elif tag == "trigger":
            dev.set("ready", False)

    dev.on_write(hook)


def soft_cell(
    cell: CellConfig,
    *,
    measure: GaugeFn | None = None,
    initial: Mapping[str, Mapping[str, TagValue]] | None = None,
) -> dict[str, SoftDriver]:
    """Soft drivers for every device of ``cell``, idle, with no tool and no program, answering at once."""
    devices: dict[str, SoftDriver] = {}
    for name, config in cell.devices.items():
        start: dict[str, TagValue] = {}
        for tag_name, tag in config.tags.items():
            start[tag_name] = False if tag.datatype == "bool" else (0.0 if "float" in tag.datatype else 0)
        start.update((initial or {}).get(name, {}))
        dev = SoftDriver.from_config(name, config, initial=start)
        if config.profile is ProfileKind.ROBOT:
            _robot(dev)
        elif config.profile is ProfileKind.TOOL_CHANGER:
            _tool_changer(dev)
        elif config.profile is ProfileKind.FIXTURE:
            _fixture(dev)
        elif config.profile is ProfileKind.PRESS:
            _press(dev)
        elif config.profile is ProfileKind.GAUGE:
            channels = [t for t, c in config.tags.items() if c.datatype in ("float32", "float64")]
            _gauge(dev, measure or (lambda _channel: 0.0), channels)
        devices[name] = dev
    return devices
