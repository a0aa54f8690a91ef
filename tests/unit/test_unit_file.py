"""The systemd unit holds the runtime's shutdown figures: TimeoutStopSec outlasts every stage of a stop."""

from __future__ import annotations

from cellctl.runtime.app import FLUSH_DEADLINE_S, SHUTDOWN_MARGIN_S, STOP_DEADLINE_S
from tests.fixtures.unitfile import seconds, service_settings


def test_timeout_stop_sec_exceeds_the_stop_deadline_the_flush_and_the_margin() -> None:
    """Given the unit file, TimeoutStopSec is longer than PackML Stop + flush + the rest of the stop."""
    (timeout,) = service_settings()["TimeoutStopSec"]
    assert seconds(timeout) > STOP_DEADLINE_S + FLUSH_DEADLINE_S + SHUTDOWN_MARGIN_S


def test_the_unit_is_notify_with_a_watchdog_and_reloads_with_sighup() -> None:
    """Type=notify with a watchdog, SIGTERM to stop, and ExecReload sending SIGHUP to the main process."""
    settings = service_settings()
    assert settings["Type"] == ["notify"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert seconds(settings["WatchdogSec"][0]) > 0
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
