"""Configuration reload: what differs between the running configuration and a new one, and what applies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cellctl.runtime.reload import config_diff
from cellctl.schema.load import LoadedConfig, load_config

CONFIG = Path(__file__).resolve().parents[2] / "config"


def _running() -> LoadedConfig:
    return load_config(CONFIG)


def test_the_same_configuration_loaded_again_differs_in_nothing() -> None:
    """Given the example loaded twice, the diff swaps no recipe and needs no restart."""
    diff = config_diff(_running(), _running())
    assert not diff.recipes_changed
    assert diff.needs_restart == ()
    assert diff.summary() == "recipes unchanged"


def test_a_changed_added_and_removed_recipe_are_named_by_variant() -> None:
    """Given oslo's ideal cycle changed, bergen removed and a copy of tromso added, the diff names each."""
    running = _running()
    recipes = dict(running.recipes)
    recipes["oslo"] = recipes["oslo"].model_copy(update={"ideal_cycle_s": 9.0})
    del recipes["bergen"]
    recipes["narvik"] = recipes["tromso"]
    diff = config_diff(running, dataclasses.replace(running, recipes=recipes))
    assert (diff.added, diff.removed, diff.changed) == (("narvik",), ("bergen",), ("oslo",))
    assert diff.recipes_changed and diff.needs_restart == ()
    assert diff.summary() == "recipes added narvik; removed bergen; changed oslo"


def test_cell_file_changes_other_than_the_recipes_folder_need_a_restart() -> None:
    """Given a device endpoint, the socket and the store path changed, they are reported, by top-level field;
    the recipes folder alone is applied live."""
    running = _running()
    cell = running.cell
    robot = cell.devices["robot1"].model_copy(update={"endpoint": "opc.tcp://10.0.0.9:4840"})
    changed = cell.model_copy(
        update={
            "devices": {**cell.devices, "robot1": robot},
            "api": cell.api.model_copy(update={"socket": "/run/elsewhere.sock"}),
            "store": cell.store.model_copy(update={"path": "/var/lib/other.db"}),
            "recipes_dir": "elsewhere",
        }
    )
    diff = config_diff(running, dataclasses.replace(running, cell=changed))
    assert diff.needs_restart == ("api", "devices", "store")
    assert not diff.recipes_changed
