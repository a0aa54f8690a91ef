"""The first-article gate on a soft cell: after a changeover the cell qualifies until N consecutive passes;
a failed first article holds it with a reason; Unhold restarts the count; a sign-off ends it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.core.events import (
    AlarmEvent,
    FirstArticleEvent,
    FirstArticleStatus,
    JobStatus,
    PartProduced,
    Verdict,
)
from cellctl.core.tags import TagValue
from cellctl.engine import Engine, OrderRequest, State
from cellctl.errors import JobError
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell
from tests.unit.test_engine import (
    BERGEN_GOOD,
    OSLO_FAIL,
    OSLO_GOOD,
    FakeSink,
    GaugeScript,
    is_job,
    reset_and_start,
    running,
)

BERGEN_FAIL = {**BERGEN_GOOD, "staple_height_mm": 2.0}

OSLO_ON_DEVICES: dict[str, dict[str, TagValue]] = {
    "toolchanger": {"tool_current": 1, "preselect": 1},
    "robot1": {"active_program": 11},
    "fixture": {"width_act": 420.0, "depth_act": 400.0, "clamped": True},
    "stapler": {"force_sp": 800.0},
}


@pytest.fixture
def config(config_dir: Path) -> LoadedConfig:
    return load_config(config_dir)


def gate_events(sink: FakeSink) -> list[tuple[FirstArticleStatus, int]]:
    return [(e.status, e.passes) for e in sink.of(FirstArticleEvent)]


def marks(sink: FakeSink) -> list[tuple[int, Verdict, bool]]:
    return [(p.index, p.verdict, p.first_article) for p in sink.of(PartProduced)]


def test_the_example_recipes_ask_for_a_gate_and_a_recipe_without_one_has_none(config: LoadedConfig) -> None:
    assert {v: r.first_article.parts for v, r in config.recipes.items()} == {
        "oslo": 1,
        "bergen": 2,
        "tromso": 1,
    }
    bare = config.recipes["oslo"].model_copy(
        update={"first_article": type(config.recipes["oslo"].first_article)()}
    )
    assert bare.first_article.parts == 0


async def test_the_first_pass_after_a_changeover_ends_a_one_part_gate(config: LoadedConfig) -> None:
    # Given oslo (one part to qualify) x2 on an empty cell, the first part good and the second bad
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=GaugeScript([OSLO_GOOD, OSLO_FAIL])), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        # When the cell changes over and produces
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=5)
        status = engine.status()

    # Then the first part was a first article that passed the gate; the bad second part did not hold the cell
    assert marks(sink) == [(1, Verdict.PASS, True), (2, Verdict.FAIL, False)]
    assert gate_events(sink) == [(FirstArticleStatus.STARTED, 0), (FirstArticleStatus.PASSED, 1)]
    passed = sink.of(FirstArticleEvent)[-1]
    assert (passed.job, passed.variant, passed.part, passed.needed) == (
        job.job_id,
        "oslo",
        f"{job.job_id}-0001",
        1,
    )
    assert status.qualification is None
    assert "Held" not in sink.states()


async def test_a_failed_first_article_holds_the_cell_naming_the_part_and_the_characteristic(
    config: LoadedConfig,
) -> None:
    # Given oslo x3 whose first part is out of width
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=GaugeScript([OSLO_FAIL, OSLO_GOOD])), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "oslo", 3), by="mes")
        await reset_and_start(engine)
        # When the first article fails
        await engine.wait_for(State.HELD, timeout=5)
        status = engine.status()

    # Then the cell holds with a reason naming the job, part and characteristic, and an alarm is raised
    assert f"first article {job.job_id}-0001" in status.reason
    assert "part 1 is fail" in status.reason and "seat_width 425 mm fail" in status.reason
    [alarm] = sink.of(AlarmEvent)
    assert alarm.active and alarm.message == status.reason
    assert marks(sink) == [(1, Verdict.FAIL, True)]
    assert gate_events(sink) == [(FirstArticleStatus.STARTED, 0), (FirstArticleStatus.FAILED, 0)]
    assert status.qualification is not None
    assert (status.qualification.passes, status.qualification.failures, status.qualification.needed) == (
        0,
        1,
        1,
    )


async def test_after_unhold_qualification_counts_again_from_zero(config: LoadedConfig) -> None:
    # Given bergen (two consecutive passes to qualify) x4: pass, fail, pass, pass
    gauge = GaugeScript([BERGEN_GOOD, BERGEN_FAIL, BERGEN_GOOD, BERGEN_GOOD])
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=gauge), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "bergen", 4), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=5)
        held = engine.status().qualification

        # When the operator unholds
        await engine.command("unhold", by="op")
        await sink.wait_for(is_job(JobStatus.COMPLETED, job.job_id))
        after = engine.status()

    # Then the one pass before the failure did not count: two more consecutive passes closed the gate
    assert held is not None and (held.passes, held.failures) == (0, 1)
    assert marks(sink) == [
        (1, Verdict.PASS, True),
        (2, Verdict.FAIL, True),
        (3, Verdict.PASS, True),
        (4, Verdict.PASS, True),
    ]
    assert gate_events(sink) == [
        (FirstArticleStatus.STARTED, 0),
        (FirstArticleStatus.FAILED, 0),
        (FirstArticleStatus.PASSED, 2),
    ]
    assert after.qualification is None


async def test_a_sign_off_ends_qualification_at_once_and_is_journaled_with_who(config: LoadedConfig) -> None:
    # Given bergen x3 held on a failed first article
    gauge = GaugeScript([BERGEN_FAIL, BERGEN_FAIL, BERGEN_GOOD])
    sink = FakeSink()
    engine = Engine(config, soft_cell(config.cell, measure=gauge), sink)
    async with running(engine):
        job = await engine.submit(OrderRequest("PO-1", "bergen", 3), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.HELD, timeout=5)

        # When a quality lead signs off and the operator unholds
        status = await engine.sign_off(by="qa:lena", note="height within drawing tolerance")
        await engine.command("unhold", by="op")
        await sink.wait_for(is_job(JobStatus.COMPLETED, job.job_id))

    # Then qualification ended at the sign-off: the next bad part is no first article and does not hold
    assert status.qualification is None and status.state == "Held"
    signed = sink.of(FirstArticleEvent)[-1]
    assert (signed.status, signed.by, signed.note) == (
        FirstArticleStatus.SIGNED_OFF,
        "qa:lena",
        "height within drawing tolerance",
    )
    assert marks(sink) == [(1, Verdict.FAIL, True), (2, Verdict.FAIL, False), (3, Verdict.PASS, False)]
    assert sink.states().count("Held") == 1


async def test_sign_off_without_an_open_qualification_is_refused(config: LoadedConfig) -> None:
    engine = Engine(config, soft_cell(config.cell), FakeSink())
    async with running(engine):
        with pytest.raises(JobError, match="no first-article qualification is open"):
            await engine.sign_off(by="qa:lena")


async def test_a_cell_already_set_up_for_the_variant_is_not_gated(config: LoadedConfig) -> None:
    # Given a cell read back as oslo, and an oslo job whose first part is bad
    sink = FakeSink()
    devices = soft_cell(config.cell, measure=GaugeScript([OSLO_FAIL, OSLO_GOOD]), initial=OSLO_ON_DEVICES)
    engine = Engine(config, devices, sink)
    async with running(engine):
        await engine.submit(OrderRequest("PO-1", "oslo", 2), by="mes")
        await reset_and_start(engine)
        await engine.wait_for(State.SUSPENDED, timeout=5)

    # Then no changeover ran, so no gate opened: the bad part is counted, the cell does not hold
    assert not sink.of(FirstArticleEvent)
    assert marks(sink) == [(1, Verdict.FAIL, False), (2, Verdict.PASS, False)]
    assert "Held" not in sink.states()
