"""The control API under a seeded storm of malformed and hostile lines, while the real engine produces parts.

Given a cell in Execute working through a long order (its lease held by an integrator's connection),
when several viewer and operator connections send ~3000 lines of garbage, half-valid and refused requests
(bad JSON, invalid UTF-8, NUL bytes, binary noise, overlong lines, lines split across writes, absurd nesting,
huge numbers, NaN, wrong types, unknown and forbidden commands, duplicate ids, pipelined floods) and other
connections hang up mid-line, then every complete line gets exactly one reply, in order, with its id (null
when the line could not be parsed), and a known error code; every connection keeps serving; the server and
the engine stay up; parts keep being made; a fresh client is served afterwards. Run with ``-s`` to see the
count of each kind.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cellctl.api.client import ControlClient
from cellctl.api.protocol import COMMANDS, MAX_LINE, ErrorCode, Role
from cellctl.api.roles import RolePolicy
from cellctl.core.events import OperatorAction
from cellctl.schema.load import load_config
from tests.integration.test_api import Cell, is_state, serving, until
from tests.softcell import soft_cell

SEED = 20261127
LINES = 3000
FUZZERS = 6
"""Connections sending the storm: alternately operator and viewer."""
HANGUPS = 40
"""Connections that write part of a line (or of an overlong one) and hang up."""
BUDGET_S = 90.0
CODES = {c.value for c in ErrorCode}
ANY = frozenset(CODES | {"ok"})


class FuzzRoles(RolePolicy):
    """The first connection (it runs the cell) is an integrator, then operator and viewer alternate."""

    def __init__(self) -> None:
        super().__init__(integrator_uids=frozenset())
        self.connections = 0

    async def role_of(self, uid: int, gid: int, user: str) -> Role:
        self.connections += 1
        if self.connections == 1:
            return Role.INTEGRATOR
        return Role.OPERATOR if self.connections % 2 == 0 else Role.VIEWER


@dataclass(frozen=True)
class Case:
    """One line to send (without its newline) and what its reply must be: ``None`` id or the id sent."""

    kind: str
    line: bytes
    reply_id: Any
    codes: frozenset[str]
    split: bool = False


@dataclass
class Fuzzer:
    """One fuzzing connection: its role and the cases it sends."""

    role: Role
    cases: list[Case] = field(default_factory=list)


# --- the seeded generator -------------------------------------------------------------------------------


def _id_of(obj: Any) -> Any:
    """The id the server can read back from a parsed object (None: the reply's id is null)."""
    if isinstance(obj, dict):
        raw = obj.get("id")
        if isinstance(raw, int | str) and not isinstance(raw, bool):
            return raw
    return None


def _valid_status(obj: Any) -> bool:
    """True when a mangled envelope is still a good ``status`` request (e.g. an empty string is an id)."""
    if not isinstance(obj, dict) or set(obj) - {"v", "id", "cmd", "args"} or obj.get("cmd") != "status":
        return False
    rid, version = obj.get("id"), obj.get("v")
    good_id = (isinstance(rid, int) and not isinstance(rid, bool)) or (
        isinstance(rid, str) and len(rid) <= 128
    )
    return good_id and version == 1 and not isinstance(version, bool) and obj.get("args", {}) == {}


def _line(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


WRONG_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    -(2**63),
    1e308,
    "",
    "x" * 300,
    "\u0000",
    "\ud7ff\u202e",
    [],
    [1, [2, [3]]],
    {},
    {"a": {"b": None}},
    3.5,
]


def _random_args(rng: random.Random, cmd: str) -> Any:
    """Args for ``cmd``: sometimes plausible, mostly the wrong shape or type."""
    pick = rng.random()
    if pick < 0.15:
        return rng.choice(WRONG_VALUES)  # not an object at all
    fields = {
        "command": ["name"],
        "mode": ["name"],
        "submit": ["order_id", "variant", "quantity", "parameters", "priority", "due", "part_parameters"],
        "cancel": ["job_id", "order_id"],
        "reorder": ["job_ids"],
        "confirm": ["step", "evidence"],
        "ack": ["alarm"],
        "sign_off": ["note"],
        "spc": ["variant", "characteristic"],
        "watch": ["since_seq", "epoch"],
        "journal": ["after_id", "limit"],
        "lease": ["action"],
    }.get(cmd, [])
    plausible: dict[str, list[Any]] = {
        "name": ["start", "stop", "abort", "hold", "production", "manual", "launch"],
        "order_id": ["FZ-1", "FZ-2"],
        "variant": ["oslo", "bergen", "nope"],
        "quantity": [1, 0, 10**9],
        "parameters": [{"staple_pitch": 10.0}, {"staple_pitch": float("nan")}, {"": 1}],
        "priority": [0, 10**7],
        "due": ["2026-11-28T14:00:00+01:00", "2026-11-28T14:00:00", -5, float("inf")],
        "part_parameters": [[{"staple_pitch": 9.0}], [[]]],
        "job_ids": [["J-1"], []],
        "since_seq": [0, 10**12],
        "epoch": ["x"],
        "after_id": [0],
        "limit": [1, 0, 5000],
        "action": ["take", "release", "show", "steal"],
    }
    args: dict[str, Any] = {}
    for name in fields:
        if rng.random() < 0.6:
            values = plausible.get(name, ["x"])
            args[name] = rng.choice(values) if rng.random() < 0.6 else rng.choice(WRONG_VALUES)
    if rng.random() < 0.2:
        args[rng.choice(["extra", "Name", "id", "v"])] = rng.choice(WRONG_VALUES)
    return args


def _case(rng: random.Random, role: Role, n: int) -> Case:
    """The n-th case of a fuzzer: a kind picked by weight, then its line."""
    kind = rng.choices(
        [
            "bad_json", "invalid_utf8", "nul_bytes", "binary_garbage", "overlong", "max_line", "split_line",
            "deep_nesting", "huge_int", "nan_inf", "wrong_envelope", "fuzzed_args", "unknown_command",
            "not_allowed", "duplicate_id", "valid_read",
        ],
        weights=[8, 5, 5, 8, 1, 1, 5, 2, 4, 5, 10, 25, 5, 6, 4, 6],
    )[0]  # fmt: skip
    rid = n if rng.random() < 0.7 else f"s-{n}"
    if kind == "bad_json":
        good = _line({"v": 1, "id": rid, "cmd": "status"})
        cut = good[: rng.randrange(1, len(good) - 1)]
        line = rng.choice([cut, cut + b"}}", b"{'v': 1}", b'{"v":1,"id":1,}', b"[1,2", b"tru", b"{"])
        return Case(kind, line, None, frozenset({"bad_json"}))
    if kind == "invalid_utf8":
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
        line = b'{"v": 1, "id": ' + str(n).encode() + b', "cmd": "stat' + bad + b'us"}'
        return Case(kind, line, None, frozenset({"bad_json"}))
    if kind == "nul_bytes":
        if rng.random() < 0.5:  # a raw NUL inside a string is not JSON
            return Case(kind, b'{"v": 1, "id": 1, "cmd": "sta\x00tus"}', None, frozenset({"bad_json"}))
        obj = {"v": 1, "id": rid, "cmd": "status\u0000"}  # an escaped one is a string, not a command
        return Case(kind, _line(obj), rid, frozenset({"unknown_command"}))
    if kind == "binary_garbage":
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))).replace(b"\n", b"\x00")
        raw = b"\x01" + raw  # never blank: a blank line is not a request and gets no reply
        return Case(kind, raw, None, frozenset({"bad_json", "bad_request"}))
    if kind == "overlong":
        size = MAX_LINE + rng.randrange(1, 3 * MAX_LINE)
        return Case(kind, b"x" * size, None, frozenset({"too_large"}), split=rng.random() < 0.5)
    if kind == "max_line":
        head = _line({"v": 1, "id": rid, "cmd": "hello"})
        line = head[:-1] + b" " * (MAX_LINE - len(head)) + b"}"  # exactly the longest line allowed
        return Case(kind, line, rid, frozenset({"ok"}), split=True)
    if kind == "split_line":
        return Case(kind, _line({"v": 1, "id": rid, "cmd": "status"}), rid, frozenset({"ok"}), split=True)
    if kind == "deep_nesting":
        depth = rng.choice([5_000, 30_000, 60_000])
        line = rng.choice(
            [
                b"[" * depth,
                b"[" * depth + b"]" * depth,
                b'{"v":1,"id":1,"cmd":"status","args":{"x":' + b"[" * depth + b"]" * depth + b"}}",
            ]
        )
        if len(line) > MAX_LINE:
            return Case(kind, line, None, frozenset({"too_large"}))
        return Case(kind, line, None, frozenset({"bad_json"}))
    if kind == "huge_int":
        digits = rng.choice([30, 400, 5000])
        big = "9" * digits
        text = rng.choice(
            [
                f'{{"v": 1, "id": {big}, "cmd": "status"}}',
                f'{{"v": {big}, "id": {n}, "cmd": "status"}}',
                f'{{"v": 1, "id": {n}, "cmd": "journal", "args": {{"after_id": {big}}}}}',
            ]
        )
        try:
            obj = json.loads(text)
        except ValueError:  # more digits than Python converts: not JSON the server can read
            return Case(kind, text.encode(), None, frozenset({"bad_json"}))
        return Case(kind, text.encode(), _id_of(obj), ANY)
    if kind == "nan_inf":
        literal = rng.choice(["NaN", "Infinity", "-Infinity"])
        text = rng.choice(
            [
                f'{{"v": 1, "id": {literal}, "cmd": "status"}}',
                f'{{"v": {literal}, "id": {n}, "cmd": "status"}}',
                f'{{"v": 1, "id": {n}, "cmd": "submit", "args": {{"order_id": "N", "variant": "oslo", '
                f'"quantity": 1, "parameters": {{"staple_pitch": {literal}}}}}}}',
                f'{{"v": 1, "id": {n}, "cmd": "spc", "args": {{"variant": {literal}, '
                f'"characteristic": "x"}}}}',
            ]
        )
        return Case(kind, text.encode(), _id_of(json.loads(text)), ANY - {"ok"})
    if kind == "wrong_envelope":
        obj: Any = {"v": 1, "id": rid, "cmd": "status", "args": {}}
        key = rng.choice(["v", "id", "cmd", "args", "extra", "drop"])
        if key == "drop":
            obj.pop(rng.choice(["v", "id", "cmd"]))
        else:
            obj[key] = rng.choice(WRONG_VALUES)
        if rng.random() < 0.1:
            obj = rng.choice(WRONG_VALUES)  # not an object
        return Case(kind, _line(obj), _id_of(obj), ANY if _valid_status(obj) else ANY - {"ok"})
    if kind == "fuzzed_args":
        cmd = rng.choice(list(COMMANDS))  # a watch's pushed events are told apart from replies when read
        obj = {"v": 1, "id": rid, "cmd": cmd, "args": _random_args(rng, cmd)}
        return Case(kind, _line(obj), rid, ANY)
    if kind == "unknown_command":
        cmd = rng.choice(["launch", "STATUS", "status ", "__init__", "x" * 64, "hello\n", "rm -rf"])
        obj = {"v": 1, "id": rid, "cmd": cmd}
        return Case(kind, _line(obj), rid, frozenset({"unknown_command", "bad_request"}))
    if kind == "not_allowed":
        cmd, args = rng.choice(
            [
                ("command", {"name": "abort"}),
                ("command", {"name": "stop"}),
                ("mode", {"name": "manual"}),
                ("cancel", {"order_id": "FZ-0"}),
                ("reorder", {"job_ids": []}),
                ("ack", {"alarm": "estop"}),
                ("lease", {"action": "take"}),
            ]
        )
        obj = {"v": 1, "id": rid, "cmd": cmd, "args": args}
        # A viewer may not; an operator may, but the integrator running the cell holds the lease.
        if role is Role.VIEWER:
            return Case(kind, _line(obj), rid, frozenset({"not_allowed"}))
        needs_integrator = cmd == "mode"
        return Case(kind, _line(obj), rid, frozenset({"not_allowed" if needs_integrator else "lease_held"}))
    if kind == "duplicate_id":
        return Case(kind, _line({"v": 1, "id": 7, "cmd": "hello"}), 7, frozenset({"ok"}))
    cmd = rng.choice(["status", "hello", "devices", "lease", "spc"])
    args = {"variant": "oslo", "characteristic": "seam_width"} if cmd == "spc" else {}
    return Case("valid_read", _line({"v": 1, "id": rid, "cmd": cmd, "args": args}), rid, ANY)


def storm(rng: random.Random) -> list[Fuzzer]:
    """The seeded cases, dealt round-robin to operator and viewer connections."""
    fuzzers = [Fuzzer(Role.OPERATOR if k % 2 == 0 else Role.VIEWER) for k in range(FUZZERS)]
    for n in range(LINES):
        fuzzer = fuzzers[n % FUZZERS]
        fuzzer.cases.append(_case(rng, fuzzer.role, n))
    return fuzzers


# --- running it -----------------------------------------------------------------------------------------


async def _read_replies(reader: asyncio.StreamReader, count: int) -> list[dict[str, Any]]:
    """The next ``count`` replies (pushed events, if any, are skipped)."""
    replies = []
    while len(replies) < count:
        raw = await reader.readline()
        assert raw.endswith(b"\n"), f"connection closed after {len(replies)} of {count} replies"
        message = json.loads(raw)
        if "event" not in message:
            replies.append(message)
    return replies


async def _send(writer: asyncio.StreamWriter, rng: random.Random, cases: list[Case]) -> None:
    """Write the cases: pipelined in floods of up to 50 lines, split lines in pieces with a pause between."""
    flood = bytearray()
    for case in cases:
        if case.split:
            writer.write(bytes(flood))
            flood.clear()
            data = case.line + b"\n"
            cuts = sorted(rng.sample(range(1, len(data)), k=min(3, len(data) - 1)))
            for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                writer.write(data[start:end])
                await writer.drain()
                await asyncio.sleep(0)  # let the server read the piece on its own
        else:
            flood += case.line + b"\n"
            if len(flood) > 256 * 1024 or rng.random() < 0.02:
                writer.write(bytes(flood))
                flood.clear()
                await writer.drain()
    writer.write(bytes(flood))
    await writer.drain()


async def fuzz_connection(path: Path, fuzzer: Fuzzer, rng: random.Random) -> list[dict[str, Any]]:
    """Send one fuzzer's cases over one connection while reading its replies; then check it still serves."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=8 * MAX_LINE)
    try:
        writer.write(_line({"v": 1, "id": "whoami", "cmd": "hello"}) + b"\n")
        (hello,) = await _read_replies(reader, 1)
        assert hello["result"]["role"] == fuzzer.role.value
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_send(writer, rng, fuzzer.cases))
            replies = await _read_replies(reader, len(fuzzer.cases))
        writer.write(_line({"v": 1, "id": "after", "cmd": "status"}) + b"\n")
        (after,) = await _read_replies(reader, 1)
        assert after["id"] == "after" and after["ok"] is True
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def hang_up(path: Path, rng: random.Random) -> str:
    """Write part of a line (sometimes of an overlong one, sometimes a few whole lines first) and vanish."""
    kind = rng.choice(["mid_line", "mid_overlong", "after_flood"])
    _reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        if kind == "after_flood":
            writer.write(b'{"v": 1, "id": 1, "cmd": "status"}\n' * rng.randrange(1, 200))
        elif kind == "mid_overlong":
            writer.write(b"[" * (MAX_LINE + rng.randrange(1, 1000)))
        writer.write(b'{"v": 1, "id": 2, "cmd": "sub')
        await writer.drain()
    finally:
        writer.transport.abort()  # no FIN handshake: a reset, as a killed client would leave
    return f"hangup_{kind}"


@dataclass
class Producing:
    cell: Cell
    driver: ControlClient


@pytest.fixture
async def producing(config_dir: Path, tmp_path: Path) -> AsyncIterator[Producing]:
    """A cell in Execute on a long order, driven by an integrator's connection that keeps the lease."""
    config = load_config(config_dir)
    async with (
        serving(config, soft_cell(config.cell), tmp_path, roles=FuzzRoles()) as cell,
        ControlClient(cell.path) as driver,
    ):
        assert (await driver.request("hello"))["role"] == "integrator"
        await driver.watch()
        await driver.request("command", name="reset")
        await until(driver, is_state("Idle"))
        await driver.request("command", name="start")
        await until(driver, is_state("Execute"))
        await driver.request("submit", order_id="FZ-LONG", variant="oslo", quantity=100_000)
        await until(driver, lambda e: e.kind == "part")
        yield Producing(cell, driver)


def produced(cell: Cell) -> int:
    counters: dict[str, int] = cell.engine.status().to_dict()["counters"]
    return counters["parts"]


async def test_the_api_survives_a_storm_of_hostile_lines_while_the_cell_produces(
    producing: Producing, capsys: pytest.CaptureFixture[str]
) -> None:
    cell, rng = producing.cell, random.Random(SEED)
    fuzzers = storm(rng)
    before = produced(cell)

    async with asyncio.timeout(BUDGET_S), asyncio.TaskGroup() as tg:
        runs = [
            tg.create_task(fuzz_connection(cell.path, f, random.Random(SEED + k)))
            for k, f in enumerate(fuzzers)
        ]
        hangups = [tg.create_task(hang_up(cell.path, random.Random(SEED - k))) for k in range(HANGUPS)]
    during = produced(cell)

    counts: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    for fuzzer, run in zip(fuzzers, runs, strict=True):
        replies = run.result()
        assert len(replies) == len(fuzzer.cases)
        for case, reply in zip(fuzzer.cases, replies, strict=True):
            counts[case.kind] += 1
            outcome = "ok" if reply["ok"] else reply["error"]["code"]
            outcomes[outcome] += 1
            context = f"{case.kind} {case.line[:120]!r} -> {reply}"
            assert reply["id"] == case.reply_id, context
            assert outcome in case.codes, context
            assert outcome in CODES | {"ok"}, context
            assert outcome != "internal", context
    counts.update(h.result() for h in hangups)

    # Then the cell still produces, and a fresh client is served.
    await until(producing.driver, lambda e: e.kind == "part")
    async with ControlClient(cell.path) as fresh:
        status = await fresh.request("status")
    after = produced(cell)
    assert status["state"] == "Execute"
    assert before < during < after
    accepted_by = {
        e.args["caller"]["connection"]
        for e in cell.sink.events
        if isinstance(e, OperatorAction) and e.accepted and e.action != "lease"
    }
    assert accepted_by == {1}, "only the lease holder changed the cell"

    with capsys.disabled():
        total = sum(counts.values())
        print(f"\napi fuzz (seed {SEED}): {total} cases over {FUZZERS} connections + {HANGUPS} hang-ups")
        for kind, count in sorted(counts.items()):
            print(f"  {kind:<22} {count}")
        print("  replies: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
        print(f"  parts made: {before} before, {during} after the storm, {after} at the end")


def test_the_storm_is_the_same_for_the_same_seed() -> None:
    first, second = storm(random.Random(SEED)), storm(random.Random(SEED))

    assert [[c.line for c in f.cases] for f in first] == [[c.line for c in f.cases] for f in second]
