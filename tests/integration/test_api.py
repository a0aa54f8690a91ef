"""The control API over a real Unix socket: framing, error codes, watchers, operator actions, ``cellctl ctl``.

Most behaviour is specified against a small scripted engine (the same methods as cellctl.engine.Engine) so
each test controls exactly what the engine does; the end-to-end tests at the bottom drive the real Engine on
the soft devices of tests/softcell.py.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import stat
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cellctl.api.client import ControlClient, NotReachable, WatchDropped
from cellctl.api.protocol import MAX_LINE, EventBody
from cellctl.api.roles import RolePolicy
from cellctl.api.server import WATCH_QUEUE, ControlServer, EventHub
from cellctl.api.service import ControlService
from cellctl.cli import ctl
from cellctl.core.clock import Clock, SystemClock
from cellctl.core.events import Event, OperatorAction, StateChanged
from cellctl.core.packml import Command, State, allowed_commands, completion, is_acting, next_state
from cellctl.core.ports import Driver
from cellctl.engine import Engine, OrderRequest
from cellctl.errors import ApiError, JobError
from cellctl.runtime.app import device_views
from cellctl.schema.cell import Identity
from cellctl.schema.load import LoadedConfig, load_config
from tests.softcell import soft_cell

IDENTITY = Identity(enterprise="nordform", site="lyon", area="upholstery", line="line1", cell="cell3")
WAIT_S = 5.0


# --- a scripted engine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass
class ScriptedEngine:
    """Engine stand-in: PackML moves straight through acting states; submit is idempotent by order id."""

    state: State = State.STOPPED
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    status_asked: asyncio.Event = field(default_factory=asyncio.Event)

    async def command(self, command: str, *, by: str) -> View:
        self.calls.append((command, by))
        state = next_state(self.state, Command.parse(command, self.state))
        self._move(state, command, by)
        while is_acting(self.state):
            self._move(completion(self.state), None, "engine")
        return self.status()

    def _move(self, state: State, command: str | None, by: str) -> None:
        previous, self.state = self.state, state
        self.emit(
            StateChanged(
                ts=1.0,
                state=state.label,
                state_no=int(state),
                previous=previous.label,
                command=command,
                by=by,
            )
        )

    async def submit(self, order: OrderRequest, *, by: str) -> View:
        self.calls.append(("submit", by))
        if order.variant not in {"oslo", "bergen", "tromso"}:
            raise JobError(f"unknown variant {order.variant!r}")
        job = self.jobs.get(order.order_id)
        if job is not None:
            if job["content"] != order.content():
                raise JobError(f"order {order.order_id!r} was submitted with other content")
            return View(job["view"])
        view = {"job_id": f"J-{len(self.jobs) + 1}", "order_id": order.order_id, "variant": order.variant}
        view |= {"quantity": order.quantity, "status": "queued", "parameters": dict(order.parameters)}
        self.jobs[order.order_id] = {"content": order.content(), "view": view}
        return View(view)

    async def cancel(self, job_id: str, *, by: str) -> View:
        self.calls.append(("cancel", by))
        for job in self.jobs.values():
            if job["view"]["job_id"] == job_id:
                job["view"]["status"] = "cancelled"
                return View(job["view"])
        raise JobError(f"no job {job_id!r}")

    def status(self) -> View:
        self.status_asked.set()
        return View(
            {
                "state": self.state.label,
                "state_no": int(self.state),
                "allowed_commands": [c.label for c in allowed_commands(self.state)],
                "queue": [j["view"] for j in self.jobs.values() if j["view"]["status"] == "queued"],
            }
        )

    def add_listener(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)

    def emit(self, event: Event) -> None:
        for listener in list(self.listeners):
            listener(event)


class ListSink:
    """Keeps recorded events in memory."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def record(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)


# --- fixtures and helpers -------------------------------------------------------------------------------


@dataclass
class Served:
    path: Path
    server: ControlServer
    engine: ScriptedEngine
    sink: ListSink


JOURNAL = [
    {"id": i, "ts": 1.0, "kind": "state_changed", "stream": "state", "job_id": None, "data": {}}
    for i in (1, 2, 3)
]


async def _journal(after_id: int, limit: int) -> list[dict[str, Any]]:
    return [e for e in JOURNAL if e["id"] > after_id][:limit]


async def start(server: ControlServer) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(server.run(), name="test:api")
    async with asyncio.timeout(WAIT_S):
        ready = asyncio.ensure_future(server.ready.wait())
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=WAIT_S)
    assert task.done()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    engine = ScriptedEngine()
    sink = ListSink()
    service = ControlService(engine, identity=IDENTITY, journal=_journal, sink=sink)
    server = ControlServer(tmp_path / "ctl.sock", service)
    task = await start(server)
    yield Served(tmp_path / "ctl.sock", server, engine, sink)
    await stop(task)


class Raw:
    """A bare connection to send exact bytes and read exact lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            raw = await self.reader.readline()
        assert raw, "server closed the connection"
        message: dict[str, Any] = json.loads(raw)
        return message

    async def ask(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self.send(json.dumps(obj).encode() + b"\n")
        return await self.line()


@pytest.fixture
async def raw(served: Served) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_unix_connection(str(served.path), limit=4 * MAX_LINE)
    yield Raw(reader, writer)
    writer.close()
    await writer.wait_closed()


def is_action(event: Event) -> bool:
    """An operator action on the cell or its orders (not a take or release of the control lease)."""
    return isinstance(event, OperatorAction) and event.action != "lease"


def req(id_: int | str, cmd: str, **args: Any) -> dict[str, Any]:
    return {"v": 1, "id": id_, "cmd": cmd, "args": args}


# --- identity and framing -------------------------------------------------------------------------------


async def test_hello_names_the_cell_and_the_caller_as_the_kernel_reports_it(served: Served) -> None:
    async with ControlClient(served.path) as client:
        hello = await client.request("hello")

    assert hello["protocol"] == 1
    assert hello["identity"]["cell"] == "cell3"
    assert hello["caller"]["uid"] == os.getuid()
    assert hello["caller"]["gid"] == os.getgid()
    assert hello["caller"]["pid"] == os.getpid()


async def test_the_socket_file_is_readable_and_writable_by_owner_and_group_only(served: Served) -> None:
    mode = os.stat(served.path).st_mode

    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_pipelined_requests_get_exactly_one_reply_each_in_order_with_their_ids(raw: Raw) -> None:
    batch = [req(1, "status"), req("two", "nonsense"), req(3, "hello"), req(4, "command", name="start")]
    await raw.send(b"".join(json.dumps(r).encode() + b"\n" for r in batch))

    replies = [await raw.line() for _ in batch]

    assert [r["id"] for r in replies] == [1, "two", 3, 4]
    assert [r["ok"] for r in replies] == [True, False, True, False]
    await raw.send(json.dumps(req(5, "status")).encode() + b"\n")
    assert (await raw.line())["id"] == 5  # nothing extra was queued before it


async def test_malformed_json_gets_bad_json_with_a_null_id_and_the_connection_keeps_serving(raw: Raw) -> None:
    await raw.send(b'{"v": 1, "id": 1, "cmd": \n')
    error = await raw.line()

    assert error == {"v": 1, "id": None, "ok": False, "error": error["error"]}
    assert error["error"]["code"] == "bad_json"
    assert (await raw.ask(req(2, "status")))["ok"] is True


async def test_a_lone_surrogate_id_is_echoed_escaped_and_the_server_keeps_serving(
    raw: Raw, served: Served
) -> None:
    # Regression (fuzz): JSON's \\ud800 escape is valid, UTF-8 cannot carry it, and the reply used to fail
    # to encode, which took the server down.
    await raw.send(b'{"v": 1, "id": "\\ud800", "cmd": "status"}\n')
    error = await raw.line()

    assert error["id"] == "\ud800" and error["error"]["code"] == "bad_request"
    assert (await raw.ask(req(2, "status")))["ok"] is True
    async with ControlClient(served.path) as client:
        assert (await client.request("status"))["state"] == "Stopped"


async def test_utf8_encoded_surrogates_are_not_utf8_and_get_bad_json(raw: Raw) -> None:
    # Regression (fuzz): json.loads(bytes) decodes CESU-8 surrogates instead of refusing them.
    await raw.send(b'{"v": 1, "id": 1, "cmd": "stat\xed\xa0\x80us"}\n')
    error = await raw.line()

    assert (error["id"], error["error"]["code"]) == (None, "bad_json")


async def test_an_unknown_command_gets_unknown_command_with_its_id(raw: Raw) -> None:
    reply = await raw.ask(req(7, "launch"))

    assert (reply["id"], reply["ok"], reply["error"]["code"]) == (7, False, "unknown_command")


async def test_bad_args_get_bad_request_naming_the_field(raw: Raw) -> None:
    reply = await raw.ask(req(8, "submit", order_id="O1", variant="oslo", quantity=0))

    assert reply["error"]["code"] == "bad_request"
    assert "quantity" in reply["error"]["message"]


async def test_an_oversized_line_gets_too_large_and_the_next_line_is_served(raw: Raw, served: Served) -> None:
    await raw.send(
        b'{"v": 1, "id": 1, "cmd": "status", "args": {"pad": "' + b"x" * (MAX_LINE + 10) + b'"}}\n'
    )
    too_large = await raw.line()
    status = await raw.ask(req(2, "status"))

    assert (too_large["id"], too_large["error"]["code"]) == (None, "too_large")
    assert (status["id"], status["ok"]) == (2, True)
    assert served.engine.calls == []


async def test_a_command_not_allowed_in_the_state_is_refused_and_the_engine_is_unaffected(
    served: Served,
) -> None:
    async with ControlClient(served.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request("command", name="start")
        status = await client.request("status")

    assert info.value.code == "invalid_transition"
    assert status["state"] == "Stopped"
    assert served.engine.state is State.STOPPED


async def test_an_accepted_command_returns_the_status_it_led_to(served: Served) -> None:
    async with ControlClient(served.path) as client:
        status = await client.request("command", name="reset")

    assert status["state"] == "Idle"


async def test_a_second_client_is_served_while_the_first_is_connected(served: Served) -> None:
    async with ControlClient(served.path) as first, ControlClient(served.path) as second:
        await first.request("hello")
        assert (await second.request("status"))["state"] == "Stopped"


# --- operator actions -----------------------------------------------------------------------------------


async def test_an_accepted_command_reaches_the_engine_and_the_journal_with_who_sent_it(
    served: Served,
) -> None:
    async with ControlClient(served.path) as client:
        who = (await client.request("hello"))["caller"]["user"]
        await client.request("command", name="reset")

    actions = [e for e in served.sink.events if is_action(e)]
    assert served.engine.calls == [("reset", f"api:{who}")]
    assert [(a.action, a.by, a.accepted) for a in actions] == [("reset", f"api:{who}", True)]
    assert actions[0].args["caller"]["pid"] == os.getpid()


async def test_a_refused_command_is_journaled_as_refused_with_the_reason(served: Served) -> None:
    async with ControlClient(served.path) as client:
        with pytest.raises(ApiError):
            await client.request("command", name="start")

    (action,) = [e for e in served.sink.events if is_action(e)]
    assert (action.action, action.accepted) == ("start", False)
    assert "Stopped" in action.reason


async def test_a_malformed_request_is_not_an_operator_action(raw: Raw, served: Served) -> None:
    await raw.ask(req(1, "command", name="launch"))

    assert served.sink.events == []
    assert served.engine.calls == []


# --- orders ---------------------------------------------------------------------------------------------


async def test_submitting_the_same_order_twice_returns_the_same_job(served: Served) -> None:
    order = {"order_id": "O-17", "variant": "oslo", "quantity": 3, "parameters": {"pitch_mm": 12.0}}
    async with ControlClient(served.path) as client:
        first = await client.request("submit", **order)
        second = await client.request("submit", **order)
        status = await client.request("status")

    assert first["job_id"] == second["job_id"]
    assert [j["job_id"] for j in status["queue"]] == [first["job_id"]]


async def test_the_same_order_id_with_other_content_is_a_job_error(served: Served) -> None:
    async with ControlClient(served.path) as client:
        await client.request("submit", order_id="O-1", variant="oslo", quantity=3)
        with pytest.raises(ApiError) as info:
            await client.request("submit", order_id="O-1", variant="oslo", quantity=4)

    assert info.value.code == "job_error"


async def test_cancel_returns_the_cancelled_job(served: Served) -> None:
    async with ControlClient(served.path) as client:
        job = await client.request("submit", order_id="O-2", variant="bergen", quantity=1)
        cancelled = await client.request("cancel", job_id=job["job_id"])

    assert cancelled["status"] == "cancelled"


async def test_journal_is_read_through_the_runtime_callable(served: Served) -> None:
    async with ControlClient(served.path) as client:
        result = await client.request("journal", after_id=1, limit=1)

    assert [e["id"] for e in result["entries"]] == [2]


async def test_without_a_journal_the_request_is_unavailable(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "j.sock", ControlService(ScriptedEngine(), identity=IDENTITY))
    task = await start(server)
    try:
        async with ControlClient(server.path) as client:
            with pytest.raises(ApiError) as info:
                await client.request("journal")
    finally:
        await stop(task)

    assert info.value.code == "unavailable"


# --- watchers -------------------------------------------------------------------------------------------


async def test_a_watcher_gets_the_engine_events_with_increasing_seq(served: Served) -> None:
    async with ControlClient(served.path) as watcher, ControlClient(served.path) as operator:
        first = await watcher.watch()
        await operator.request("command", name="reset")
        got = []
        async with asyncio.timeout(WAIT_S):
            async for push in watcher.events():
                got.append(push)
                if push.event.kind == "operator_action" and push.event.data["action"] != "lease":
                    break

    assert first["resync"] is True and first["status"]["state"] == "Stopped"
    assert [p.seq for p in got] == list(range(first["seq"] + 1, first["seq"] + 1 + len(got)))
    assert got[0].event.data["action"] == "lease"  # the connection took the free control lease
    assert [p.event.data.get("state") for p in got[1:3]] == ["Resetting", "Idle"]
    assert got[-1].event.data["action"] == "reset"


async def test_a_watcher_resumes_after_its_last_seq_without_resync(served: Served) -> None:
    async with ControlClient(served.path) as client:
        first = await client.watch()
        await client.request("command", name="reset")
        await client.close()
    async with ControlClient(served.path) as client:
        again = await client.watch(since_seq=first["seq"], epoch=first["epoch"])
        async with asyncio.timeout(WAIT_S):
            seqs = [p.seq async for p in _take(client, 3)]

    assert again["resync"] is False and "status" not in again
    assert seqs == [first["seq"] + 1, first["seq"] + 2, first["seq"] + 3]


async def test_a_watcher_that_reconnects_gets_exactly_the_events_it_missed(served: Served) -> None:
    async with ControlClient(served.path) as witness:
        await witness.watch()
        async with ControlClient(served.path) as client:
            first = await client.watch()
        async with ControlClient(served.path) as operator:
            await operator.request("command", name="reset")
            await operator.request("command", name="stop")
        async with ControlClient(served.path) as client:
            again = await client.watch(since_seq=first["seq"], epoch=first["epoch"])
            missed = again["seq"] - first["seq"]
            async with asyncio.timeout(WAIT_S):
                resumed = [p async for p in _take(client, missed)]
                seen = [p async for p in _take(witness, missed)]
            # Nothing else was queued: the next push is the next event.
            async with ControlClient(served.path) as operator:
                await operator.request("command", name="reset")
            async with asyncio.timeout(WAIT_S):
                (after,) = [p async for p in _take(client, 1)]

    assert again["resync"] is False and missed == 8  # lease take, 4 state changes, 2 actions, release
    assert [p.model_dump() for p in resumed] == [p.model_dump() for p in seen]
    assert [p.seq for p in resumed] == list(range(first["seq"] + 1, again["seq"] + 1))
    assert after.seq == again["seq"] + 1


async def test_a_watcher_whose_seq_is_no_longer_kept_gets_a_fresh_snapshot(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    server = ControlServer(tmp_path / "ctl.sock", ControlService(engine, identity=IDENTITY))
    server.hub = EventHub(ring_size=2)
    task = await start(server)
    try:
        async with ControlClient(server.path) as client:
            first = await client.watch()
            await client.request("command", name="reset")  # more events than the ring keeps
        async with ControlClient(server.path) as client:
            again = await client.watch(since_seq=first["seq"], epoch=first["epoch"])
            ahead = await client.watch(since_seq=again["seq"] + 100, epoch=first["epoch"])
    finally:
        await stop(task)

    assert again["resync"] is True and again["status"]["state"] == "Idle"
    assert again["seq"] > first["seq"] + 2
    assert ahead["resync"] is True  # a seq this server never sent: another run's, so a snapshot


async def test_a_watcher_of_another_epoch_must_resync(served: Served) -> None:
    async with ControlClient(served.path) as client:
        result = await client.watch(since_seq=0, epoch="another-server")

    assert result["resync"] is True
    assert result["status"]["state"] == "Stopped"


async def test_a_watcher_that_does_not_read_is_dropped_with_a_notice_and_the_engine_goes_on(
    served: Served, raw: Raw
) -> None:
    watch = await raw.ask(req(1, "watch"))
    emitted = 0
    # The engine keeps recording while this client reads nothing: its socket, then its queue, fill up.
    while served.server.hub.watcher_count and emitted < 20 * WATCH_QUEUE:
        served.engine.emit(OperatorAction(ts=1.0, action="noise", by="test", args={"pad": "x" * 2000}))
        emitted += 1
        await asyncio.sleep(0)  # let the server's sender run, as it would between engine steps

    assert served.server.hub.watcher_count == 0
    await raw.send(json.dumps(req(2, "status")).encode() + b"\n")
    messages = []
    for _ in range(emitted + 2):  # the events it was sent, then the notice and the reply, in either order
        messages.append(await raw.line())
        if any(m.get("seq") == 0 for m in messages) and any(m.get("id") == 2 for m in messages):
            break
    notice = next(m for m in messages if m.get("seq") == 0)
    delivered = [m["seq"] for m in messages if m.get("seq")]
    reply = next(m for m in messages if m.get("id") == 2)
    assert watch["ok"] is True
    assert (notice["event"]["kind"], notice["event"]["data"]["code"]) == ("watch_dropped", "overflow")
    assert notice["event"]["data"]["since_seq"] == delivered[-1]
    assert delivered == list(range(delivered[0], delivered[0] + len(delivered)))
    assert reply["ok"] is True


async def test_the_client_raises_watch_dropped_with_where_to_resume(served: Served) -> None:
    async with ControlClient(served.path) as client:
        await client.watch()
        for _ in range(WATCH_QUEUE + 1):  # one burst, more than the queue holds
            served.engine.emit(OperatorAction(ts=1.0, action="noise", by="test"))
        with pytest.raises(WatchDropped) as info:
            async with asyncio.timeout(WAIT_S):
                async for _push in client.events():
                    pass

    assert info.value.since_seq == client.last_seq
    assert info.value.code == "overflow"


async def _take(client: ControlClient, count: int) -> AsyncIterator[Any]:
    seen = 0
    async for push in client.events():
        yield push
        seen += 1
        if seen >= count:
            return


# --- lifetime -------------------------------------------------------------------------------------------


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens
    server = ControlServer(path, ControlService(ScriptedEngine(), identity=IDENTITY))
    task = await start(server)
    try:
        async with ControlClient(path) as client:
            assert (await client.request("status"))["state"] == "Stopped"
    finally:
        await stop(task)


async def test_a_live_socket_is_not_taken_over(served: Served) -> None:
    second = ControlServer(served.path, ControlService(ScriptedEngine(), identity=IDENTITY))

    with pytest.raises(ApiError) as info:
        await second.run()

    assert info.value.code == "socket_in_use"
    async with ControlClient(served.path) as client:
        assert (await client.request("hello"))["protocol"] == 1


async def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "cellctl.sock"
    path.write_text("precious")

    with pytest.raises(ApiError):
        await ControlServer(path, ControlService(ScriptedEngine(), identity=IDENTITY)).run()

    assert path.read_text() == "precious"


async def test_stopping_the_server_closes_connections_and_removes_the_socket(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    server = ControlServer(tmp_path / "s.sock", ControlService(engine, identity=IDENTITY))
    task = await start(server)
    async with ControlClient(server.path) as client:
        await client.watch()
        await stop(task)
        with pytest.raises(ApiError):
            await client.request("status")

    assert not server.path.exists()
    assert engine.listeners == []


# --- cellctl ctl ----------------------------------------------------------------------------------------


def ctl_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cellctl")
    ctl.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["ctl", *argv])


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def run_ctl(*argv: str) -> Ran:
    """``cellctl ctl ARGV`` through ``run`` (its own event loop, in a thread), with its output captured."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl.run, ctl_args(*argv), out=out, err=err)
    return Ran(code, out.getvalue(), err.getvalue())


async def test_ctl_status_json_prints_the_engine_status(served: Served) -> None:
    ran = await run_ctl("--socket", str(served.path), "status", "--json")

    assert ran.code == 0
    assert json.loads(ran.out)["state"] == "Stopped"


async def test_ctl_status_prints_a_table(served: Served) -> None:
    ran = await run_ctl("--socket", str(served.path), "status")

    assert ran.code == 0
    assert ran.out.splitlines()[0].split() == ["state", "Stopped", "(2)"]


async def test_ctl_submit_queues_the_order_with_its_parameters(served: Served) -> None:
    ran = await run_ctl(
        "--socket", str(served.path), "submit", "O-9", "tromso", "4", "--param", "pitch_mm=11.5"
    )

    assert ran.code == 0
    assert served.engine.jobs["O-9"]["view"]["parameters"] == {"pitch_mm": 11.5}
    assert "J-1" in ran.out


async def test_ctl_a_refused_command_exits_1_with_the_reason(served: Served) -> None:
    ran = await run_ctl("--socket", str(served.path), "start")

    assert ran.code == 1
    assert "invalid_transition" in ran.err


async def test_ctl_an_accepted_command_exits_0(served: Served) -> None:
    ran = await run_ctl("--socket", str(served.path), "reset")

    assert ran.code == 0
    assert served.engine.state is State.IDLE


async def test_ctl_watch_prints_count_events_and_ends(served: Served) -> None:
    watching = asyncio.ensure_future(run_ctl("--socket", str(served.path), "watch", "--count", "2", "--json"))
    await asyncio.wait_for(served.engine.status_asked.wait(), WAIT_S)  # the watch's snapshot: subscribed
    await served.engine.command("reset", by="test")
    ran = await asyncio.wait_for(watching, WAIT_S)

    lines = [json.loads(line) for line in ran.out.splitlines()]
    assert ran.code == 0
    assert [line["event"]["data"]["state"] for line in lines] == ["Resetting", "Idle"]


async def test_ctl_journal_prints_one_line_per_entry(served: Served) -> None:
    ran = await run_ctl("--socket", str(served.path), "journal", "--after", "1")

    assert ran.code == 0
    assert [line.split()[0] for line in ran.out.splitlines()] == ["2", "3"]


async def test_ctl_without_a_controller_exits_3_saying_so(tmp_path: Path) -> None:
    path = tmp_path / "nobody.sock"

    ran = await run_ctl("--socket", str(path), "status")

    assert ran.code == 3
    assert f"no controller listening on {path}" in ran.err
    assert "is `cellctl run` running?" in ran.err


async def test_ctl_finds_the_socket_from_the_cell_file(
    served: Served, config_dir: Path, tmp_path: Path
) -> None:
    cell_dir = tmp_path / "cell"
    shutil.copytree(config_dir, cell_dir)
    cell_file = cell_dir / "cell.yaml"
    text = cell_file.read_text()
    assert "api: {socket: ../var/sim/cellctl.sock}" in text
    cell_file.write_text(text.replace("../var/sim/cellctl.sock", "../ctl.sock"))

    ran = await run_ctl("--config", str(cell_dir), "status", "--json")

    assert ran.code == 0
    assert json.loads(ran.out)["state"] == "Stopped"


async def test_ctl_an_invalid_cell_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text("schema_version: 1\nidentity: {}\n")

    ran = await run_ctl("--config", str(tmp_path), "status")

    assert ran.code == 2
    assert "identity" in ran.err


async def test_ctl_without_socket_or_config_is_a_usage_error() -> None:
    ran = await run_ctl("status")

    assert ran.code == 2
    assert "--socket" in ran.err


async def test_ctl_a_bad_param_is_a_usage_error(served: Served) -> None:
    ran = await run_ctl("--socket", str(served.path), "submit", "O-1", "oslo", "1", "--param", "pitch")

    assert ran.code == 2
    assert served.engine.jobs == {}


async def test_client_connecting_to_nothing_raises_not_reachable(tmp_path: Path) -> None:
    with pytest.raises(NotReachable):
        async with ControlClient(tmp_path / "none.sock"):
            pass


# --- end to end: the real Engine on a soft cell ---------------------------------------------------------

OSLO_PART = {"width_mm": 420.0, "depth_mm": 400.0, "staple_height_mm": 1.4}


@dataclass
class Cell:
    path: Path
    engine: Engine
    sink: ListSink


@asynccontextmanager
async def serving(
    config: LoadedConfig,
    devices: Mapping[str, Driver],
    tmp_path: Path,
    clock: Clock | None = None,
    roles: RolePolicy | None = None,
) -> AsyncIterator[Cell]:
    """The real Engine on ``devices``, served on a control socket in ``tmp_path``; stopped on exit."""
    sink = ListSink()
    engine = Engine(config, devices, sink, clock)
    engine_task = asyncio.get_running_loop().create_task(engine.run(), name="test:engine")
    await engine.wait_for(State.STOPPED, timeout=WAIT_S)
    views = clock or SystemClock()
    service = ControlService(
        engine,
        identity=config.cell.identity,
        sink=sink,
        devices=lambda: device_views(config.cell, devices, views),
    )
    server = ControlServer(tmp_path / "cell.sock", service, roles=roles)
    server_task = await start(server)
    try:
        yield Cell(server.path, engine, sink)
    finally:
        await stop(server_task)
        await stop(engine_task)


@pytest.fixture
async def cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[Cell]:
    config = load_config(config_dir)
    async with serving(
        config, soft_cell(config.cell, measure=lambda channel: OSLO_PART[channel]), tmp_path
    ) as cell:
        yield cell


async def until(client: ControlClient, predicate: Callable[[EventBody], bool]) -> list[EventBody]:
    """Events up to and including the first that satisfies ``predicate``."""
    seen: list[EventBody] = []
    async with asyncio.timeout(WAIT_S):
        async for push in client.events():
            seen.append(push.event)
            if predicate(push.event):
                return seen
    raise AssertionError("the event stream ended")


def is_state(name: str) -> Callable[[EventBody], bool]:
    return lambda event: event.kind == "state_changed" and event.data["state"] == name


async def test_e2e_status_is_the_engines_snapshot(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        status = await client.request("status")

    snapshot = cell.engine.status().to_dict() | {"lease": None}
    # The live OEE counts the current state up to the moment it is asked: compare it apart.
    live, now = status.pop("oee"), snapshot.pop("oee")
    assert status == snapshot
    assert live["window"] == now["window"] and live["planned_s"] <= now["planned_s"]
    assert (status["cell"], status["state"], status["state_no"]) == ("cell3", "Stopped", 2)


async def test_e2e_a_refused_command_leaves_the_engine_as_it_was(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request("command", name="start")
        status = await client.request("status")

    assert info.value.code == "invalid_transition"
    assert status["state"] == "Stopped"
    assert [e for e in cell.sink.events if isinstance(e, StateChanged)][-1].state == "Stopped"


async def test_e2e_commands_are_recorded_with_the_caller_and_watched_in_order(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        user = (await client.request("hello"))["caller"]["user"]
        first = await client.watch()
        await client.request("command", name="reset")
        events = await until(client, is_state("Idle"))

    resetting = next(e for e in events if is_state("Resetting")(e))
    assert resetting.data["by"] == f"api:{user}"
    assert client.last_seq == first["seq"] + len(events)
    assert any(
        isinstance(e, OperatorAction) and e.action == "reset" and e.by == f"api:{user}"
        for e in cell.sink.events
    )


async def test_e2e_an_order_is_produced_and_its_events_are_watched(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        await client.watch()
        await client.request("command", name="reset")
        await until(client, is_state("Idle"))
        await client.request("command", name="start")
        await until(client, is_state("Execute"))
        job = await client.request("submit", order_id="O-100", variant="oslo", quantity=2)
        events = await until(
            client,
            lambda e: e.kind == "job" and e.data["job"] == job["job_id"] and e.data["status"] == "completed",
        )
        status = await client.request("status")

    assert [e.data["verdict"] for e in events if e.kind == "part"] == ["pass", "pass"]
    assert status["counters"]["good"] == 2
    assert status["variant"] == "oslo"


async def test_e2e_submitting_the_same_order_twice_queues_one_job(cell: Cell) -> None:
    order = {"order_id": "O-7", "variant": "bergen", "quantity": 1, "parameters": {"staple_pitch": 10.0}}
    async with ControlClient(cell.path) as client:
        first = await client.request("submit", **order)
        second = await client.request("submit", **order)
        status = await client.request("status")

    assert first["job_id"] == second["job_id"]
    assert [j["job_id"] for j in status["queue"]] == [first["job_id"]]


async def test_e2e_a_bad_order_is_a_job_error_naming_the_parameter(cell: Cell) -> None:
    async with ControlClient(cell.path) as client:
        with pytest.raises(ApiError) as info:
            await client.request(
                "submit", order_id="O-8", variant="oslo", quantity=1, parameters={"staple_pitch": 99.0}
            )

    assert info.value.code == "job_error"
    assert "staple_pitch" in str(info.value)


async def test_e2e_ctl_drives_the_real_engine(cell: Cell) -> None:
    status = await run_ctl("--socket", str(cell.path), "status", "--json")
    refused = await run_ctl("--socket", str(cell.path), "start")
    submitted = await run_ctl("--socket", str(cell.path), "submit", "O-5", "tromso", "3", "--priority", "2")
    table = await run_ctl("--socket", str(cell.path), "status")

    assert (status.code, json.loads(status.out)["state"]) == (0, "Stopped")
    assert refused.code == 1 and "not allowed in state 'Stopped'" in refused.err
    assert submitted.code == 0 and "queued" in submitted.out
    assert table.code == 0 and "O-5" in table.out


async def test_e2e_ctl_cancels_a_job_by_its_order_id(cell: Cell) -> None:
    submitted = await run_ctl("--socket", str(cell.path), "submit", "O-6", "oslo", "1", "--json")
    cancelled = await run_ctl("--socket", str(cell.path), "cancel", "--order", "O-6", "--json")
    unknown = await run_ctl("--socket", str(cell.path), "cancel", "--order", "O-404")

    assert cancelled.code == 0
    job = json.loads(cancelled.out)
    assert job["job_id"] == json.loads(submitted.out)["job_id"] and job["status"] == "cancelled"
    assert cell.engine.status().queue == ()
    assert unknown.code == 1 and "no order 'O-404'" in unknown.err


def test_ctl_cancel_takes_a_job_id_or_an_order_not_both() -> None:
    assert ctl_args("cancel", "J-1").job_id == "J-1"
    assert ctl_args("cancel", "--order", "PO-1").order_id == "PO-1"
    with pytest.raises(SystemExit):
        ctl_args("cancel", "J-1", "--order", "PO-1")
    with pytest.raises(SystemExit):
        ctl_args("cancel")
