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


async def test_a_setpoint_retargeted_to_the_actual_position_stops_the_axis_there() -> None:
    # What the fixture_move finalizer relies on: a new setpoint replaces the motion under way.
    cell = load_cell_config(CONFIG)
    world = build_world([("fixture", cell.devices["fixture"])], SimsConfig(), time_scale=0.2)
    fixture = world.devices["fixture"]
    assert isinstance(fixture, FixtureSim)
    try:
        fixture.client_write("width_sp", 420.0)  # 7 s at 60 mm/s, 1.4 s at this scale
        await world.wait_for(lambda: float(fixture.get("width_act")) > 10.0, timeout=1.0)
        fixture.client_write("width_sp", float(fixture.get("width_act")))

        await world.wait_for(lambda: fixture.get("in_position") is True, timeout=1.0)

        stopped = float(fixture.get("width_act"))
        assert 10.0 < stopped < 420.0
        assert world.commands[("fixture", "move:width")] == 2
    finally:
        await world.aclose()
