"""A control chart over the control socket and through `cellctl ctl spc`: the real Engine on a soft cell whose
oslo seat width is charted; reading a chart is not an operator action."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellctl.api.client import ControlClient
from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService
from cellctl.core.events import JobEvent, JobStatus, OperatorAction
from cellctl.engine import Engine, OrderRequest, State
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from cellctl.schema.recipe import SpcConfig
from tests.integration.test_api import WAIT_S, Cell, ListSink, run_ctl, start, stop
from tests.softcell import soft_cell
from tests.unit.test_engine_spc import DRIFT, STEADY, widths, with_spc

PARTS = len(STEADY + DRIFT)


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    """A cell that made oslo parts drifting upward after a 10-point baseline (warnings only, no hold)."""
    config = with_spc(load_config(config_dir), SpcConfig(baseline=10))
    sink = ListSink()
    engine = Engine(config, soft_cell(config.cell, measure=widths(STEADY + DRIFT)), sink)
    engine_task = asyncio.get_running_loop().create_task(engine.run(), name="test:engine")
    await engine.wait_for(State.STOPPED, timeout=WAIT_S)
    server = ControlServer(
        tmp_path / "cell.sock", ControlService(engine, identity=config.cell.identity, sink=sink)
    )
    server_task = await start(server)
    await engine.submit(OrderRequest("PO-1", "oslo", PARTS), by="mes")
    await engine.command("reset", by="op")
    await engine.wait_for(State.IDLE, timeout=WAIT_S)
    await engine.command("start", by="op")
    # The job completes, then the starved cell suspends: every part is charted by then.
    await engine.wait_for(State.SUSPENDED, timeout=WAIT_S)
    assert any(isinstance(e, JobEvent) and e.status is JobStatus.COMPLETED for e in sink.events)
    yield Cell(server.path, engine, sink)
    await stop(server_task)
    await stop(engine_task)


async def test_spc_over_the_socket_returns_points_control_and_spec_limits(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        chart = await client.request("spc", variant="oslo", characteristic="seat_width")

    assert chart["kind"] == "I-MR"
    assert [p["value"] for p in chart["points"]] == pytest.approx(STEADY + DRIFT)
    assert chart["limits"]["centre"] == pytest.approx(420.0)
    assert chart["limits"]["ucl"] == pytest.approx(420.0 + 3 * 0.2 / 1.128)
    assert chart["spec"] == {"lsl": 418.8, "usl": 421.2, "nominal": 420.0}
    assert chart["points"][-1]["violations"] == [3]
    assert chart["last_violation"]["index"] == PARTS
    assert not [e for e in cell.sink.events if isinstance(e, OperatorAction)]


async def test_spc_for_a_characteristic_without_a_chart_is_refused_naming_the_charted_ones(
    cell: Cell,
) -> None:
    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request("spc", variant="oslo", characteristic="seat_depth")

    assert info.value.code == "job_error"
    assert "charted: seat_width" in str(info.value)


async def test_ctl_spc_prints_the_chart_and_ctl_status_its_summary(cell: Cell) -> None:
    ran = await run_ctl("--socket", str(cell.path), "spc", "oslo", "seat_width", "--last", "5")
    as_json = await run_ctl("--socket", str(cell.path), "spc", "oslo", "seat_width", "--json")
    status = await run_ctl("--socket", str(cell.path), "status")

    assert (ran.code, as_json.code, status.code) == (0, 0, 0), ran.err
    assert "oslo/seat_width: I-MR chart, baseline 10 points" in ran.out
    assert "control limits [419.468, 420.532]" in ran.out and "spec [418.8, 421.2]" in ran.out
    rows = [line for line in ran.out.splitlines() if line.lstrip()[:1].isdigit()]
    assert len(rows) == 5 and rows[-1].rstrip().endswith("rule 3")
    assert len(json.loads(as_json.out)["points"]) == PARTS
    [spc_line] = [line for line in status.out.splitlines() if line.startswith("spc")]
    assert "seat_width (I-MR, 14 pts)" in spc_line and "last violation: rule 3" in spc_line


async def test_ctl_spc_for_an_unknown_variant_exits_refused(cell: Cell) -> None:
    ran = await run_ctl("--socket", str(cell.path), "spc", "nope", "seat_width")

    assert ran.code == 1
    assert "no recipe for variant 'nope'" in ran.err
