"""Reading the current setup back from the devices: what every recipe names, never assumed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.devices import Profile, make_profile
from cellctl.core.plans import DeviceSetup
from cellctl.core.ports import LinkState
from cellctl.drivers.soft import SoftDriver
from cellctl.engine.planner import plan_changeover, read_setup
from cellctl.errors import CommError, DeviceFault, PlanError
from cellctl.schema.load import load_config
from cellctl.schema.recipe import Recipe
from tests.softcell import soft_cell

EXAMPLE = load_config(Path(__file__).resolve().parents[2] / "config")
CELL = EXAMPLE.cell
RECIPES = EXAMPLE.recipes

BERGEN_ON_DEVICES: dict[str, dict[str, Any]] = {
    "toolchanger": {"tool_current": 2, "preselect": 2},
    "robot1": {"active_program": 12},
    "fixture": {"width_act": 520.0, "depth_act": 480.0, "clamped": True},
    "stapler": {"force_sp": 950.0, "pitch_mm": 10.0},
}


def _profiles(devices: Mapping[str, SoftDriver]) -> dict[str, Profile]:
    return {
        name: make_profile(config.profile, name, devices[name], config.tags)
        for name, config in CELL.devices.items()
    }


async def test_the_setup_is_read_from_the_devices() -> None:
    # Given devices set up for bergen, when the setup is read, then it holds what the devices report.
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    setup = await read_setup(_profiles(devices), CELL, RECIPES)
    assert setup["toolchanger"] == DeviceSetup(tool=2, setpoints={"preselect": 2})
    assert setup["robot1"] == DeviceSetup(program=12)
    assert setup["fixture"] == DeviceSetup(positions={"width": 520.0, "depth": 480.0}, clamped=True)
    assert setup["stapler"] == DeviceSetup(setpoints={"force_sp": 950.0})


async def test_only_devices_some_recipe_sets_up_are_read() -> None:
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    setup = await read_setup(_profiles(devices), CELL, RECIPES)
    assert set(setup) == {"toolchanger", "robot1", "fixture", "stapler"}  # not the gauge


async def test_a_cell_read_back_as_bergen_needs_no_changeover_to_bergen() -> None:
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    setup = await read_setup(_profiles(devices), CELL, RECIPES)
    assert plan_changeover(setup, RECIPES["bergen"], CELL, from_variant="bergen").is_empty


async def test_a_change_on_the_device_is_seen_by_the_next_read() -> None:
    # Given a read setup, when someone mounts another tool by hand, then the next read reports it.
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    profiles = _profiles(devices)
    await read_setup(profiles, CELL, RECIPES)
    devices["toolchanger"].set("tool_current", 3)
    setup = await read_setup(profiles, CELL, RECIPES)
    assert setup["toolchanger"].tool == 3


async def test_a_fresh_cell_reads_no_tool_and_no_program() -> None:
    devices = soft_cell(CELL)
    setup = await read_setup(_profiles(devices), CELL, RECIPES)
    assert (setup["toolchanger"].tool, setup["robot1"].program) == (0, 0)


async def test_axes_and_setpoints_named_in_any_recipe_are_read() -> None:
    # Given a second recipe that also names pitch_mm, when read, then pitch_mm is read back too.
    recipes = dict(RECIPES)
    recipes["probe"] = Recipe.model_validate(
        {"variant": "probe", "version": 1, "setup": {"stapler": {"setpoints": {"pitch_mm": 11.0}}}}
    )
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    setup = await read_setup(_profiles(devices), CELL, recipes)
    assert setup["stapler"].setpoints == {"force_sp": 950.0, "pitch_mm": 10.0}


async def test_a_bad_reading_raises_comm_error_naming_the_tag() -> None:
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    devices["fixture"].set_bad("width_act", "sensor unplugged")
    with pytest.raises(CommError) as caught:
        await read_setup(_profiles(devices), CELL, RECIPES)
    assert (caught.value.device, caught.value.tag) == ("fixture", "width_act")
    assert "sensor unplugged" in str(caught.value)


async def test_a_device_whose_link_is_down_raises_comm_error() -> None:
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    devices["robot1"].set_health(LinkState.DOWN, "connection refused")
    with pytest.raises(CommError) as caught:
        await read_setup(_profiles(devices), CELL, RECIPES)
    assert (caught.value.device, caught.value.tag) == ("robot1", "active_program")


async def test_a_nan_position_is_not_a_usable_reading() -> None:
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    devices["fixture"].set("depth_act", float("nan"))
    with pytest.raises(CommError, match=r"fixture\.depth_act"):
        await read_setup(_profiles(devices), CELL, RECIPES)


async def test_a_tool_number_that_is_not_a_number_is_a_device_fault() -> None:
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    devices["toolchanger"].set("tool_current", "FOAM-L")
    with pytest.raises(DeviceFault, match=r"toolchanger\.tool_current"):
        await read_setup(_profiles(devices), CELL, RECIPES)


async def test_a_device_without_a_profile_is_a_plan_error() -> None:
    devices = soft_cell(CELL, initial=BERGEN_ON_DEVICES)
    profiles = _profiles(devices)
    del profiles["fixture"]
    with pytest.raises(PlanError, match="no profile for device 'fixture'"):
        await read_setup(profiles, CELL, RECIPES)


async def test_a_recipe_naming_an_unknown_device_is_a_plan_error() -> None:
    recipes = {"probe": Recipe.model_validate({"variant": "probe", "version": 1, "setup": {"oven": {}}})}
    devices = soft_cell(CELL)
    with pytest.raises(PlanError, match="no device 'oven'"):
        await read_setup(_profiles(devices), CELL, recipes)
