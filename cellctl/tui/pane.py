"""What every screen of the operator TUI shares: the link to the controller it acts through, and ``Pane``.

The TUI is a client of the control socket and nothing else (an import contract keeps it so): a ``Link``
holds the newest status snapshot and sends requests; each screen is a ``Pane`` that renders that snapshot
and turns keys into requests. Refusals (a role that may not, a command the state does not allow, a wrong
scan) come back as an ``Outcome`` and are shown, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from textual.widget import Widget

from cellctl.api.protocol import Role, required_role


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one request: ``result`` when ``ok``, else the server's error ``code`` and ``message``
    (``code`` ``unreachable`` when the controller could not be asked at all)."""

    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    message: str = ""


class Link(Protocol):
    """The TUI's connection to one controller (``cellctl.tui.link.ControllerLink`` is the real one)."""

    @property
    def connected(self) -> bool:
        """True while the controller answers; False while it is away (the app says so and keeps trying)."""
        ...

    @property
    def status(self) -> dict[str, Any] | None:
        """The newest status snapshot (the ``status`` reply), None before the first."""
        ...

    async def request(self, cmd: str, **args: Any) -> Outcome:
        """Send one request and wait for its reply; never raises for a refusal or a lost controller."""
        ...


class Pane(Widget):
    """One screen of the TUI. The app calls ``show`` with every new status snapshot and ``event`` with every
    pushed event; actions are key bindings (shown in the footer) that call ``act``."""

    DEFAULT_CSS = """
    Pane {
        height: 1fr;
    }
    """

    title: str = ""
    """The tab's label."""

    ACTION_COMMANDS: ClassVar[dict[str, str]] = {}
    """Action name -> the API command it sends: its key is shown only to a role that may send that command."""

    def __init__(self, link: Link, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.link = link

    def show(self, status: dict[str, Any]) -> None:
        """Render a new status snapshot (on the UI thread, after every change the controller reports)."""

    def event(self, push: dict[str, Any]) -> None:
        """A pushed event: ``{"seq", "event": {"kind", "stream", "ts", "data"}}``."""

    def may(self, cmd: str, **args: Any) -> bool:
        """Whether this connection's role may send ``cmd`` (True while the role is not known yet: the
        controller decides, and a refusal is shown)."""
        caller = getattr(self.link, "caller", None)  # the hello reply's caller, when the link keeps it
        role = caller.get("role") if isinstance(caller, dict) else None
        if role not in _ROLES:
            return True
        return _ROLES.index(role) >= _ROLES.index(required_role(cmd, args))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A key whose command the role may not send is neither shown in the footer nor run."""
        cmd = self.ACTION_COMMANDS.get(action)
        return True if cmd is None else self.may(cmd)

    async def act(self, cmd: str, *, done: str = "", **args: Any) -> Outcome:
        """Send ``cmd``; notify ``done`` on success, the refusal (code and message) as an error otherwise."""
        outcome = await self.link.request(cmd, **args)
        if outcome.ok:
            if done:
                self.notify(done)
        else:
            self.notify(f"{outcome.code}: {outcome.message}", title=f"{cmd} refused", severity="error")
        return outcome


_ROLES: tuple[str, ...] = tuple(role.value for role in Role)
"""The roles, lowest first."""
