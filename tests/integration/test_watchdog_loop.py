"""The watchdog pings come from the controller's event loop itself: a blocked loop stops them (in-process,
CellApp's notifier pointed at the sd_notify harness, whose receiving thread stamps each datagram)."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import time
from pathlib import Path

import pytest

from cellctl.core.clock import Clock
from cellctl.core.ports import Driver
from cellctl.drivers.soft import SoftDriver
from cellctl.runtime.app import CellApp, Controller
from cellctl.runtime.systemd import Notifier
from cellctl.schema.load import LoadedConfig, load_config
from tests.fixtures.cellfolder import cell_folder
from tests.fixtures.sdnotify import SdNotify

INTERVAL_S = 0.2
"""Ping interval: WatchdogSec/2 with WATCHDOG_USEC = 400 ms."""
BLOCK_S = 3 * INTERVAL_S
SLACK_S = 0.05
"""A datagram sent just before the block is stamped within this by the harness's thread."""
T = 10.0


def _soft(name: str, config: LoadedConfig, clock: Clock) -> Driver:
    return SoftDriver(name, config.cell.devices[name].tags, clock=clock)


async def test_a_blocked_loop_sends_no_ping_and_the_pings_resume_after_it(
    sd_notify: SdNotify, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a running controller pinging every 0.2 s, when a loop callback blocks for three intervals, then
    no WATCHDOG=1 arrives during the block, and pings arrive again once the loop runs."""
    monkeypatch.setenv("WATCHDOG_USEC", str(int(2 * INTERVAL_S * 1_000_000)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with tempfile.TemporaryDirectory(prefix="wd-") as folder:
        cell_folder(Path(folder))
        app = CellApp(
            load_config(folder), notifier=Notifier(str(sd_notify.path)), publish=False, driver_factory=_soft
        )
        stop = asyncio.Event()
        block: list[float] = []

        def blocking_callback() -> None:
            began = time.monotonic()
            time.sleep(BLOCK_S)  # the bug under test: synchronous work on the loop
            block.extend((began, time.monotonic()))

        async def on_ready(_controller: Controller) -> None:
            await sd_notify.wait_key("WATCHDOG", "1", count=3, timeout=T)
            asyncio.get_running_loop().call_soon(blocking_callback)
            await asyncio.sleep(0)  # the callback runs on this turn of the loop
            assert block, "the loop was not blocked"
            before = len(sd_notify.with_key("WATCHDOG", "1"))
            await sd_notify.wait_key("WATCHDOG", "1", count=before + 2, timeout=T)
            stop.set()

        async with asyncio.timeout(T):
            await app.run(stop, on_ready)

    began, ended = block
    pings = [n.at for n in sd_notify.with_key("WATCHDOG", "1")]
    assert not [at for at in pings if began + SLACK_S < at < ended], "a ping came while the loop was blocked"
    assert len([at for at in pings if at >= ended]) >= 2, "the pings did not resume"
    # Before and after the block, the pings keep their pace; the one gap is the block itself.
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= BLOCK_S
