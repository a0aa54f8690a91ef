"""Who may do what on the control socket: a peer's role from the users table, its groups, or the default.

The controller's own user and root are integrators (they can edit the cell file and restart the controller
anyway). Otherwise the ``users`` table decides, else the highest role of any group the peer's user is in
(``os.getgrouplist``: its primary group and every supplementary one), else ``default``. Group membership is
read through NSS, which may block on a directory service, so it is looked up off the event loop and cached
per (user, gid) for the life of the server.
"""

from __future__ import annotations

import asyncio
import grp
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from cellctl.api.protocol import Role

log = structlog.get_logger("cellctl.api")

GroupsOf = Callable[[str, int], Sequence[str]]
"""(user name, primary gid) -> names of every group the user is in; called in a worker thread."""


def system_groups(user: str, gid: int) -> list[str]:
    """The names of ``user``'s groups (primary ``gid`` included) from the system; blocking (NSS)."""
    try:
        gids = os.getgrouplist(user, gid)
    except OSError:
        gids = [gid]  # e.g. a uid without a passwd entry: its primary group is all we know
    names = []
    for each in gids:
        try:
            names.append(grp.getgrgid(each).gr_name)
        except KeyError:
            names.append(str(each))
    return names


@dataclass
class RolePolicy:
    """Maps a socket peer to its Role; ``groups_of`` is the seam tests replace."""

    users: Mapping[str, Role] = field(default_factory=dict)
    groups: Mapping[str, Role] = field(default_factory=dict)
    default: Role = Role.VIEWER
    integrator_uids: frozenset[int] = field(default_factory=lambda: frozenset({0, os.getuid()}))
    """Root and the controller's own user: integrators whatever the tables say."""
    groups_of: GroupsOf = system_groups
    _cache: dict[tuple[str, int], Role] = field(default_factory=dict, repr=False)

    async def role_of(self, uid: int, gid: int, user: str) -> Role:
        """The role of the peer ``uid`` (login ``user``, primary group ``gid``)."""
        if uid in self.integrator_uids:
            return Role.INTEGRATOR
        if user in self.users:
            return self.users[user]
        key = (user, gid)
        role = self._cache.get(key)
        if role is None:
            role = self.default
            if self.groups:
                names = await asyncio.to_thread(self.groups_of, user, gid)
                ranked = [self.groups[name] for name in names if name in self.groups]
                if ranked:
                    role = max(ranked, key=lambda r: r.rank)
            self._cache[key] = role
            log.debug("caller role resolved", user=user, gid=gid, role=role.value)
        return role
