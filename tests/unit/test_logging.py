"""Log lines: JSON in service mode with the cell, job, plan and step bound; console on a terminal."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from cellctl.core.events import JobStatus
from cellctl.engine import Engine, OrderRequest, State
from cellctl.runtime.logging import configure_logging
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell
from tests.unit.test_engine import OSLO_GOOD, FakeSink, GaugeScript, is_job, reset_and_start, running

T = 5.0


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)
        structlog.contextvars.clear_contextvars()


class FakeStderr(io.StringIO):
    """A stderr that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_changeover_and_step_lines_carry_cell_job_plan_and_step(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given JSON logging (as `cellctl run --log-format json` under systemd) and a soft cell,
    config: LoadedConfig = load_config(config_dir)
    configure_logging("info", "json")
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD])), sink)
    # when one order runs through its changeover and its part,
    async with running(engine):
        order = await engine.submit(OrderRequest("PO-1", "oslo", 1), by="mes")
        await reset_and_start(engine)
        await sink.wait_for(is_job(JobStatus.COMPLETED, order.job_id))
        await engine.wait_for(State.SUSPENDED, timeout=T)

    # then every line about a step names the cell, the job, the plan (changeover id) and the step.
    lines = json_lines(capsys.readouterr().err)
    steps = [line for line in lines if line["event"] in ("step started", "step done")]
    assert steps, "no step lines logged"
    cell = config.cell.identity.cell
    plans = {line.get("plan") for line in steps}
    assert len(plans) == 1 and None not in plans
    for line in steps:
        assert line["cell"] == cell, line
        assert line["job"] == order.job_id, line
        assert line["step"], line
    about_changeover = [line for line in lines if "changeover" in line["event"]]
    assert about_changeover
    for line in about_changeover:
        assert (line.get("cell"), line.get("job"), line.get("plan")) == (cell, order.job_id, *plans), line


@pytest.mark.parametrize(
    ("tty", "renderer"), [(True, structlog.dev.ConsoleRenderer), (False, structlog.processors.JSONRenderer)]
)
def test_auto_picks_console_on_a_terminal_and_json_otherwise(
    monkeypatch: pytest.MonkeyPatch, tty: bool, renderer: type
) -> None:
    stderr = FakeStderr(tty)
    monkeypatch.setattr("sys.stderr", stderr)

    configure_logging("info", "auto")
    structlog.get_logger("test").info("hello", job="J-1")

    assert isinstance(structlog.get_config()["processors"][-1], renderer)
    written = stderr.getvalue()
    assert "hello" in written and "J-1" in written
    if not tty:
        assert json.loads(written.splitlines()[-1])["job"] == "J-1"
