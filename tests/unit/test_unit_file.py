"""The systemd unit holds the runtime's shutdown figures: TimeoutStopSec outlasts every stage of a stop."""

from __future__ import annotations

from pathlib import Path

from cellctl.runtime.app import FLUSH_DEADLINE_S, SHUTDOWN_MARGIN_S, STOP_DEADLINE_S

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "cellctl.service"


def _service_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _seconds(value: str) -> float:
    value = value.strip()
    for suffix, factor in (("ms", 0.001), ("min", 60.0), ("s", 1.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_timeout_stop_sec_exceeds_the_stop_deadline_the_flush_and_the_margin() -> None:
    """Given the unit file, TimeoutStopSec is longer than PackML Stop + flush + the rest of the stop."""
    (timeout,) = _service_settings()["TimeoutStopSec"]
    assert _seconds(timeout) > STOP_DEADLINE_S + FLUSH_DEADLINE_S + SHUTDOWN_MARGIN_S


def test_the_unit_is_notify_with_a_watchdog_and_reloads_with_sighup() -> None:
    """Type=notify with a watchdog, SIGTERM to stop, and ExecReload sending SIGHUP to the main process."""
    settings = _service_settings()
    assert settings["Type"] == ["notify"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert _seconds(settings["WatchdogSec"][0]) > 0
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
