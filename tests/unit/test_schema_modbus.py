"""The Modbus options of the cell file: poll groups per device and tag, write-then-verify per tag."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.load import load_cell_file

CELL = """\
    identity: {enterprise: acme, site: s1, area: a1, line: l1, cell: c1}
    devices:
      gauge:
        driver: modbus
        endpoint: tcp://127.0.0.1:1502
        profile: gauge
        poll_interval_s: 0.1
        poll_groups:
          slow: {interval_s: 5}
        tags:
          trigger:  {table: coil, address: 0, datatype: bool, access: rw, verify: true}
          ready:    {table: discrete_input, address: 0, datatype: bool}
          width_mm: {table: input_register, address: 0, datatype: float32, poll_group: GROUP}
"""

ROBOT = """\
      robot:
        driver: opcua
        endpoint: opc.tcp://127.0.0.1:4840
        profile: robot
        tags:
          busy: {node: "ns=2;s=Busy", datatype: bool, EXTRA}
"""


def cell_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cell.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(path: Path) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        load_cell_file(path)
    return caught.value.issues


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_a_tag_joins_a_declared_poll_group(tmp_path: Path) -> None:
    cell = load_cell_file(cell_file(tmp_path, CELL.replace("GROUP", "slow")))
    gauge = cell.devices["gauge"]
    assert gauge.poll_groups["slow"].interval_s == 5
    assert gauge.tags["width_mm"].poll_group == "slow"
    assert gauge.tags["ready"].poll_group is None
    assert gauge.tags["trigger"].verify is True


def test_an_unknown_poll_group_is_an_error_located_at_the_tag(tmp_path: Path) -> None:
    path = cell_file(tmp_path, CELL.replace("GROUP", "fast"))
    (issue,) = issues_of(path)
    assert issue.path == "devices.gauge.tags.width_mm.poll_group"
    assert issue.line == line_of(path, "width_mm:")
    assert "unknown poll group 'fast' (poll_groups: slow)" in issue.message


def test_a_poll_group_needs_a_positive_interval(tmp_path: Path) -> None:
    path = cell_file(tmp_path, CELL.replace("GROUP", "slow").replace("interval_s: 5", "interval_s: 0"))
    (issue,) = issues_of(path)
    assert issue.path == "devices.gauge.poll_groups.slow.interval_s"


def test_verify_on_a_tag_that_is_not_read_write_is_an_error(tmp_path: Path) -> None:
    text = CELL.replace("GROUP", "slow").replace("access: rw, verify: true", "access: w, verify: true")
    (issue,) = issues_of(cell_file(tmp_path, text))
    assert issue.path == "devices.gauge.tags.trigger.verify"
    assert "access must be 'rw'" in issue.message


@pytest.mark.parametrize(
    ("extra", "key"), [("poll_group: slow", "poll_group"), ("verify: true, access: rw", "verify")]
)
def test_modbus_options_on_an_opcua_tag_are_errors(tmp_path: Path, extra: str, key: str) -> None:
    text = CELL.replace("GROUP", "slow") + ROBOT.replace("EXTRA", extra)
    (issue,) = issues_of(cell_file(tmp_path, text))
    assert issue.path == f"devices.robot.tags.busy.{key}"
    assert f"{key!r} is for Modbus tags" in issue.message
