"""CellApp with a canned link: tabs in order whichever panes are given, and a new operator prompt brings the
Changeover tab forward once."""

from __future__ import annotations

from typing import Any

from textual.widgets import TabbedContent

from cellctl.tui.app import CellApp
from cellctl.tui.pane import Pane
from cellctl.tui.panes import PANES, TAB_ORDER
from tests.tui.canned import IDLE, PROMPT
from tests.tui.conftest import SIZE, notes, until
from tests.tui.fakes import FakeLink


class ChangeoverStandIn(Pane):
    """Stands in for the Changeover pane (another module) to see the app bring its tab forward."""

    title = "Changeover"


OTHERS = tuple(p for p in PANES if p.title != "Changeover")
"""The default panes but the Changeover pane (the stand-in takes its place)."""


def waiting(*steps: str) -> dict[str, Any]:
    return IDLE | {"state": "Execute", "prompts": [PROMPT | {"step": s} for s in steps]}


async def test_tabs_follow_the_tab_order_whatever_order_the_panes_come_in() -> None:
    app = CellApp(FakeLink(IDLE), panes=(ChangeoverStandIn, *reversed(OTHERS)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        titles = {"Changeover", *(p.title for p in OTHERS)}
        assert [p.title for p in app.pane_types] == [t for t in TAB_ORDER if t in titles]
        await pilot.press("3")
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "tab-changeover"


async def test_a_new_prompt_brings_the_changeover_tab_forward_once_and_says_what_to_do() -> None:
    app = CellApp(FakeLink(IDLE), panes=(*OTHERS, ChangeoverStandIn))
    async with app.run_test(size=SIZE) as pilot:
        tabs = app.query_one(TabbedContent)
        await pilot.pause()
        assert tabs.active == "tab-overview"

        app.link_status(waiting("operator:load_fabric"))
        await until(pilot, lambda: tabs.active == "tab-changeover", "the Changeover tab")
        await until(pilot, lambda: len(notes(app)) == 1, "the announcement")
        assert any("operator:load_fabric" in n and "fabric roll" in n for n in notes(app)), notes(app)

        # The same prompt again (a later snapshot) leaves the operator where they went
        await pilot.press("1")
        await pilot.pause()
        app.link_status(waiting("operator:load_fabric"))
        await pilot.pause()
        assert tabs.active == "tab-overview" and len(notes(app)) == 1

        # Another step waiting is a new prompt
        app.link_status(waiting("operator:load_fabric", "operator:check_staples"))
        await until(pilot, lambda: tabs.active == "tab-changeover", "the Changeover tab again")
        await until(pilot, lambda: len(notes(app)) == 2, "the second announcement")


async def test_without_a_changeover_pane_a_prompt_is_still_announced() -> None:
    app = CellApp(FakeLink(IDLE), panes=OTHERS)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.link_status(waiting("operator:load_fabric"))
        await until(pilot, lambda: len(notes(app)) == 1, "the announcement")
        assert app.query_one(TabbedContent).active == "tab-overview"


async def test_l_takes_control_when_another_or_nobody_has_it_and_releases_it_when_this_tui_has_it() -> None:
    mine = {"user": "anna", "role": "operator", "pid": 1, "connection": 7, "since": 0.0}
    theirs = mine | {"user": "bob", "connection": 8}
    for lease, action in ((None, "take"), (theirs, "take"), (mine, "release")):
        link = FakeLink(IDLE | {"lease": lease})
        app = CellApp(link)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("l")
            await until(pilot, lambda link=link: bool(link.sent), "the lease request")
        assert link.sent == [("lease", {"action": action})], lease


def shown_actions(app: CellApp) -> set[str]:
    """The actions the footer offers now (a key whose check_action says False is neither shown nor run)."""
    return {b.binding.action for b in app.screen.active_bindings.values() if b.enabled and b.binding.show}


async def test_a_viewer_is_offered_no_key_that_changes_the_cell_and_an_operator_is() -> None:
    for role, offered in (("viewer", False), ("operator", True)):
        link = FakeLink(IDLE)
        link.caller = link.caller | {"role": role}
        app = CellApp(link)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            actions = shown_actions(app)
            assert ("packml('start')" in actions) is offered, (role, actions)
            assert ("abort" in actions) is offered, (role, actions)
            await pilot.press("2")
            await pilot.pause()
            assert ("new_order" in shown_actions(app)) is offered, role
            # A key the role may not use sends nothing
            await pilot.press("n", "escape", "1", "s")
            await pilot.pause()
        assert bool(link.sent and any(cmd == "command" for cmd, _ in link.sent)) is offered, (role, link.sent)


async def test_g_signs_off_an_open_first_article_gate_after_asking_and_is_not_offered_without_one() -> None:
    gate = {
        "changeover_id": "c1",
        "job_id": "j1",
        "variant": "tromso",
        "needed": 2,
        "passes": 1,
        "failures": 0,
        "since": 0.0,
    }
    link = FakeLink(IDLE | {"state": "Execute", "qualification": gate})
    app = CellApp(link)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "sign_off" in shown_actions(app)
        await pilot.press("g")
        await pilot.pause()
        assert "1 of 2 passes" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await until(pilot, lambda: bool(link.sent), "the sign-off request")
    assert [cmd for cmd, _ in link.sent] == ["sign_off"]
    app = CellApp(FakeLink(IDLE))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "sign_off" not in shown_actions(app)
