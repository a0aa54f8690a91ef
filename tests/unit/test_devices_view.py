"""The devices view of the control API: link health and last readings of every configured device, no I/O."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cellctl.api.protocol import Reply
from cellctl.core.clock import ManualClock
from cellctl.core.ports import LinkState
from cellctl.drivers.soft import SoftDriver
from cellctl.runtime.app import device_views
from cellctl.schema.load import load_config


def test_each_device_shows_its_link_state_since_when_and_each_tags_last_reading(config_dir: Path) -> None:
    cell = load_config(config_dir).cell
    clock = ManualClock()
    drivers = {name: SoftDriver.from_config(name, dev, clock=clock) for name, dev in cell.devices.items()}
    drivers["robot1"].set("program", 7)
    clock.advance(2.5)
    drivers["gauge"].set_health(LinkState.DOWN, "connection refused")
    clock.advance(1.0)

    views = {v["device"]: v for v in device_views(cell, drivers, clock)}

    assert list(views) == list(cell.devices)
    robot, gauge = views["robot1"], views["gauge"]
    assert (robot["protocol"], robot["state"], robot["state_for_s"]) == ("opcua", "up", 3.5)
    assert robot["error"] == ""
    (program,) = [t for t in robot["tags"] if t["tag"] == "program"]
    assert program == {"tag": "program", "value": 7, "quality": "good", "age_s": 3.5}
    assert (gauge["state"], gauge["state_for_s"], gauge["error"]) == ("down", 1.0, "connection refused")
    assert [t["tag"] for t in gauge["tags"]] == list(cell.devices["gauge"].tags)
    assert all(t["quality"] == "bad" and t["value"] is None for t in gauge["tags"])  # never read


def test_a_value_json_cannot_hold_is_sent_as_null(config_dir: Path) -> None:
    cell = load_config(config_dir).cell
    clock = ManualClock()
    drivers = {name: SoftDriver.from_config(name, dev, clock=clock) for name, dev in cell.devices.items()}
    tag = next(n for n, t in cell.devices["gauge"].tags.items() if t.datatype.startswith("float"))
    drivers["gauge"].set(tag, math.nan)

    line = Reply.success(1, {"devices": device_views(cell, drivers, clock)}).encode()

    (gauge,) = [d for d in json.loads(line)["result"]["devices"] if d["device"] == "gauge"]
    assert [t["value"] for t in gauge["tags"] if t["tag"] == tag] == [None]
