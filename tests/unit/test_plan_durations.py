"""Measured step durations from the store: in `cellctl plan` (never creating it) and at controller start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.cli import main
from cellctl.core.clock import Clock
from cellctl.core.events import StepEvent, StepStatus
from cellctl.core.ports import Driver
from cellctl.drivers.soft import SoftDriver
from cellctl.runtime.app import CellApp, Controller
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.store import Store
from tests.fixtures.cellfolder import cell_folder, quiet_logging


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Every test here runs ``main``, which reconfigures logging."""
    with quiet_logging():
        yield


async def journal_tool_changes(path: Path, seconds: list[float]) -> None:
    """Journal completed tool changes of these durations (tests are sync: ``main`` runs its own loop)."""
    store = await Store.open(path)
    try:
        for k, value in enumerate(seconds):
            event = StepEvent(
                ts=float(k),
                changeover="C1",
                job="J1",
                step="toolchanger:tool_change",
                step_kind="tool_change",
                device="toolchanger",
                status=StepStatus.DONE,
                duration_s=value,
            )
            await store.append(event, [])
    finally:
        await store.close()


def plan(capsys: pytest.CaptureFixture[str], folder: Path, *args: str) -> str:
    code = main(["plan", "--config", str(folder), "--from", "oslo", "--to", "bergen", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_without_a_store_every_duration_is_configured_and_no_store_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cell_folder(tmp_path)
    data = json.loads(plan(capsys, tmp_path, "--json"))
    assert data["durations_from"] is None
    assert {s["duration_source"] for s in data["steps"]} == {"configured"}
    assert not path.exists() and not path.parent.exists()


def test_measured_durations_from_the_store_are_used_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a store holding four tool changes of about 30 s
    path = cell_folder(tmp_path)
    asyncio.run(journal_tool_changes(path, [29.0, 30.0, 31.0, 300.0]))

    # when planning oslo -> bergen
    data = json.loads(plan(capsys, tmp_path, "--json"))
    table = plan(capsys, tmp_path)

    # then the tool change is measured (median 30.5 s of 4), the rest configured, the timeout unchanged
    steps = {s["id"]: s for s in data["steps"]}
    tool = steps["toolchanger:tool_change"]
    assert (tool["expected_s"], tool["duration_source"], tool["duration_samples"]) == (30.5, "measured", 4)
    assert tool["timeout_s"] == 30
    others = [s for i, s in steps.items() if i != "toolchanger:tool_change"]
    assert {s["duration_source"] for s in others} == {"configured"}
    assert data["durations_from"] == str(path)
    before = steps["toolchanger:setpoints"]["expected_s"]  # the magazine's preselect comes first
    assert data["critical_path_s"] == pytest.approx(
        before + 30.5 + steps["robot1:robot_program"]["expected_s"]
    )
    row = next(line for line in table.splitlines() if "toolchanger:tool_change" in line.split()[:2])
    assert "30.5" in row and row.endswith("measured (n=4)")
    assert "step durations: 1 of 7 measured (the store" in table


def test_too_few_measurements_stay_configured_and_say_how_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cell_folder(tmp_path)
    asyncio.run(journal_tool_changes(path, [29.0, 31.0]))
    table = plan(capsys, tmp_path)
    row = next(line for line in table.splitlines() if "toolchanger:tool_change" in line.split()[:2])
    assert row.endswith("configured (n=2, too few)")


def test_configured_ignores_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = cell_folder(tmp_path)
    asyncio.run(journal_tool_changes(path, [30.0, 30.0, 30.0]))
    data = json.loads(plan(capsys, tmp_path, "--json", "--configured"))
    tool = next(s for s in data["steps"] if s["id"] == "toolchanger:tool_change")
    assert (tool["expected_s"], tool["duration_source"]) == (4, "configured")


def test_an_unreadable_store_falls_back_to_configured_durations_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cell_folder(tmp_path)
    path.parent.mkdir()
    path.write_bytes(b"this is not a database" * 100)
    code = main(["plan", "--config", str(tmp_path), "--from", "oslo", "--to", "bergen", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "using the configured step durations" in err and str(path) in err
    assert {s["duration_source"] for s in json.loads(out)["steps"]} == {"configured"}


async def test_the_controller_starts_with_the_durations_measured_in_its_store(tmp_path: Path) -> None:
    # Given a store holding three 42 s tool changes
    path = cell_folder(tmp_path)
    await journal_tool_changes(path, [41.0, 42.0, 43.0])
    loaded = load_config(tmp_path)

    def soft(name: str, config: LoadedConfig, clock: Clock) -> Driver:
        return SoftDriver(name, config.cell.devices[name].tags, clock=clock)

    seen: list[tuple[float, int]] = []

    async def look(controller: Controller) -> None:
        durations = controller.engine.durations
        seen.append((durations.expected_s("toolchanger", "tool_change", 4.0), len(durations)))
        stop.set()

    # When the controller starts on it
    stop = asyncio.Event()
    async with asyncio.timeout(10):
        await CellApp(loaded, publish=False, driver_factory=soft).run(stop, on_ready=look)

    # Then its engine plans tool changes with the measured median
    assert seen == [(42.0, 1)]
