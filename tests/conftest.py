"""Suite-wide fixtures: the task-leak check, and the private broker plugin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.broker", "tests.fixtures.telemetry", "tests.fixtures.sdnotify"]

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"


@pytest.fixture
def config_dir() -> Path:
    """The shipped example cell (pointed at the simulators)."""
    return CONFIG_DIR


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after its fixtures are torn down."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leftover = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
    if leftover:
        # Libraries finish their own close-down on the next loop turns; give them a bounded moment.
        _done, pending = await asyncio.wait(leftover, timeout=1.0)
        if pending:
            names = sorted(t.get_name() + ":" + repr(t.get_coro()) for t in pending)
            for task in pending:
                task.cancel()
            pytest.fail(f"test leaked {len(pending)} asyncio task(s): {names}")
