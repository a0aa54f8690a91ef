"""The panes' pure parts and canned-controller behaviour: the chart drawing, the form's parameter parsing, a
step in doubt confirmed without evidence, and the text of a proposal."""

from __future__ import annotations

from typing import Any

import pytest

from cellctl.tui.pane import Outcome
from cellctl.tui.panes.changeover import ChangeoverPane, OperatorStepModal, seconds, short_name
from cellctl.tui.panes.orders import parse_parameters, proposal_text, variants_seen
from cellctl.tui.widgets.control_chart import LABEL_WIDTH, OUT_OF_CONTROL, OUT_OF_SPEC, Chart, draw
from tests.tui.canned import CHART, STATUS, WAITING
from tests.tui.conftest import PaneApp, notes, on_top, until
from tests.tui.fakes import FakeLink


def reply(values: list[float], violations: dict[int, list[int]] | None = None) -> dict[str, Any]:
    return {
        **CHART,
        "points": [
            {"index": i, "value": v, "label": f"P-{i}", "violations": (violations or {}).get(i, [])}
            for i, v in enumerate(values, start=1)
        ],
    }


def test_the_chart_fits_the_width_and_height_it_is_given() -> None:
    lines = draw(Chart.from_reply(CHART), 80, 12).plain.split("\n")

    assert len(lines) == 12
    assert max(len(line) for line in lines) <= 80
    assert all(line[80 - LABEL_WIDTH - 1] in "│┤" for line in lines)


def test_the_chart_marks_out_of_control_and_out_of_spec_points() -> None:
    chart = Chart.from_reply(reply([420.0, 420.1, 420.4, 421.9], {3: [3], 4: [1]}))

    text = draw(chart, 60, 10).plain

    assert text.count(OUT_OF_CONTROL) == 1  # P-3: a rule, inside the spec
    assert text.count(OUT_OF_SPEC) == 1  # P-4: beyond the USL (a rule too, but out of spec wins)


def test_the_chart_shows_the_newest_points_that_fit() -> None:
    values = [420.0] * 100 + [421.9]
    text = draw(Chart.from_reply(reply(values)), 40, 8).plain

    assert OUT_OF_SPEC in text


def test_a_chart_without_points_or_limits_says_so() -> None:
    chart = Chart.from_reply({"kind": "I-MR", "points": [], "limits": None, "spec": {}})

    assert draw(chart, 40, 8).plain == "no points yet"
    assert not chart.has_limits


def test_a_chart_whose_baseline_is_filling_draws_the_spec_only() -> None:
    chart = Chart.from_reply({**reply([420.0, 420.2]), "limits": None})

    text = draw(chart, 40, 8).plain

    assert "USL" in text and "LSL" in text and "UCL" not in text


def test_parameters_parse_from_name_value_pairs() -> None:
    assert parse_parameters("staple_pitch=12 width=3.5, depth=-1") == {
        "staple_pitch": 12.0,
        "width": 3.5,
        "depth": -1.0,
    }
    assert parse_parameters("  ") == {}


@pytest.mark.parametrize("bad", ["pitch", "=3", "pitch=wide", "pitch=nan"])
def test_a_bad_parameter_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="parameter"):
        parse_parameters(bad)


def test_variants_seen_come_from_the_jobs_and_the_setup() -> None:
    assert variants_seen(STATUS) == ["bergen", "oslo", "tromso"]


def test_a_proposal_equal_to_the_queue_is_none() -> None:
    assert "none" in proposal_text({"job_ids": ["a", "b"]}, ["a", "b"]).plain
    assert (
        "saves 30 s"
        in proposal_text(
            {"job_ids": ["b", "a"], "changeover_s": 10.0, "queue_changeover_s": 40.0}, ["a", "b"]
        ).plain
    )


def test_seconds_and_step_names_read_short() -> None:
    assert [seconds(v) for v in (0.04, 9.94, 12.4, 125.0, None)] == ["0.0", "9.9", "12", "2m05", "-"]
    assert short_name({"id": "fixture:fixture_move", "device": "fixture"}) == "fixture_move"
    assert short_name({"id": "operator:load_fabric", "device": "stapler"}) == "operator:load_fabric"


async def test_a_step_in_doubt_is_confirmed_with_enter_and_no_evidence() -> None:
    prompt = {
        "changeover": "CO-0042",
        "step": "fixture:fixture_move",
        "device": "fixture",
        "kind": "in_doubt",
        "instruction": "Check the fixture reached its position, then confirm",
        "evidence": None,
        "since": 1.0,
    }
    link = FakeLink({**WAITING, "prompts": [prompt]}, {"confirm": Outcome(True, {})})
    app = PaneApp(ChangeoverPane, link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: on_top(app, OperatorStepModal), "the modal")
        shown = " ".join(str(s.render()) for s in app.screen.query("Static"))
        assert "Step in doubt" in shown and "Enter: confirm the step is done" in shown
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, OperatorStepModal), "the modal to close")
    assert link.sent == [("confirm", {"step": "fixture:fixture_move"})]
    assert notes(app) == [": step fixture:fixture_move confirmed"]


async def test_an_empty_scan_is_not_sent() -> None:
    link = FakeLink(WAITING)
    app = PaneApp(ChangeoverPane, link)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: on_top(app, OperatorStepModal), "the modal")
        await pilot.press("enter")
        refusal = app.screen.query_one("#refusal")
        await until(pilot, lambda: "scan the evidence first" in str(refusal.render()), "the hint")
    assert link.sent == []
