"""Device drivers: the only place cellctl speaks OPC UA (asyncua) and Modbus TCP (pymodbus).

``build_driver`` picks the driver a device's config names; every driver is a ``cellctl.core.ports.Driver``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cellctl.core.clock import Clock
from cellctl.core.ports import Driver
from cellctl.drivers._supervisor import Backoff
from cellctl.drivers.modbus import ModbusDriver
from cellctl.drivers.opcua import OpcUaDriver
from cellctl.drivers.soft import SoftDriver
from cellctl.schema.cell import DeviceConfig

__all__ = ["Backoff", "ModbusDriver", "OpcUaDriver", "SoftDriver", "build_driver"]


def build_driver(
    name: str, device: DeviceConfig, clock: Clock, *, resolve_path: Callable[[str], Path] = Path
) -> Driver:
    """The driver for ``device`` (by its ``driver`` field), not yet running: run it with ``await d.run()``.

    ``resolve_path`` turns file names of the config (OPC UA certificates, key, trust folder) into paths: pass
    the cell file's ``LoadedConfig.resolve``; by default they are taken from the working folder.
    """
    match device.driver:
        case "opcua":
            return OpcUaDriver(name, device, clock, resolve_path=resolve_path)
        case "modbus":
            return ModbusDriver(name, device, clock)
    raise ValueError(f"device {name!r}: unknown driver {device.driver!r}")
