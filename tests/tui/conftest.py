"""Fixtures of the TUI tests: a real controller on soft devices behind a real socket, and condition waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.app import App
from textual.pilot import Pilot

from cellctl.drivers.soft import SoftDriver
from cellctl.schema.load import load_config
from tests.integration.test_api import Cell, serving
from tests.softcell import soft_cell

WAIT_S = 5.0
SIZE = (80, 24)


@dataclass
class Live:
    """A controller the TUI talks to, and the soft devices under it (to press the e-stop...)."""

    cell: Cell
    devices: dict[str, SoftDriver]

    @property
    def path(self) -> Path:
        return self.cell.path


@pytest.fixture
async def live(config_dir: Path, tmp_path: Path) -> AsyncIterator[Live]:
    config = load_config(config_dir)
    devices = soft_cell(config.cell)
    async with serving(config, devices, tmp_path) as cell:
        yield Live(cell, devices)


async def until(
    pilot: Pilot[None], predicate: Callable[[], bool], what: str, timeout: float = WAIT_S
) -> None:
    """Let the app run until ``predicate()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await pilot.pause(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def notes(app: App[None]) -> list[str]:
    """The notifications shown so far, as ``title: message``."""
    return [f"{n.title}: {n.message}" for n in app._notifications]
