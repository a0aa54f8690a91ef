"""The simulated fixture reports in position once every axis has arrived, however the motions end."""

from __future__ import annotations

from pathlib import Path

from device_sims.behaviour import FixtureSim, build_world
from device_sims.harness import load_cell_config
from device_sims.sims_config import SimsConfig

CONFIG = Path(__file__).resolve().parents[2] / "config"


async def test_axes_arriving_in_the_same_loop_turn_leave_the_fixture_in_position() -> None:
    # Time scale 0: both motions take no time and end one right after the other in one loop turn.
    cell = load_cell_config(CONFIG)
    world = build_world([("fixture", cell.devices["fixture"])], SimsConfig(), time_scale=0)
    fixture = world.devices["fixture"]
    assert isinstance(fixture, FixtureSim)
    try:
        fixture.client_write("width_sp", 420.0)
        fixture.client_write("depth_sp", 400.0)

        assert fixture.get("in_position") is False

        await world.wait_for(lambda: fixture.get("in_position") is True, timeout=1.0)

        assert (fixture.get("width_act"), fixture.get("depth_act")) == (420.0, 400.0)
    finally:
        await world.aclose()
