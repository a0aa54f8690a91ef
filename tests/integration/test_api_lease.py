"""Roles, the control lease, the socket's group and the devices view over a real Unix socket, and their ctl.

Every peer in these tests is this process (often root), so a policy handing out roles by connection stands in
for several people; the real group path is tested against this process's own primary group.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cellctl.api.client import ControlClient
from cellctl.api.protocol import Role
from cellctl.api.roles import RolePolicy
from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService
from cellctl.core.events import OperatorAction
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from tests.integration.test_api import (
    IDENTITY,
    WAIT_S,
    Cell,
    ListSink,
    ScriptedEngine,
    run_ctl,
    serving,
    start,
    stop,
)
from tests.softcell import soft_cell


class RolesByConnection(RolePolicy):
    """Hands out the next role of ``script`` to each new connection (then ``default``)."""

    def __init__(self, *script: Role) -> None:
        super().__init__(integrator_uids=frozenset())
        self.script: Iterator[Role] = iter(script)

    async def role_of(self, uid: int, gid: int, user: str) -> Role:
        return next(self.script, self.default)


@dataclass
class Served:
    path: Path
    server: ControlServer
    engine: ScriptedEngine
    sink: ListSink

    def lease_actions(self) -> list[tuple[str, str, str]]:
        """(action, role, reason) of each journaled take, take-over and release."""
        return [
            (e.args["action"], e.args["role"], e.reason)
            for e in self.sink.events
            if isinstance(e, OperatorAction) and e.action == "lease"
        ]


@asynccontextmanager
async def served(
    tmp_path: Path, roles: RolePolicy | None = None, *, group: str | None = None, devices: Any = None
) -> AsyncIterator[Served]:
    engine, sink = ScriptedEngine(), ListSink()
    service = ControlService(engine, identity=IDENTITY, sink=sink, devices=devices)
    server = ControlServer(tmp_path / "ctl.sock", service, roles=roles, group=group)
    task = await start(server)
    try:
        yield Served(server.path, server, engine, sink)
    finally:
        await stop(task)


async def refusal(client: ControlClient, cmd: str, **args: Any) -> ApiError:
    with pytest.raises(ApiError) as refused:
        await client.request(cmd, **args)
    return refused.value


async def until_released(path: Path) -> None:
    """Wait (bounded) until the server has seen a closed connection's lease go: the watch's snapshot says it
    is free, or the release is pushed."""
    async with asyncio.timeout(WAIT_S), ControlClient(path) as client:
        if (await client.watch())["status"]["lease"] is None:
            return
        async for push in client.events():
            data = push.event.data
            if push.event.kind == "operator_action" and data["args"].get("action") == "release":
                return


# --- roles ----------------------------------------------------------------------------------------------


async def test_hello_tells_the_caller_its_role(tmp_path: Path) -> None:
    async with served(tmp_path, RolesByConnection(Role.OPERATOR)) as cell, ControlClient(cell.path) as client:
        hello = await client.request("hello")

    assert hello["role"] == "operator"
    assert hello["caller"]["role"] == "operator"


async def test_a_viewer_reads_but_a_command_is_not_allowed_naming_the_role_it_needs(tmp_path: Path) -> None:
    async with served(tmp_path, RolesByConnection(Role.VIEWER)) as cell, ControlClient(cell.path) as client:
        status = await client.request("status")
        refused = await refusal(client, "command", name="reset")
        take = await refusal(client, "lease", action="take")

    assert status["state"] == "Stopped"
    assert refused.code == "not_allowed" and "needs the operator role" in str(refused)
    assert take.code == "not_allowed"
    assert cell.engine.calls == [] and cell.sink.events == []


async def test_an_operator_commands_but_selecting_a_mode_needs_an_integrator(tmp_path: Path) -> None:
    async with served(tmp_path, RolesByConnection(Role.OPERATOR)) as cell, ControlClient(cell.path) as client:
        await client.request("command", name="reset")
        refused = await refusal(client, "mode", name="maintenance")

    assert refused.code == "not_allowed" and "needs the integrator role" in str(refused)
    assert cell.engine.calls[0][0] == "reset"


async def test_the_role_of_the_peers_group_comes_from_the_system(tmp_path: Path) -> None:
    own_group = grp.getgrgid(os.getgid()).gr_name
    roles = RolePolicy(groups={own_group: Role.OPERATOR}, integrator_uids=frozenset())

    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as client:
        hello = await client.request("hello")

    assert hello["role"] == "operator"


async def test_the_users_table_names_the_peer_by_login(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    roles = RolePolicy(users={me: Role.INTEGRATOR}, integrator_uids=frozenset())

    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as client:
        assert (await client.request("hello"))["role"] == "integrator"


async def test_an_accepted_command_is_journaled_with_the_role(tmp_path: Path) -> None:
    async with served(tmp_path, RolesByConnection(Role.OPERATOR)) as cell, ControlClient(cell.path) as client:
        await client.request("command", name="reset")

    (action,) = [e for e in cell.sink.events if isinstance(e, OperatorAction) and e.action == "reset"]
    assert action.args["role"] == "operator" and action.args["caller"]["role"] == "operator"


# --- the control lease ----------------------------------------------------------------------------------


async def test_the_first_state_changing_command_takes_the_free_lease_and_status_shows_it(
    tmp_path: Path,
) -> None:
    async with served(tmp_path, RolesByConnection(Role.OPERATOR)) as cell, ControlClient(cell.path) as client:
        assert (await client.request("status"))["lease"] is None
        await client.request("command", name="reset")
        status = await client.request("status")

    assert status["lease"]["role"] == "operator" and status["lease"]["pid"] == os.getpid()
    assert cell.lease_actions()[0] == ("take", "operator", "")


async def test_another_connection_is_refused_with_lease_held_naming_the_holder(tmp_path: Path) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.OPERATOR)
    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as first:
        await first.request("command", name="reset")
        async with ControlClient(cell.path) as second:
            refused = await refusal(second, "command", name="start")
            shown = await second.request("lease")

    assert refused.code == "lease_held"
    assert "api:" in str(refused) and "(operator" in str(refused) and "lease take" in str(refused)
    assert shown["yours"] is False and shown["lease"]["role"] == "operator"
    assert [c for c, _ in cell.engine.calls] == ["reset"]


async def test_a_disconnect_releases_the_lease_for_the_next_connection(tmp_path: Path) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.OPERATOR, Role.OPERATOR)
    async with served(tmp_path, roles) as cell:
        async with ControlClient(cell.path) as first:
            await first.request("command", name="reset")
        await until_released(cell.path)
        async with ControlClient(cell.path) as second:
            await second.request("command", name="start")

    assert [a for a, _, _ in cell.lease_actions()][:2] == ["take", "release"]
    assert cell.lease_actions()[1][2] == "disconnected"


async def test_release_frees_the_lease_at_once(tmp_path: Path) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.OPERATOR)
    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as first:
        await first.request("lease", action="take")
        released = await first.request("lease", action="release")
        async with ControlClient(cell.path) as second:
            await second.request("command", name="reset")

    assert released == {"lease": None, "yours": False}
    assert [(a, r) for a, _, r in cell.lease_actions()][:2] == [("take", ""), ("release", "released")]


async def test_a_higher_role_takes_the_lease_over_and_the_old_holder_is_refused(tmp_path: Path) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.INTEGRATOR)
    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as operator:
        watching = await operator.watch()
        await operator.request("command", name="reset")
        async with ControlClient(cell.path) as integrator:
            taken = await integrator.request("lease", action="take")
            refused = await refusal(operator, "command", name="start")
            await integrator.request("command", name="start")
        pushed = []
        async with asyncio.timeout(WAIT_S):
            async for push in operator.events():
                if push.event.kind == "operator_action" and push.event.data["action"] == "lease":
                    pushed.append(push.event.data["args"]["action"])
                if pushed[-1:] == ["release"]:
                    break

    assert watching["resync"] is True
    assert taken["yours"] is True and taken["lease"]["role"] == "integrator"
    assert refused.code == "lease_held" and "(integrator" in str(refused)
    assert pushed == ["take", "take_over", "release"]
    (over,) = [
        e for e in cell.sink.events if isinstance(e, OperatorAction) and e.args.get("action") == "take_over"
    ]
    assert over.args["previous"]["role"] == "operator" and over.args["role"] == "integrator"


async def test_an_equal_role_cannot_take_the_lease_over(tmp_path: Path) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.OPERATOR)
    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as first:
        await first.request("lease", action="take")
        async with ControlClient(cell.path) as second:
            refused = await refusal(second, "lease", action="take")
            released = await second.request("lease", action="release")  # not its lease: nothing happens

    assert refused.code == "lease_held"
    assert released["lease"] is not None and released["yours"] is False


async def test_reads_need_no_lease(tmp_path: Path) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.VIEWER)
    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as holder:
        await holder.request("lease", action="take")
        async with ControlClient(cell.path) as viewer:
            await viewer.request("status")
            await viewer.request("hello")
            await viewer.watch()


# --- the socket's group ---------------------------------------------------------------------------------


async def test_the_socket_file_gets_the_configured_group(tmp_path: Path) -> None:
    own_group = grp.getgrgid(os.getgid()).gr_name

    async with served(tmp_path, group=own_group) as cell:
        info = os.stat(cell.path)

    assert info.st_gid == os.getgid()
    assert info.st_mode & 0o777 == 0o660


async def test_an_unknown_socket_group_stops_the_start_naming_it(tmp_path: Path) -> None:
    server = ControlServer(
        tmp_path / "ctl.sock",
        ControlService(ScriptedEngine(), identity=IDENTITY),
        group="no-such-group-cellctl",
    )

    with pytest.raises(ApiError, match="no-such-group-cellctl") as refused:
        async with asyncio.timeout(WAIT_S):
            await server.run()

    assert refused.value.code == "socket_group"
    assert not (tmp_path / "ctl.sock").exists()


# --- devices --------------------------------------------------------------------------------------------


async def test_without_a_devices_view_the_request_is_unavailable(tmp_path: Path) -> None:
    async with served(tmp_path) as cell, ControlClient(cell.path) as client:
        refused = await refusal(client, "devices")

    assert refused.code == "unavailable"


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    config = load_config(config_dir)
    async with serving(config, soft_cell(config.cell), tmp_path) as cell:
        yield cell


async def test_e2e_devices_lists_every_configured_device_and_tag_with_health_and_last_reading(
    cell: Cell, config_dir: Path
) -> None:
    config = load_config(config_dir)

    async with ControlClient(cell.path) as client:
        devices = (await client.request("devices"))["devices"]

    assert [d["device"] for d in devices] == list(config.cell.devices)
    for device in devices:
        configured = config.cell.devices[device["device"]]
        assert device["protocol"] == configured.driver
        assert device["state"] == "up" and device["state_for_s"] >= 0 and device["error"] == ""
        assert [t["tag"] for t in device["tags"]] == list(configured.tags)
        assert {t["quality"] for t in device["tags"]} <= {"good", "uncertain", "bad"}
        assert all(t["age_s"] >= 0 for t in device["tags"])


# --- ctl ------------------------------------------------------------------------------------------------


async def test_ctl_whoami_prints_user_role_and_lease(tmp_path: Path) -> None:
    async with served(tmp_path, RolesByConnection(Role.OPERATOR)) as cell:
        ran = await run_ctl("--socket", str(cell.path), "whoami", "--json")

    assert ran.code == 0, ran.err
    me = json.loads(ran.out)
    assert me["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert me["role"] == "operator" and me["lease"] is None


async def test_ctl_is_refused_while_another_client_holds_the_lease_and_says_how_to_get_it(
    tmp_path: Path,
) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.OPERATOR, Role.OPERATOR)
    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as tui:
        await tui.request("lease", action="take")
        refused = await run_ctl("--socket", str(cell.path), "reset")
        shown = await run_ctl("--socket", str(cell.path), "lease")

    assert refused.code == 1
    assert "refused (lease_held)" in refused.err and "lease take" in refused.err
    assert shown.code == 0 and shown.out.startswith("control lease: api:") and "(operator" in shown.out


async def test_ctl_lease_take_from_a_higher_role_frees_the_lease_as_it_exits(tmp_path: Path) -> None:
    roles = RolesByConnection(Role.OPERATOR, Role.INTEGRATOR, Role.OPERATOR)
    async with served(tmp_path, roles) as cell, ControlClient(cell.path) as tui:
        await tui.request("lease", action="take")
        taken = await run_ctl("--socket", str(cell.path), "lease", "take")
        await until_released(cell.path)

    assert taken.code == 0 and "taken as integrator" in taken.out
    assert [a for a, _, _ in cell.lease_actions()] == ["take", "take_over", "release"]


async def test_ctl_a_one_shot_command_takes_the_free_lease_for_its_own_request_only(tmp_path: Path) -> None:
    async with served(tmp_path) as cell:
        ran = await run_ctl("--socket", str(cell.path), "reset")
        await until_released(cell.path)

    assert ran.code == 0, ran.err
    assert [a for a, _, _ in cell.lease_actions()] == ["take", "release"]


async def test_e2e_ctl_devices_prints_each_device_and_its_tags(cell: Cell, config_dir: Path) -> None:
    config = load_config(config_dir)

    ran = await run_ctl("--socket", str(cell.path), "devices")
    as_json = await run_ctl("--socket", str(cell.path), "devices", "--json")

    assert ran.code == 0, ran.err
    for name, device in config.cell.devices.items():
        assert f"{name} ({device.driver}): up for" in ran.out
        for tag in device.tags:
            assert f"  {tag} " in ran.out
    assert [d["device"] for d in json.loads(as_json.out)] == list(config.cell.devices)
