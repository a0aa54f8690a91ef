"""The simulated tool changer: a preselected tool changes faster by the time its magazine had to turn."""

from __future__ import annotations

from pathlib import Path

import pytest

import device_sims.behaviour as behaviour
from device_sims.behaviour import ToolChangerSim, build_world
from device_sims.harness import load_cell_config
from device_sims.sims_config import SimsConfig, ToolChangerSettings

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sim's monotonic clock, moved by the test."""
    clock = [100.0]
    monkeypatch.setattr(behaviour, "_monotonic", lambda: clock[0])
    return clock


async def test_the_magazine_turns_toward_the_preselected_tool_for_at_most_preselect_s(
    now: list[float],
) -> None:
    cell = load_cell_config(CONFIG)
    sims = SimsConfig(tool_changer=ToolChangerSettings(change_s=4.0, preselect_s=1.5))
    world = build_world([("toolchanger", cell.devices["toolchanger"])], sims, time_scale=0.1)
    changer = world.devices["toolchanger"]
    assert isinstance(changer, ToolChangerSim)
    try:
        # Given tool 2 preselected
        changer.client_write("preselect", 2)
        assert changer.get("preselect") == 2

        # then the magazine turned as long as it had, up to 1.5 s (0.15 real s at time scale 0.1)
        now[0] += 0.05
        assert changer._turned_s(2) == pytest.approx(0.05)
        now[0] += 10.0
        assert changer._turned_s(2) == pytest.approx(0.15)
        # and not toward any other tool
        assert changer._turned_s(3) == 0.0
    finally:
        await world.aclose()
