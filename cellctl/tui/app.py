"""The operator TUI's application: a header line, one tab per pane, the footer, and the link that feeds them.

The app owns the link's lifetime (``ControllerLink.run`` is a worker started on mount and cancelled on exit)
and is its listener: every status snapshot goes to the header and every pane's ``show``, every event to every
pane's ``event``. When a changeover step starts waiting for a person, the app brings the Changeover tab
forward once per new prompt and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import Footer, Static, TabbedContent, TabPane

from cellctl.tui.format import lease_text
from cellctl.tui.link import ControllerLink, LinkState
from cellctl.tui.pane import Link, Pane
from cellctl.tui.panes import PANES, TAB_ORDER


def tab_id(pane: type[Pane]) -> str:
    """The id of a pane's tab: ``tab-overview``."""
    return f"tab-{pane.title.lower()}"


def ordered(panes: Sequence[type[Pane]]) -> list[type[Pane]]:
    """The panes in ``TAB_ORDER`` (others after, as given)."""
    return sorted(panes, key=tab_number)


def tab_number(pane: type[Pane]) -> int:
    """The key that shows a pane's tab: its place in ``TAB_ORDER`` (1-6), whichever panes are mounted."""
    return TAB_ORDER.index(pane.title) + 1 if pane.title in TAB_ORDER else len(TAB_ORDER) + 1


class HeaderLine(Horizontal):
    """One line: cell, PackML state, mode and lease holder on the left; the link's state on the right."""

    DEFAULT_CSS = """
    HeaderLine {
        dock: top;
        height: 1;
        background: $panel;
    }
    HeaderLine #hd-cell {
        width: 1fr;
        padding: 0 1;
    }
    HeaderLine #hd-link {
        width: auto;
        padding: 0 1;
        color: $success;
    }
    HeaderLine.-away {
        background: $warning 30%;
    }
    HeaderLine.-away #hd-link {
        background: $warning;
        color: $background;
        text-style: bold;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static("cellctl", id="hd-cell")
        yield Static("connecting...", id="hd-link")

    def show(self, status: dict[str, Any] | None, caller: dict[str, Any]) -> None:
        """The cell's line from a status snapshot (kept as it was while the controller is away)."""
        if status is None:
            return
        line = Text.assemble(
            (str(status.get("cell", "?")), "bold"),
            "  ",
            (str(status.get("state", "?")), "bold reverse"),
            "  ",
            (str(status.get("mode", "?")), ""),
        )
        if "lease" in status:
            line.append("  lease ", "dim")
            line.append_text(lease_text(status, caller))
        self.query_one("#hd-cell", Static).update(line)

    def link(self, state: LinkState) -> None:
        """Say whether the controller answers; in a warning style while it does not."""
        self.set_class(not state.connected, "-away")
        text = (
            "connected"
            if state.connected
            else f"controller away - reconnecting (attempt {state.attempt})"
            if state.attempt
            else "connecting..."
        )
        self.query_one("#hd-link", Static).update(text)


class CellApp(App[None]):
    """``cellctl tui``: run one cell from a terminal; every action is a key shown in the footer."""

    TITLE = "cellctl"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    TabbedContent {
        height: 1fr;
    }
    TabPane {
        padding: 0;
    }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        *(Binding(str(n), f"tab({n - 1})", f"tab {n}", show=False) for n in range(1, 7)),
    ]

    def __init__(self, link: Link, *, panes: Sequence[type[Pane]] = PANES) -> None:
        super().__init__()
        self.link = link
        self.pane_types = ordered(panes)
        self._prompts: frozenset[str] = frozenset()
        self._state = LinkState(connected=link.connected)

    def compose(self) -> ComposeResult:
        yield HeaderLine(id="header")
        with TabbedContent(id="tabs"):
            for pane in self.pane_types:
                with TabPane(f"{tab_number(pane)} {pane.title}", id=tab_id(pane)):
                    yield pane(self.link, id=pane.title.lower())
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(HeaderLine).link(self._state)
        if isinstance(self.link, ControllerLink):
            self.run_worker(self.link.run(self), name="tui-link", group="link", exit_on_error=True)
        elif self.link.status is not None:
            self.link_status(self.link.status)
        self._focus_pane(self.pane_types[0])

    # --- what the link reports --------------------------------------------------------------------------

    @property
    def panes(self) -> list[Pane]:
        """The mounted panes, in tab order."""
        return list(self.query(Pane))

    def link_state(self, state: LinkState) -> None:
        """The controller answers again, or went away (the header says so, in a warning style)."""
        self._state = state
        header = self._header()
        if header is not None:
            header.link(state)

    def link_status(self, status: dict[str, Any]) -> None:
        """A new snapshot: header, every pane, and a new operator prompt brings the Changeover tab forward."""
        header = self._header()
        if header is None or not self.is_running:
            # Closing: the panes' widgets may be gone (the link reports until its worker is cancelled).
            return
        header.show(status, self._caller())
        for pane in self.panes:
            pane.show(status)
        self._follow_prompts(status)

    def link_event(self, push: dict[str, Any]) -> None:
        """A pushed event, to every pane."""
        if not self.is_running:
            return
        for pane in self.panes:
            pane.event(push)

    def _header(self) -> HeaderLine | None:
        """The header, None while the app is closing (the link may report until its worker is cancelled)."""
        try:
            return self.query_one(HeaderLine)
        except NoMatches:
            return None

    def _caller(self) -> dict[str, Any]:
        caller = getattr(self.link, "caller", None)
        return caller if isinstance(caller, dict) else {}

    def _follow_prompts(self, status: dict[str, Any]) -> None:
        prompts = [p for p in status.get("prompts") or () if isinstance(p, dict)]
        current = frozenset(str(p.get("step", "")) for p in prompts)
        new = [p for p in prompts if str(p.get("step", "")) not in self._prompts]
        self._prompts = current
        if not new:
            return
        changeover = next((p for p in self.pane_types if p.title == "Changeover"), None)
        if changeover is not None:
            self.query_one(TabbedContent).active = tab_id(changeover)
        prompt = new[0]
        self.notify(
            str(prompt.get("instruction") or "a step waits for the operator"),
            title=f"Step {prompt.get('step', '?')} waits for you",
            severity="warning",
            timeout=10,
        )

    # --- keys -------------------------------------------------------------------------------------------

    def action_tab(self, index: int) -> None:
        """Show the tab ``TAB_ORDER[index]`` (keys 1-6), if that pane is mounted."""
        pane = next((p for p in self.pane_types if tab_number(p) == index + 1), None)
        if pane is not None:
            self.query_one(TabbedContent).active = tab_id(pane)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, message: TabbedContent.TabActivated) -> None:
        pane = next((p for p in self.pane_types if tab_id(p) == message.pane.id), None)
        if pane is not None:
            self._focus_pane(pane)

    def _focus_pane(self, pane_type: type[Pane]) -> None:
        """Focus the pane's first focusable widget (or the pane) so its keys work and show in the footer."""
        pane = self.query_one(f"#{pane_type.title.lower()}", Pane)
        child: Widget
        for child in pane.query("*"):
            if child.focusable:
                child.focus()
                return
        if pane.focusable:
            pane.focus()
