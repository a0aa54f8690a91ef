"""The control API wire format: which lines are requests, which error code each bad line gets, and framing."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.api.protocol import (
    COMMANDS,
    MAX_LINE,
    MIN_ROLE,
    PACKML_COMMANDS,
    CancelArgs,
    CommandArgs,
    ErrorCode,
    EventBody,
    EventPush,
    JournalArgs,
    LineBuffer,
    Overlong,
    ProtocolError,
    Reply,
    Request,
    Role,
    SubmitArgs,
    WatchArgs,
    changes_state,
    parse_args,
    parse_request,
    parse_server_line,
    required_role,
)
from cellctl.core.packml import Command
from cellctl.errors import ApiError


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def refused(raw: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    return info.value


# --- requests -------------------------------------------------------------------------------------------


def test_a_well_formed_request_is_parsed_with_its_id_command_and_args() -> None:
    request = parse_request(line({"v": 1, "id": 7, "cmd": "cancel", "args": {"job_id": "J-1"}}))

    assert request == Request(id=7, cmd="cancel", args={"job_id": "J-1"})


def test_args_may_be_left_out() -> None:
    assert parse_request(line({"v": 1, "id": "a", "cmd": "status"})).args == {}


def test_a_request_encodes_to_one_line_that_parses_back() -> None:
    request = Request(id="x-1", cmd="submit", args={"order_id": "O1", "variant": "oslo", "quantity": 2})

    encoded = request.encode()

    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    assert parse_request(encoded.rstrip(b"\n")) == request


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b'{"v": 1, "id": 1,}', b"[" * 60_000])
def test_a_line_that_is_not_json_is_bad_json_without_an_id(raw: bytes) -> None:
    error = refused(raw)

    assert error.code == ErrorCode.BAD_JSON
    assert error.request_id is None


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"status"', b"null"])
def test_json_that_is_not_an_object_is_a_bad_request(raw: bytes) -> None:
    assert refused(raw).code == ErrorCode.BAD_REQUEST


def test_a_missing_protocol_version_is_a_bad_request_that_keeps_the_id() -> None:
    error = refused(line({"id": 3, "cmd": "status"}))

    assert (error.code, error.request_id) == (ErrorCode.BAD_REQUEST, 3)
    assert "v" in str(error)


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_another_protocol_version_is_a_bad_request_naming_ours(version: object) -> None:
    error = refused(line({"v": version, "id": 3, "cmd": "status"}))

    assert error.code == ErrorCode.BAD_REQUEST
    assert "v=1" in str(error)


@pytest.mark.parametrize(
    "obj",
    [
        {"v": 1, "cmd": "status"},
        {"v": 1, "id": None, "cmd": "status"},
        {"v": 1, "id": True, "cmd": "status"},
        {"v": 1, "id": 1.5, "cmd": "status"},
        {"v": 1, "id": "x" * 129, "cmd": "status"},
        {"v": 1, "id": 1},
        {"v": 1, "id": 1, "cmd": 5},
        {"v": 1, "id": 1, "cmd": "status", "args": []},
        {"v": 1, "id": 1, "cmd": "status", "extra": 1},
    ],
)
def test_a_malformed_envelope_is_a_bad_request(obj: dict[str, object]) -> None:
    assert refused(line(obj)).code == ErrorCode.BAD_REQUEST


def test_a_bad_request_names_the_offending_field() -> None:
    assert "cmd" in str(refused(line({"v": 1, "id": 1, "cmd": 5})))


def test_a_bad_request_keeps_an_id_it_could_read() -> None:
    assert refused(line({"v": 1, "id": "r1", "cmd": 5})).request_id == "r1"


def test_an_unknown_command_is_refused_as_such_with_its_id() -> None:
    error = refused(line({"v": 1, "id": 9, "cmd": "launch"}))

    assert (error.code, error.request_id) == (ErrorCode.UNKNOWN_COMMAND, 9)
    assert "launch" in str(error)


def test_a_line_over_the_limit_is_too_large() -> None:
    raw = line({"v": 1, "id": 1, "cmd": "status", "args": {"pad": "x" * MAX_LINE}})

    assert refused(raw).code == ErrorCode.TOO_LARGE


def test_a_protocol_error_is_an_api_error_with_its_code() -> None:
    error = refused(b"{")

    assert isinstance(error, ApiError)
    assert error.code == "bad_json"


# --- args -----------------------------------------------------------------------------------------------


def test_the_known_commands_are_exactly_those_of_the_protocol() -> None:
    assert set(COMMANDS) == {
        "hello",
        "status",
        "command",
        "mode",
        "submit",
        "cancel",
        "reorder",
        "apply_proposal",
        "confirm",
        "sign_off",
        "ack",
        "spc",
        "watch",
        "journal",
        "devices",
        "lease",
    }


def test_every_command_has_a_minimum_role() -> None:
    assert set(MIN_ROLE) == set(COMMANDS)


def test_reads_are_a_viewers_orders_and_packml_an_operators_and_modes_an_integrators() -> None:
    viewer = {c for c, r in MIN_ROLE.items() if r is Role.VIEWER}
    assert viewer == {"hello", "status", "watch", "journal", "spc", "devices", "lease"}
    assert required_role("command", {"name": "abort"}) is Role.OPERATOR
    assert required_role("ack", {}) is Role.OPERATOR
    assert required_role("mode", {"name": "manual"}) is Role.INTEGRATOR


def test_showing_the_lease_is_a_viewers_and_taking_or_releasing_it_an_operators() -> None:
    assert required_role("lease", {}) is Role.VIEWER
    assert required_role("lease", {"action": "show"}) is Role.VIEWER
    assert required_role("lease", {"action": "take"}) is Role.OPERATOR
    assert required_role("lease", {"action": "release"}) is Role.OPERATOR
    assert required_role("lease", ["take"]) is Role.VIEWER  # malformed args: refused by parse_args later


def test_roles_are_ordered_viewer_operator_integrator() -> None:
    assert Role.INTEGRATOR.at_least(Role.OPERATOR) and Role.OPERATOR.at_least(Role.VIEWER)
    assert not Role.VIEWER.at_least(Role.OPERATOR)
    assert Role.OPERATOR.at_least(Role.OPERATOR)


def test_only_commands_above_viewer_change_state() -> None:
    assert changes_state("command") and changes_state("submit") and changes_state("mode")
    assert not changes_state("status") and not changes_state("watch")


def test_the_command_names_are_the_packml_commands() -> None:
    assert list(PACKML_COMMANDS) == [c.label for c in Command]


@pytest.mark.parametrize("name", PACKML_COMMANDS)
def test_every_packml_command_is_accepted_by_name(name: str) -> None:
    assert parse_args(Request(id=1, cmd="command", args={"name": name})) == CommandArgs(name=name)  # type: ignore[arg-type]


def test_a_command_name_that_is_not_packml_is_a_bad_request_listing_the_allowed_ones() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_args(Request(id=4, cmd="command", args={"name": "launch"}))

    assert (info.value.code, info.value.request_id) == (ErrorCode.BAD_REQUEST, 4)
    assert "args.name" in str(info.value)
    assert "'reset'" in str(info.value)


def test_submit_args_take_defaults_for_parameters_and_priority() -> None:
    args = parse_args(Request(id=1, cmd="submit", args={"order_id": "O1", "variant": "oslo", "quantity": 3}))

    assert args == SubmitArgs(order_id="O1", variant="oslo", quantity=3, parameters={}, priority=0)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"variant": "oslo", "quantity": 3}, "order_id"),
        ({"order_id": "O1", "variant": "oslo", "quantity": 0}, "quantity"),
        ({"order_id": "O1", "variant": "oslo", "quantity": 2.5}, "quantity"),
        ({"order_id": "", "variant": "oslo", "quantity": 1}, "order_id"),
        ({"order_id": "O1", "variant": "oslo", "quantity": 1, "parameters": {"pitch": "wide"}}, "parameters"),
        (
            {"order_id": "O1", "variant": "oslo", "quantity": 1, "parameters": {"pitch": math.inf}},
            "parameters",
        ),
        ({"order_id": "O1", "variant": "oslo", "quantity": 1, "colour": "red"}, "colour"),
    ],
)
def test_bad_submit_args_are_a_bad_request_naming_the_field(args: dict[str, object], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_args(Request(id=1, cmd="submit", args=args))

    assert info.value.code == ErrorCode.BAD_REQUEST
    assert field in str(info.value)


def test_cancel_needs_a_job_id_or_an_order_id() -> None:
    assert parse_args(Request(id=1, cmd="cancel", args={"job_id": "J-2"})) == CancelArgs(job_id="J-2")
    by_order = parse_args(Request(id=1, cmd="cancel", args={"order_id": "PO-1"}))
    assert by_order == CancelArgs(order_id="PO-1")
    with pytest.raises(ProtocolError, match="give exactly one of job_id and order_id"):
        parse_args(Request(id=1, cmd="cancel"))


def test_cancel_takes_a_job_id_or_an_order_id_not_both() -> None:
    with pytest.raises(ProtocolError, match="give exactly one of job_id and order_id"):
        parse_args(Request(id=1, cmd="cancel", args={"job_id": "J-2", "order_id": "PO-1"}))


def test_watch_resumes_only_from_a_non_negative_seq() -> None:
    assert parse_args(Request(id=1, cmd="watch")) == WatchArgs(since_seq=None, epoch=None)
    assert parse_args(Request(id=1, cmd="watch", args={"since_seq": 5})) == WatchArgs(since_seq=5)
    with pytest.raises(ProtocolError):
        parse_args(Request(id=1, cmd="watch", args={"since_seq": -1}))


def test_journal_limits_are_bounded() -> None:
    assert parse_args(Request(id=1, cmd="journal")) == JournalArgs(after_id=0, limit=100)
    with pytest.raises(ProtocolError):
        parse_args(Request(id=1, cmd="journal", args={"limit": 100_000}))


# --- replies and events ---------------------------------------------------------------------------------


def test_an_ok_reply_carries_its_result_and_no_error_key() -> None:
    sent = json.loads(Reply.success(5, {"state": "Idle"}).encode())

    assert sent == {"v": 1, "id": 5, "ok": True, "result": {"state": "Idle"}}


def test_a_failed_reply_carries_its_error_and_no_result_key() -> None:
    sent = json.loads(Reply.failure(None, ErrorCode.BAD_JSON, "nope").encode())

    assert sent == {"v": 1, "id": None, "ok": False, "error": {"code": "bad_json", "message": "nope"}}


def test_a_reply_is_either_ok_with_a_result_or_failed_with_an_error() -> None:
    with pytest.raises(ValueError):
        Reply(id=1, ok=True)
    with pytest.raises(ValueError):
        Reply(id=1, ok=False, result={})


def test_a_value_json_cannot_hold_is_sent_as_null_not_as_invalid_json() -> None:
    sent = json.loads(Reply.success(1, {"x": math.nan}).encode())

    assert sent["result"] == {"x": None}


def test_the_client_tells_replies_from_events() -> None:
    push = EventPush(
        seq=3, event=EventBody(kind="state_changed", stream="state", ts=1.0, data={"state": "Idle"})
    )

    assert parse_server_line(Reply.success(2, {}).encode().rstrip()) == Reply.success(2, {})
    assert parse_server_line(push.encode().rstrip()) == push


def test_a_notice_has_seq_zero() -> None:
    notice = EventPush(seq=0, event=EventBody(kind="watch_dropped", stream="api", ts=0.0))

    assert notice.is_notice
    assert not EventPush(seq=1, event=notice.event).is_notice


# --- framing --------------------------------------------------------------------------------------------


def test_lines_split_across_chunks_are_joined() -> None:
    buffer = LineBuffer(limit=100)

    assert buffer.feed(b'{"a"') == []
    assert buffer.feed(b": 1}\n{") == [b'{"a": 1}']
    assert buffer.feed(b"}\n\n") == [b"{}", b""]


def test_an_overlong_line_is_reported_once_and_the_next_line_survives() -> None:
    buffer = LineBuffer(limit=10)

    out = [*buffer.feed(b"x" * 8), *buffer.feed(b"x" * 8), *buffer.feed(b"x" * 30), *buffer.feed(b"yy\nok\n")]

    assert out == [Overlong.LINE, b"ok"]


def test_an_overlong_line_within_one_chunk_is_reported() -> None:
    assert LineBuffer(limit=4).feed(b"12345\n1234\n") == [Overlong.LINE, b"1234"]


def test_the_buffer_never_holds_more_than_the_limit_of_one_line() -> None:
    buffer = LineBuffer(limit=10)
    for _ in range(100):
        buffer.feed(b"z" * 1000)

    assert buffer.finish() is None


def test_an_unterminated_last_line_is_returned_at_the_end() -> None:
    buffer = LineBuffer()
    buffer.feed(b'{"v": 1}')

    assert buffer.finish() == b'{"v": 1}'


def test_a_reply_whose_id_utf8_cannot_carry_is_encoded_escaped() -> None:
    line = Reply.failure("\ud800", ErrorCode.BAD_REQUEST, "id \udfff").encode()

    assert json.loads(line) == {
        "v": 1,
        "id": "\ud800",
        "ok": False,
        "error": {"code": "bad_request", "message": "id \udfff"},
    }


def test_a_pushed_event_with_a_lone_surrogate_is_encoded_escaped() -> None:
    push = EventPush(seq=1, event=EventBody(kind="k", stream="s", ts=1.0, data={"tag": "\ud800"}))

    assert json.loads(push.encode())["event"]["data"]["tag"] == "\ud800"


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_request(b"[" * 60_000)

    assert refused.value.code == "bad_json"


# --- properties: no line breaks the parser or the reply --------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "v": JSON_VALUES | st.just(1),
        "id": JSON_VALUES,
        "cmd": st.sampled_from(list(COMMANDS)) | st.text(max_size=8),
        "args": JSON_VALUES,
    },
)


def _answer(line: bytes) -> bytes:
    """What the server would send for ``line`` before any handler runs: the refusal, or an ok marker."""
    try:
        request = parse_request(line)
        parse_args(request)
    except ProtocolError as exc:
        assert exc.code in {c.value for c in ErrorCode}
        return Reply.failure(exc.request_id, exc.code, str(exc)).encode()
    return Reply.success(request.id, {}).encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_get_a_reply_that_encodes(line: bytes) -> None:
    assert json.loads(_answer(line))["v"] == 1


@settings(max_examples=300, deadline=None)
@given(ENVELOPES)
def test_any_json_envelope_gets_a_reply_with_its_id_when_it_has_a_usable_one(obj: dict[str, Any]) -> None:
    line = json.dumps(obj).encode()

    reply = json.loads(_answer(line))

    raw = obj.get("id")
    usable = isinstance(raw, int | str) and not isinstance(raw, bool)
    assert reply["id"] == (raw if usable else None)
