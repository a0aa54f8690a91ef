"""What the drivers share, without sockets: backoff, the tag cache's notifications, health and the loop."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from cellctl.core.clock import ManualClock
from cellctl.core.ports import Health, LinkState
from cellctl.core.tags import Quality, Reading
from cellctl.drivers._supervisor import BACKOFF_CAP_S, Backoff, LinkedBackend
from cellctl.errors import CommError, DeviceError


@given(seed=st.integers(0, 2**32), attempts=st.integers(1, 40))
def test_backoff_delays_stay_between_half_the_start_and_the_cap(seed: int, attempts: int) -> None:
    backoff = Backoff(rng=random.Random(seed))
    delays = [backoff.next_delay() for _ in range(attempts)]
    assert all(0.05 <= d <= BACKOFF_CAP_S for d in delays)


def test_backoff_grows_to_the_cap_and_starts_over_after_a_reset() -> None:
    backoff = Backoff(start=0.1, cap=5.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert delays[0] <= 0.1
    assert delays[-1] >= 2.5  # at the cap, less at most half of it for jitter
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_backoff_refuses_a_start_above_the_cap() -> None:
    with pytest.raises(ValueError, match="start <= cap"):
        Backoff(start=6.0, cap=5.0)


class Scripted(LinkedBackend):
    """A LinkedBackend whose serve() is scripted by the test."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__("dev", ["a", "b"], clock, backoff=Backoff(start=0.001, cap=0.002))
        self.attempts = 0
        self.fail_first = 2
        self.serving = asyncio.Event()

    async def serve(self) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise CommError("dev", f"refused #{self.attempts}")
        self._store_value("a", 1)
        self._link_up()
        self.serving.set()
        await asyncio.Event().wait()


def test_a_new_backend_has_every_tag_bad_and_the_link_down() -> None:
    backend = Scripted(ManualClock())
    assert backend.last("a").quality is Quality.BAD
    assert backend.health.state is LinkState.DOWN


def test_an_unknown_tag_is_an_error_naming_device_and_tag() -> None:
    with pytest.raises(DeviceError, match=r"dev\.zz: no such tag"):
        Scripted(ManualClock()).last("zz")


def test_watchers_hear_a_change_of_value_or_quality_but_not_a_repeat() -> None:
    backend = Scripted(ManualClock())
    heard: list[tuple[str, Reading]] = []
    backend.watch(lambda tag, reading: heard.append((tag, reading)))
    backend._store_value("a", 1.5)
    backend._store_value("a", 1.5)
    backend._store_value("a", 1.5, Quality.UNCERTAIN)
    backend._store_value("a", 2.0, Quality.UNCERTAIN)
    assert [(t, r.value, r.quality) for t, r in heard] == [
        ("a", 1.5, Quality.GOOD),
        ("a", 1.5, Quality.UNCERTAIN),
        ("a", 2.0, Quality.UNCERTAIN),
    ]


def test_a_repeated_nan_is_not_news_and_a_type_change_is() -> None:
    backend = Scripted(ManualClock())
    heard: list[Reading] = []
    backend.watch(lambda _t, reading: heard.append(reading))
    backend._store_value("a", math.nan)
    backend._store_value("a", math.nan)
    backend._store_value("a", 1)
    backend._store_value("a", 1.0)
    assert len(heard) == 3


def test_the_newest_reading_keeps_its_timestamp_even_when_nobody_is_told() -> None:
    clock = ManualClock()
    backend = Scripted(clock)
    backend._store_value("a", 3)
    clock.advance(2.0)
    backend._store_value("a", 3)
    assert backend.last("a").timestamp == 2.0


def test_an_unsubscribed_watcher_hears_nothing_more() -> None:
    backend = Scripted(ManualClock())
    heard: list[str] = []
    unsubscribe = backend.watch(lambda tag, _r: heard.append(tag))
    backend._store_value("a", 1)
    unsubscribe()
    unsubscribe()
    backend._store_value("a", 2)
    assert heard == ["a"]


async def test_the_supervisor_retries_after_comm_errors_until_the_link_serves_one_down_one_up() -> None:
    backend = Scripted(ManualClock())
    changes: list[Health] = []
    backend.on_health(changes.append)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(backend._supervise(backend.serve), name="driver:dev")
        async with asyncio.timeout(5):
            await backend.serving.wait()
        task.cancel()
    assert backend.attempts == 3
    assert [h.state for h in changes] == [LinkState.CONNECTING, LinkState.DOWN, LinkState.UP]
    assert changes[1].error == "dev: refused #1"
    assert backend.last("a").value == 1
    assert backend.last("b").quality is Quality.BAD


async def test_a_link_failure_makes_every_tag_bad_with_the_reason() -> None:
    backend = Scripted(ManualClock())
    backend._store_value("a", 5)
    backend._link_down("dev: cable cut")
    reading = backend.last("a")
    assert (reading.quality, reading.value, reading.reason) == (Quality.BAD, None, "dev: cable cut")
    assert backend.health.error == "dev: cable cut"


async def test_a_bug_in_serve_propagates_instead_of_being_retried() -> None:
    backend = Scripted(ManualClock())

    async def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await backend._supervise(broken)


def test_a_new_error_during_an_outage_is_kept_without_telling_anyone() -> None:
    backend = Scripted(ManualClock())
    changes: list[Health] = []
    backend._link_down("dev: first")
    backend.on_health(changes.append)
    backend._link_down("dev: second")
    assert changes == []
    assert backend.health.error == "dev: second"


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """Let debug entries through whatever level another test configured structlog at."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("debug_logs")
async def test_an_outage_is_logged_once_as_a_warning_and_its_retries_at_debug() -> None:
    backend = Scripted(ManualClock())
    backend.fail_first = 4
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(backend._supervise(backend.serve), name="driver:dev")
            async with asyncio.timeout(5):
                await backend.serving.wait()
            task.cancel()
    levels = [(entry["log_level"], entry["event"]) for entry in logs]
    assert levels.count(("warning", "link down")) == 1
    assert levels.count(("debug", "reconnect failed")) == 3
    assert levels[-1] == ("info", "link up again")
    assert {entry["device"] for entry in logs} == {"dev"}
