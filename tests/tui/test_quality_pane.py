"""The Quality screen against a real controller: after oslo seats are made, the control chart shows their
points against the spec and control limits with the rule-3 point marked, the recent parts show their values
and verdicts, ``]`` / ``[`` switch the characteristic and ``r`` asks again."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import DataTable

from cellctl.engine import OrderRequest
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.schema.recipe import SpcConfig
from cellctl.tui.panes.quality import QualityPane
from cellctl.tui.widgets.control_chart import OUT_OF_CONTROL, ControlChart
from tests.integration.test_api import Cell, serving
from tests.softcell import soft_cell
from tests.tui.conftest import PaneApp, RecordingLink, completed, linked, notes, start_order, until
from tests.unit.test_engine_spc import DRIFT, STEADY, widths

PARTS = len(STEADY + DRIFT)


def charting(config: LoadedConfig, *characteristics: str) -> LoadedConfig:
    """``config`` with oslo's ``characteristics`` charted (I-MR, limits from the first 10 parts, no hold)."""
    oslo = config.recipes["oslo"]
    quality = dict(oslo.quality)
    for name in characteristics:
        quality[name] = quality[name].model_copy(update={"spc": SpcConfig(baseline=10)})
    recipe = oslo.model_copy(update={"quality": quality})
    return dataclasses.replace(config, recipes={**config.recipes, "oslo": recipe})


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    """A cell whose oslo seat width drifts upward after a steady baseline (rule 3 on the last part)."""
    config = charting(load_config(config_dir), "seat_width", "seat_depth")
    async with serving(config, soft_cell(config.cell, measure=widths(STEADY + DRIFT)), tmp_path) as cell:
        yield cell


async def make_parts(cell: Cell) -> str:
    return await start_order(cell, OrderRequest("PO-1", "oslo", PARTS))


def chart_text(app: PaneApp) -> str:
    return str(app.pane.query_one("#chart", ControlChart).render())


async def test_the_chart_shows_the_parts_made_with_limits_and_the_rule_violation(cell: Cell) -> None:
    app = PaneApp(QualityPane, RecordingLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.link, RecordingLink) and isinstance(app.pane, QualityPane)
        pane = app.pane
        await until(pilot, lambda: linked(app), "the link")
        # When the cell makes the parts
        job_id = await make_parts(cell)
        await until(pilot, lambda: completed(cell, job_id), "the job")

        # Then the chart of oslo/seat_width holds every part, drawn against the spec and control limits
        await until(
            pilot,
            lambda: len((pane._chart_reply or {}).get("points", [])) == PARTS and not pane._fetching,
            "every part on the chart",
        )
        assert pane.selected == ("oslo", "seat_width")
        text = chart_text(app)
        for label in ("USL 421.2", "LSL 418.8", "UCL 420.53", "LCL 419.47", "CL 420"):
            assert label in text
        # the last part completed rule 3: marked on the chart and in the parts list
        assert text.count(OUT_OF_CONTROL) == 1
        table = pane.query_one("#parts", DataTable)
        last = cell.engine.spc_chart("oslo", "seat_width").points[-1]

        def newest() -> list[str]:
            return [str(c) for c in table.get_row_at(0)]

        # (the verdict comes with the part's event, which may follow the chart)
        await until(pilot, lambda: newest()[-1] != "-", "the newest part's verdict")
        assert newest() == [last.label, f"{last.value:.6g}", "in", "3", "pass"]
        # and the summary (from the status) names the violation
        await until(pilot, lambda: "rule 3" in str(pane.query_one("#summary").render()), "the summary")
        assert "oslo / seat_width ] 1/2" in str(pane.query_one("#summary").render())


async def test_brackets_switch_the_characteristic_and_r_asks_again(cell: Cell) -> None:
    app = PaneApp(QualityPane, RecordingLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.link, RecordingLink) and isinstance(app.pane, QualityPane)
        pane, link = app.pane, app.link
        await until(pilot, lambda: linked(app), "the link")
        job_id = await make_parts(cell)
        await until(pilot, lambda: completed(cell, job_id), "the job")
        await until(pilot, lambda: pane.selected == ("oslo", "seat_width"), "the first chart")

        await pilot.press("right_square_bracket")
        await until(pilot, lambda: pane.selected == ("oslo", "seat_depth"), "the next chart")
        await until(
            pilot, lambda: ("spc", {"variant": "oslo", "characteristic": "seat_depth"}) in link.sent, "ask"
        )
        await until(pilot, lambda: "USL 401.2" in chart_text(app), "the depth chart")

        await pilot.press("left_square_bracket")
        await until(pilot, lambda: pane.selected == ("oslo", "seat_width"), "back to the first")

        await until(pilot, lambda: not pane._fetching, "the chart")
        asked = len(link.sent)
        await pilot.press("r")
        await until(pilot, lambda: len(link.sent) > asked, "asked again")
        assert link.sent[-1] == ("spc", {"variant": "oslo", "characteristic": "seat_width"})
        assert notes(app) == []


async def test_before_any_part_nothing_is_charted_and_r_says_so(cell: Cell) -> None:
    app = PaneApp(QualityPane, RecordingLink(cell.path))
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.link, RecordingLink)
        await until(pilot, lambda: linked(app), "the link")
        await pilot.press("r")
        await until(pilot, lambda: bool(notes(app)), "a notification")
        assert notes(app) == [": No charted characteristic yet"]
        assert "No charted characteristic yet" in str(app.pane.query_one("#summary").render())
