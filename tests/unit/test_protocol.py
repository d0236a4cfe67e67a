"""Wire protocol v1 (node/protocol.py): parsing client frames, the error rules, encoding frames."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomstate.errors import RequestError
from roomstate.wire.protocol import (
    MAX_GROWTH,
    MAX_RECIPIENTS,
    Join,
    Leave,
    Limits,
    Ping,
    SendAppMessage,
    SetMeetingSessionData,
    SetUserData,
    compact_size,
    depth,
    encode,
    encode_error,
    parse,
    parse_session_data_write,
    request_id_of,
)

LIMITS = Limits()
KNOWN_TYPES = (
    "join",
    "leave",
    "ping",
    "send-app-message",
    "set-meeting-session-data",
    "set-user-data",
)


def frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def parse_error(raw: bytes | str, limits: Limits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(raw, limits)
    return caught.value


def string_of_size(size: int) -> str:
    """A JSON string whose compact encoding (quotes included) is `size` bytes."""
    return "x" * (size - 2)


# -- every request type parses into its dataclass --

IDS = [None, 7, "req-1"]

REQUESTS: list[tuple[dict[str, Any], Any]] = [
    (
        {
            "type": "join",
            "token": "tok",
            "userName": "Ann",
            "userData": {"hand": True},
            "resume": "rt",
        },
        lambda rid: Join(
            rid,
            token="tok",
            user_name="Ann",
            user_data={"hand": True},
            resume="rt",
            resume_after=None,
        ),
    ),
    (
        {"type": "join"},
        lambda rid: Join(
            rid, token=None, user_name=None, user_data=None, resume=None, resume_after=None
        ),
    ),
    (
        {"type": "send-app-message", "data": {"n": 1}},
        lambda rid: SendAppMessage(rid, {"n": 1}, "*"),
    ),
    (
        {"type": "send-app-message", "data": "hi", "to": "s2"},
        lambda rid: SendAppMessage(rid, "hi", "s2"),
    ),
    (
        {"type": "send-app-message", "data": None, "to": ["s2", "s3"]},
        lambda rid: SendAppMessage(rid, None, ("s2", "s3")),
    ),
    ({"type": "set-user-data", "data": [1, 2]}, lambda rid: SetUserData(rid, [1, 2])),
    ({"type": "set-user-data", "data": None}, lambda rid: SetUserData(rid, None)),
    (
        {"type": "set-meeting-session-data", "data": {"a": 1}},
        lambda rid: SetMeetingSessionData(rid, {"a": 1}, "replace", ()),
    ),
    (
        {
            "type": "set-meeting-session-data",
            "data": {"a": 1},
            "mergeStrategy": "shallow-merge",
            "keysToDelete": ["b", "c", "b"],
        },
        lambda rid: SetMeetingSessionData(rid, {"a": 1}, "shallow-merge", ("b", "c")),
    ),
    ({"type": "leave"}, lambda rid: Leave(rid)),
    ({"type": "ping"}, lambda rid: Ping(rid)),
]


@pytest.mark.parametrize("request_id", IDS)
@pytest.mark.parametrize(("fields", "expected"), REQUESTS)
def test_each_request_type_parses_into_its_dataclass_and_keeps_its_id(
    fields: dict[str, Any], expected: Any, request_id: str | int | None
) -> None:
    if request_id is not None:
        fields = {**fields, "id": request_id}
    assert parse(orjson.dumps(fields), LIMITS) == expected(request_id)


def test_parse_accepts_str_as_well_as_bytes() -> None:
    assert parse('{"type":"ping","id":"a"}', LIMITS) == Ping("a")


def test_an_int_id_and_a_str_id_keep_their_types() -> None:
    assert parse(frame(type="ping", id=12), LIMITS).id == 12
    assert parse(frame(type="ping", id="12"), LIMITS).id == "12"


# -- the documented errors --


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff", b'{"type":"ping"', b"nul"])
def test_a_frame_that_is_not_json_is_bad_json(raw: bytes) -> None:
    assert parse_error(raw).code == "bad-json"


@pytest.mark.parametrize("raw", [b"[]", b'[{"type":"ping"}]', b"3", b'"ping"', b"null", b"true"])
def test_json_that_is_not_an_object_is_bad_json(raw: bytes) -> None:
    assert parse_error(raw).code == "bad-json"


@pytest.mark.parametrize("raw", [b"{}", b'{"id":1}', b'{"type":3}', b'{"type":null}'])
def test_a_missing_or_non_string_type_is_bad_request(raw: bytes) -> None:
    error = parse_error(raw)
    assert error.code == "bad-request"
    assert "type" in error.message


def test_an_unknown_type_is_unknown_type_and_lists_the_known_types() -> None:
    error = parse_error(frame(type="shout"))
    assert error.code == "unknown-type"
    assert "shout" in error.message
    for known in KNOWN_TYPES:
        assert known in error.message


@pytest.mark.parametrize("kind", ["send-app-message", "set-user-data", "set-meeting-session-data"])
def test_a_missing_data_field_is_bad_request(kind: str) -> None:
    error = parse_error(frame(type=kind))
    assert error.code == "bad-request"
    assert "data" in error.message


def session_write(**fields: Any) -> dict[str, Any]:
    return {"type": "set-meeting-session-data", "data": {}, **fields}


def merge_write(**fields: Any) -> dict[str, Any]:
    return session_write(mergeStrategy="shallow-merge", **fields)


WRONG_TYPED = [
    pytest.param({"type": "send-app-message", "data": 1, "to": 5}, id="to-number"),
    pytest.param({"type": "send-app-message", "data": 1, "to": ""}, id="to-empty"),
    pytest.param({"type": "send-app-message", "data": 1, "to": None}, id="to-null"),
    pytest.param({"type": "send-app-message", "data": 1, "to": ["s1", 2]}, id="to-list-number"),
    pytest.param({"type": "send-app-message", "data": 1, "to": {"s1": 1}}, id="to-object"),
    pytest.param({"type": "join", "userName": 5}, id="userName-number"),
    pytest.param({"type": "join", "userName": "x" * 257}, id="userName-too-long"),
    pytest.param({"type": "join", "token": ["t"]}, id="token-list"),
    pytest.param({"type": "join", "resume": 1}, id="resume-number"),
    pytest.param({"type": "join", "resumeAfter": 5}, id="resumeAfter-number"),
    pytest.param({"type": "join", "resumeAfter": "x"}, id="resumeAfter-not-a-position"),
    pytest.param({"type": "join", "resumeAfter": "1-2-3"}, id="resumeAfter-three-parts"),
    pytest.param({"type": "join", "resumeAfter": "-1"}, id="resumeAfter-negative"),
    pytest.param({"type": "join", "resumeAfter": "9" * 21}, id="resumeAfter-too-long"),
    pytest.param({"type": "send-app-message", "data": 1, "to": "s" * 65}, id="to-id-too-long"),
    pytest.param({"type": "send-app-message", "data": 1, "to": ["s1", ""]}, id="to-list-empty-id"),
    pytest.param(session_write(data=[1]), id="session-data-list"),
    pytest.param(session_write(data="text"), id="session-data-string"),
    pytest.param(session_write(data=None), id="session-data-null"),
    pytest.param(session_write(mergeStrategy="deep-merge"), id="mergeStrategy-other"),
    pytest.param(session_write(mergeStrategy=None), id="mergeStrategy-null"),
    pytest.param(merge_write(keysToDelete="a"), id="keysToDelete-string"),
    pytest.param(merge_write(keysToDelete={"a": 1}), id="keysToDelete-object"),
    pytest.param(merge_write(keysToDelete=[1]), id="keysToDelete-list-number"),
    pytest.param(merge_write(keysToDelete={}), id="keysToDelete-empty-object"),
    pytest.param(merge_write(keysToDelete=0), id="keysToDelete-zero"),
    pytest.param(session_write(keysToDelete=["a"]), id="keysToDelete-with-default-replace"),
    pytest.param(
        session_write(mergeStrategy="replace", keysToDelete=["a"]), id="keysToDelete-with-replace"
    ),
    pytest.param(merge_write(data={"a": 1, "b": 2}, keysToDelete=["a"]), id="set-and-deleted"),
    pytest.param({"type": "ping", "id": True}, id="id-true"),
    pytest.param({"type": "ping", "id": False}, id="id-false"),
    pytest.param({"type": "ping", "id": 1.5}, id="id-float"),
    pytest.param({"type": "ping", "id": ""}, id="id-empty"),
    pytest.param({"type": "ping", "id": "x" * 65}, id="id-too-long"),
    pytest.param({"type": "ping", "id": [1]}, id="id-list"),
]


@pytest.mark.parametrize("fields", WRONG_TYPED)
def test_a_wrong_typed_or_contradictory_field_is_bad_request(fields: dict[str, Any]) -> None:
    assert parse_error(orjson.dumps(fields)).code == "bad-request"


def test_a_key_both_set_and_deleted_is_named_in_the_error() -> None:
    error = parse_error(
        frame(
            type="set-meeting-session-data",
            data={"a": 1, "b": 2},
            mergeStrategy="shallow-merge",
            keysToDelete=["b"],
        )
    )
    assert error.code == "bad-request"
    assert error.message.endswith(": b")


@pytest.mark.parametrize("position", ["0", "17", "1732840000000-0", "1732840000000-12"])
def test_resume_after_takes_a_position_of_either_bus(position: str) -> None:
    request = parse(frame(type="join", resumeAfter=position), LIMITS)
    assert isinstance(request, Join) and request.resume_after == position


def test_resume_after_that_is_no_position_is_refused_naming_the_field() -> None:
    error = parse_error(frame(type="join", resume="s.x", resumeAfter="x"))
    assert (error.code, "'resumeAfter'" in error.message) == ("bad-request", True)


def test_recipients_repeated_in_to_are_kept_once_in_order() -> None:
    request = parse(frame(type="send-app-message", data=1, to=["b", "a", "b"]), LIMITS)
    assert request == SendAppMessage(None, 1, ("b", "a"))


def test_to_lists_at_most_the_recipient_limit() -> None:
    """The list is stored with the message: unbounded, it would let one message outgrow the
    4 KB data limit many times over."""
    most = [f"s{n}" for n in range(MAX_RECIPIENTS)]
    assert parse(frame(type="send-app-message", data=1, to=most), LIMITS).to == tuple(most)
    error = parse_error(frame(type="send-app-message", data=1, to=[*most, "one-more"]))
    assert error.code == "bad-request"
    assert f"'to' lists {MAX_RECIPIENTS + 1} session ids; the limit is {MAX_RECIPIENTS}" in (
        error.message
    )


def test_the_longest_allowed_id_is_accepted() -> None:
    assert parse(frame(type="ping", id="x" * 64), LIMITS) == Ping("x" * 64)


def nested_frame(levels: int) -> bytes:
    """A ping frame whose whole nesting depth (the frame object included) is `levels`."""
    inner = "[" * (levels - 1) + "]" * (levels - 1)
    return f'{{"type":"ping","x":{inner}}}'.encode()


def test_nesting_of_exactly_32_levels_is_accepted() -> None:
    assert depth(orjson.loads(nested_frame(32))) == 32
    assert parse(nested_frame(32), LIMITS) == Ping(None)


def test_nesting_deeper_than_32_is_bad_request_naming_32() -> None:
    error = parse_error(nested_frame(33))
    assert error.code == "bad-request"
    assert "32" in error.message


def test_nesting_deeper_than_the_json_decoder_allows_is_bad_request() -> None:
    error = parse_error(nested_frame(2000))
    assert error.code == "bad-request"
    assert "32" in error.message


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
    ],
)
def test_a_100000_deep_frame_is_bad_request_not_a_crash(raw: str) -> None:
    error = parse_error(raw)
    assert error.code == "bad-request"
    assert "32" in error.message


def test_a_custom_depth_limit_is_used() -> None:
    assert parse(nested_frame(5), Limits(max_depth=5)) == Ping(None)
    error = parse_error(nested_frame(6), Limits(max_depth=5))
    assert error.code == "bad-request" and "5" in error.message


# -- size limits --


def test_app_message_data_of_4097_bytes_is_too_large_naming_both_sizes() -> None:
    error = parse_error(frame(type="send-app-message", data=string_of_size(4097)))
    assert error.code == "too-large"
    assert "is 4097 bytes; the limit is 4096" in error.message


def test_app_message_data_of_exactly_4096_bytes_is_accepted() -> None:
    data = string_of_size(4096)
    assert parse(frame(type="send-app-message", data=data), LIMITS) == SendAppMessage(
        None, data, "*"
    )


def test_app_message_size_is_measured_as_compact_json_not_as_sent() -> None:
    data = {"k": string_of_size(4096 - len('{"k":}'))}
    assert compact_size(data) == 4096
    spaced = orjson.dumps({"type": "send-app-message", "data": data}, option=orjson.OPT_INDENT_2)
    assert parse(spaced, LIMITS) == SendAppMessage(None, data, "*")


def test_user_data_of_4097_bytes_is_too_large_in_set_user_data() -> None:
    error = parse_error(frame(type="set-user-data", data=string_of_size(4097)))
    assert error.code == "too-large"
    assert "is 4097 bytes; the limit is 4096" in error.message


def test_user_data_of_exactly_4096_bytes_is_accepted_in_set_user_data() -> None:
    data = string_of_size(4096)
    assert parse(frame(type="set-user-data", data=data), LIMITS) == SetUserData(None, data)


def test_user_data_of_4097_bytes_is_too_large_in_join() -> None:
    error = parse_error(frame(type="join", userData=string_of_size(4097)))
    assert error.code == "too-large"
    assert "is 4097 bytes; the limit is 4096" in error.message


def test_user_data_of_exactly_4096_bytes_is_accepted_in_join() -> None:
    data = string_of_size(4096)
    request = parse(frame(type="join", userData=data), LIMITS)
    assert isinstance(request, Join) and request.user_data == data


SMALL = Limits(session_data_bytes=100)


def session_data_of_size(size: int) -> dict[str, str]:
    return {"k": "x" * (size - len('{"k":""}'))}


def test_session_data_over_its_limit_is_too_large_naming_both_sizes() -> None:
    data = session_data_of_size(101)
    assert compact_size(data) == 101
    error = parse_error(frame(type="set-meeting-session-data", data=data), SMALL)
    assert error.code == "too-large"
    assert "is 101 bytes; the limit is 100" in error.message


def test_session_data_of_exactly_its_limit_is_accepted() -> None:
    data = session_data_of_size(100)
    request = parse(frame(type="set-meeting-session-data", data=data), SMALL)
    assert request == SetMeetingSessionData(None, data, "replace", ())


def test_the_default_session_data_limit_is_102400_bytes() -> None:
    accepted = session_data_of_size(102_400)
    assert parse(frame(type="set-meeting-session-data", data=accepted), LIMITS).data == accepted
    error = parse_error(frame(type="set-meeting-session-data", data=session_data_of_size(102_401)))
    assert error.code == "too-large"
    assert "is 102401 bytes; the limit is 102400" in error.message


# -- the request id travels with the error --


@pytest.mark.parametrize("request_id", [7, "abc", 0])
@pytest.mark.parametrize(
    "fields",
    [
        {"type": "shout"},
        {"type": "set-user-data"},
        {"type": "send-app-message", "data": 1, "to": 5},
        {"type": "set-user-data", "data": string_of_size(4097)},
        {"type": "set-meeting-session-data", "data": [1]},
        {"type": "ping", "x": orjson.loads(b"[" * 40 + b"]" * 40)},
    ],
)
def test_an_error_carries_the_request_id(fields: dict[str, Any], request_id: str | int) -> None:
    assert parse_error(orjson.dumps({**fields, "id": request_id})).request_id == request_id


def test_an_error_for_a_request_without_id_has_no_id() -> None:
    assert parse_error(frame(type="shout")).request_id is None


def test_a_missing_type_still_echoes_the_id() -> None:
    error = parse_error(frame(id="r1"))
    assert (error.code, error.request_id) == ("bad-request", "r1")


def test_bad_json_has_no_id() -> None:
    assert parse_error(b'{"id": 3, ').request_id is None


def test_parse_session_data_write_validates_a_rest_body_and_keeps_the_given_id() -> None:
    body = {"data": {"a": 1}, "mergeStrategy": "shallow-merge", "keysToDelete": ["z"]}
    assert parse_session_data_write(body, "rest-1", LIMITS) == SetMeetingSessionData(
        "rest-1", {"a": 1}, "shallow-merge", ("z",)
    )
    with pytest.raises(RequestError) as caught:
        parse_session_data_write({"data": 1}, "rest-2", LIMITS)
    assert caught.value.code == "bad-request"


# -- sizes and depth --


def test_compact_size_counts_utf8_bytes_of_compact_json() -> None:
    assert compact_size({"a": [1, 2]}) == len(b'{"a":[1,2]}')
    assert compact_size("é") == 4  # two quotes and two UTF-8 bytes
    assert compact_size(None) == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 0), ("s", 0), (None, 0), ([], 1), ({}, 1), ([1, 2], 1), ([[1]], 2), ({"a": {"b": []}}, 3)],
)
def test_depth_counts_nesting_levels(value: Any, expected: int) -> None:
    assert depth(value) == expected


def test_depth_takes_the_deepest_branch() -> None:
    assert depth({"a": 1, "b": [[[]]], "c": [1]}) == 4


def test_depth_handles_100000_levels_without_recursion() -> None:
    value: list[Any] = []
    for _ in range(100_000 - 1):
        value = [value]
    assert depth(value) == 100_000


# -- server frames --


def test_encode_is_compact_json_bytes_with_type_first() -> None:
    out = encode("ack", id=3)
    assert isinstance(out, bytes)
    assert out == b'{"type":"ack","id":3}'
    out = encode("app-message", data={"a": [1, 2]}, fromId="s1")
    assert out == b'{"type":"app-message","data":{"a":[1,2]},"fromId":"s1"}'
    assert next(iter(orjson.loads(out))) == "type"


def test_encode_drops_an_id_of_none_only() -> None:
    assert encode("pong", id=None) == b'{"type":"pong"}'
    assert encode("pong", id=0) == b'{"type":"pong","id":0}'
    assert encode("pong", id="") == b'{"type":"pong","id":""}'
    assert encode("app-message", data=None, fromId="API") == (
        b'{"type":"app-message","data":null,"fromId":"API"}'
    )


def test_encode_error_with_and_without_id() -> None:
    assert orjson.loads(encode_error(5, "bad-request", "nope")) == {
        "type": "error",
        "id": 5,
        "code": "bad-request",
        "message": "nope",
    }
    assert (
        encode_error(None, "bad-json", "x") == b'{"type":"error","code":"bad-json","message":"x"}'
    )


def test_a_parse_error_encodes_into_an_error_frame_with_the_request_id() -> None:
    error = parse_error(frame(type="shout", id="q"))
    reply = orjson.loads(encode_error(error.request_id, error.code, error.message))
    assert reply["id"] == "q" and reply["code"] == "unknown-type"


# -- the shortcuts for small frames (MAX_GROWTH, bracket count) --

number_texts = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).flatmap(
        lambda x: st.sampled_from([repr(x), f"{x:e}", f"{x:.0e}", f"{x:E}", f"{x:.3g}"])
    ),
    st.tuples(st.integers(0, 9), st.integers(-30, 30)).map(lambda t: f"{t[0]}e{t[1]}"),
).filter(lambda text: _is_finite_json_number(text))


def _is_finite_json_number(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:  # "2e+308": out of range of a double, refused as bad-json
        return False
    return True


@given(st.lists(number_texts, max_size=20), st.sampled_from([",", ", ", ",\n  "]))
def test_re_encoding_never_grows_a_frame_more_than_max_growth(numbers: list[str], sep: str) -> None:
    # Numbers are the only tokens that can grow (1e15 -> 1000000000000000.0); everything else
    # keeps or loses bytes. So a frame MAX_GROWTH times under a limit cannot break it.
    text = f"[{sep.join(numbers)}]".encode()
    value = orjson.loads(text)
    assert compact_size(value) <= MAX_GROWTH * len(text)


def test_a_small_frame_of_numbers_that_grow_is_still_measured_when_near_the_limit() -> None:
    # 800 bytes of "1e15," grow to 3,600 bytes: under 5 x 800 = 4,000, so the check is skipped
    # safely; 1,000 bytes (4,500 re-encoded) are measured and refused.
    assert parse(b'{"type":"set-user-data","data":[' + b"1e15," * 159 + b"1]}", LIMITS)
    error = parse_error(b'{"type":"set-user-data","data":[' + b"1e15," * 230 + b"1]}", LIMITS)
    assert error.code == "too-large"


def test_brackets_inside_strings_only_make_the_depth_walk_happen() -> None:
    # 40 brackets in a string: over the limit, so the walk runs and finds depth 1.
    assert parse(frame(type="ping", pad="[" * 40), LIMITS) == Ping(None)
    assert parse_error(nested_frame(33), LIMITS).code == "bad-request"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"type":"ping","id":7}', 7),
        ('{"type":"send-app-message","id":"m1","data":1}', "m1"),
        (b'{"type":"ping"}', None),  # no id
        (b'{"id":true}', None),  # not a valid id
        (b'{"id":"' + b"x" * 65 + b'"}', None),  # longer than 64 characters
        (b"[1,2]", None),  # not an object
        (b"{not json", None),
        (b"[" * 100_000 + b"]" * 100_000, None),  # nested past orjson's limit
    ],
)
def test_request_id_of_a_refused_frame_is_its_valid_id_or_none(
    raw: bytes | str, expected: str | int | None
) -> None:
    assert request_id_of(raw) == expected
