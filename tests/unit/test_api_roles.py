"""A control socket peer's role: the controller's user and root, the users table, the groups, the default."""

from __future__ import annotations

import grp
import os
import pwd

from cellctl.api.protocol import Role
from cellctl.api.roles import RolePolicy, system_groups
from cellctl.runtime.app import role_policy
from cellctl.schema.cell import ApiConfig


class FakeGroups:
    """Stands in for the system's group database; counts the look-ups."""

    def __init__(self, members: dict[str, list[str]]) -> None:
        self.members = members
        self.asked: list[tuple[str, int]] = []

    def __call__(self, user: str, gid: int) -> list[str]:
        self.asked.append((user, gid))
        return self.members.get(user, [])


GROUPS = {"cellctl-viewers": Role.VIEWER, "cellctl-operators": Role.OPERATOR, "fitters": Role.INTEGRATOR}


def policy(members: dict[str, list[str]], **kwargs: object) -> tuple[RolePolicy, FakeGroups]:
    groups = FakeGroups(members)
    return RolePolicy(groups=GROUPS, integrator_uids=frozenset({0, 990}), groups_of=groups, **kwargs), groups  # type: ignore[arg-type]


async def test_root_and_the_controllers_own_user_are_integrators_whatever_the_tables_say() -> None:
    roles, _ = policy({}, users={"cellctl": Role.VIEWER})

    assert await roles.role_of(0, 0, "root") is Role.INTEGRATOR
    assert await roles.role_of(990, 990, "cellctl") is Role.INTEGRATOR


async def test_the_users_table_wins_over_the_groups() -> None:
    roles, groups = policy({"alice": ["cellctl-viewers"]}, users={"alice": Role.INTEGRATOR})

    assert await roles.role_of(1001, 100, "alice") is Role.INTEGRATOR
    assert groups.asked == []


async def test_the_highest_role_of_the_users_groups_counts() -> None:
    roles, _ = policy({"bob": ["users", "cellctl-viewers", "cellctl-operators"]})

    assert await roles.role_of(1002, 100, "bob") is Role.OPERATOR


async def test_a_user_in_no_listed_group_gets_the_default() -> None:
    roles, _ = policy({"eve": ["users"]})
    strict, _ = policy({"eve": ["users"]}, default=Role.OPERATOR)

    assert await roles.role_of(1003, 100, "eve") is Role.VIEWER
    assert await strict.role_of(1003, 100, "eve") is Role.OPERATOR


async def test_group_membership_is_looked_up_once_per_user() -> None:
    roles, groups = policy({"bob": ["cellctl-operators"]})

    for _ in range(3):
        assert await roles.role_of(1002, 100, "bob") is Role.OPERATOR

    assert groups.asked == [("bob", 100)]


def test_the_system_groups_of_this_process_include_its_primary_group() -> None:
    user = pwd.getpwuid(os.getuid()).pw_name

    assert grp.getgrgid(os.getgid()).gr_name in system_groups(user, os.getgid())


def test_a_user_without_a_passwd_entry_has_its_primary_group_only() -> None:
    assert system_groups("no-such-user-cellctl", os.getgid()) == [grp.getgrgid(os.getgid()).gr_name]


def test_the_cell_files_roles_become_the_policy() -> None:
    api = ApiConfig.model_validate(
        {
            "group": "cellctl-operators",
            "roles": {
                "groups": {"cellctl-operators": "operator"},
                "users": {"alice": "integrator"},
                "default": "viewer",
            },
        }
    )

    roles = role_policy(api)

    assert roles.users == {"alice": Role.INTEGRATOR}
    assert roles.groups == {"cellctl-operators": Role.OPERATOR}
    assert roles.default is Role.VIEWER
    assert api.group == "cellctl-operators"
