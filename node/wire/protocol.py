"""Wire protocol version 1: client frames in, server frames out. Sans-I/O.

`parse` turns one text frame into a typed request (frozen dataclasses) or raises `RequestError`
naming the rule it broke. The ``encode_*`` functions build server frames as bytes, ready to be sent
as WebSocket text frames; a frame for many recipients is encoded once and the same bytes are sent
to each. docs/protocol.md documents every frame with an example.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson

from roomstate.crdt import Json
from roomstate.errors import RequestError

__all__ = [
    "Join",
    "Leave",
    "Limits",
    "Ping",
    "Request",
    "SendAppMessage",
    "SetMeetingSessionData",
    "SetUserData",
    "UpdateParticipant",
    "compact_size",
    "encode",
    "encode_error",
    "encode_state",
    "frame_type",
    "parse",
    "parse_session_data_write",
    "recipients",
    "request_id_of",
    "too_deep",
]

MERGE_STRATEGIES: Final = ("replace", "shallow-merge")
MAX_ID_LENGTH: Final = 64
MAX_NAME_LENGTH: Final = 256
ROOM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
# An app message names at most this many recipients, each a session id of at most
# MAX_ID_LENGTH characters: the list is stored with the message, so it is bounded like its data.
MAX_RECIPIENTS: Final = 256
# A log position as the node gives it in `seq`: "N" (in-memory bus) or "MS-N" (a Redis stream id).
POSITION = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")

RequestId = str | int | None


@dataclass(frozen=True)
class Limits:
    """The sizes a request is checked against (bytes of compact JSON, nesting levels)."""

    app_message_bytes: int = 4096
    user_data_bytes: int = 4096
    session_data_bytes: int = 102_400
    max_depth: int = 32


# The largest roster one frame carries: a `joined` over it carries a first page and
# ``participants-page`` frames follow. 1 MiB is the smallest default receive limit of the common
# WebSocket clients (Python's websockets; aiohttp and browsers take more), about 4,000
# participants with small userData.
ROSTER_PAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class Join:
    id: RequestId
    token: str | None
    user_name: str | None
    user_data: Json
    resume: str | None  # the resumeToken of an earlier session, to take it up again
    resume_after: str | None  # the `seq` of the last app message that session received


@dataclass(frozen=True)
class SendAppMessage:
    id: RequestId
    data: Json
    to: str | tuple[str, ...]  # "*" or the recipients' session ids


@dataclass(frozen=True)
class SetUserData:
    id: RequestId
    data: Json


@dataclass(frozen=True)
class SetMeetingSessionData:
    id: RequestId
    data: dict[str, Json]
    merge_strategy: str  # "replace" or "shallow-merge"
    keys_to_delete: tuple[str, ...]


@dataclass(frozen=True)
class UpdateParticipant:
    id: RequestId
    session_id: str  # the participant to update
    eject: bool  # always True: ejecting is the one update the protocol knows


@dataclass(frozen=True)
class Leave:
    id: RequestId


@dataclass(frozen=True)
class Ping:
    id: RequestId


Request = (
    Join | SendAppMessage | SetUserData | SetMeetingSessionData | UpdateParticipant | Leave | Ping
)


def compact_size(value: Json) -> int:
    """Bytes of `value` as compact JSON: the measure of every size limit."""
    return len(orjson.dumps(value))


def depth(value: Json) -> int:
    """Nesting depth of a JSON value: 0 for a scalar, 1 for a flat array or object."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
    return deepest


# The compact JSON of any part of a frame is at most this many times the frame's own size: only
# a number can grow when re-encoded (`1e15` is 1000000000000000.0, 4.5 times longer). A frame this
# far under a size limit cannot break it, so its parts are not re-encoded to be measured.
MAX_GROWTH = 5


def too_deep(exc: orjson.JSONDecodeError) -> bool:
    """Whether orjson refused a document for its nesting (over its own limit, 1024)."""
    return "depth" in str(exc) or "recursion" in str(exc)


def parse(frame: bytes | str, limits: Limits) -> Request:
    """Parse and validate one client frame."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        if too_deep(exc):
            raise RequestError(
                "bad-request", f"JSON nesting is deeper than {limits.max_depth} levels"
            ) from None
        raise RequestError("bad-json", f"the frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RequestError("bad-json", "a frame must be a JSON object")
    request_id = message.get("id")
    # Nesting needs a bracket per level, so a frame with few brackets needs no depth walk.
    brackets = frame.count(b"[") + frame.count(b"{") if isinstance(frame, bytes) else None
    shallow = brackets is not None and brackets <= limits.max_depth
    frame_bytes = len(frame) if isinstance(frame, bytes) else len(frame.encode())
    try:
        return _parse_object(message, limits, frame_bytes, shallow)
    except RequestError as exc:
        exc.request_id = request_id if _is_id(request_id) else None
        raise


def request_id_of(frame: bytes | str) -> RequestId:
    """The `id` of a frame that is not otherwise handled (a request refused by the rate limit),
    for its error reply; None when the frame has no valid one or is not a JSON object."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if _is_id(request_id) else None


def _parse_object(
    message: dict[str, Json], limits: Limits, frame_bytes: int, shallow: bool
) -> Request:
    request_id = message.get("id")
    if request_id is not None and not _is_id(request_id):
        raise RequestError(
            "bad-request", f"'id' must be a string of 1-{MAX_ID_LENGTH} characters or an integer"
        )
    if not shallow and depth(message) > limits.max_depth:
        raise RequestError("bad-request", f"JSON nesting is deeper than {limits.max_depth} levels")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise RequestError("bad-request", "a frame needs a string 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        known = ", ".join(sorted(_PARSERS))
        raise RequestError("unknown-type", f"unknown type {kind[:40]!r}; the types are {known}")
    return parser(message, request_id, limits, frame_bytes)


def _is_id(value: Json) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH)


def _optional_str(message: dict[str, Json], field: str, max_length: int) -> str | None:
    value = message.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise RequestError(
            "bad-request", f"{field!r} must be a string of at most {max_length} characters"
        )
    return value


def _check_size(what: str, value: Json, limit: int, frame_bytes: int | None) -> None:
    if frame_bytes is not None and frame_bytes * MAX_GROWTH <= limit:
        return
    size = compact_size(value)
    if size > limit:
        raise RequestError("too-large", f"{what} is {size} bytes; the limit is {limit}")


def _parse_join(
    message: dict[str, Json], request_id: RequestId, limits: Limits, frame_bytes: int
) -> Join:
    user_data = message.get("userData")
    _check_size("userData", user_data, limits.user_data_bytes, frame_bytes)
    return Join(
        request_id,
        token=_optional_str(message, "token", 8192),
        user_name=_optional_str(message, "userName", MAX_NAME_LENGTH),
        user_data=user_data,
        resume=_optional_str(message, "resume", 1024),
        resume_after=_resume_after(message),
    )


def _resume_after(message: dict[str, Json]) -> str | None:
    value = message.get("resumeAfter")
    if value is not None and not (isinstance(value, str) and POSITION.fullmatch(value)):
        raise RequestError(
            "bad-request", "'resumeAfter' must be the 'seq' of an app message, as the node gave it"
        )
    return value


def _parse_send_app_message(
    message: dict[str, Json], request_id: RequestId, limits: Limits, frame_bytes: int
) -> SendAppMessage:
    if "data" not in message:
        raise RequestError("bad-request", "send-app-message needs 'data'")
    data = message["data"]
    _check_size("app message data", data, limits.app_message_bytes, frame_bytes)
    return SendAppMessage(request_id, data, recipients(message.get("to", "*"), "to"))


def recipients(value: Json, field: str) -> str | tuple[str, ...]:
    """An app message's recipients (`to` of a frame, `recipient` of a REST body): "*", a
    session id, or a list of at most MAX_RECIPIENTS of them (repeats dropped)."""
    if isinstance(value, str) and (value == "*" or _is_session_id(value)):
        return value
    if isinstance(value, list) and all(_is_session_id(sid) for sid in value):
        unique = tuple(dict.fromkeys(value))
        if len(unique) > MAX_RECIPIENTS:
            raise RequestError(
                "bad-request",
                f"{field!r} lists {len(unique)} session ids; the limit is {MAX_RECIPIENTS}"
                ' (send to "*" to reach everyone)',
            )
        return unique
    raise RequestError(
        "bad-request",
        f'{field!r} must be "*", a session id or a list of session ids'
        f" (each 1-{MAX_ID_LENGTH} characters)",
    )


def _is_session_id(value: Json) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def _parse_set_user_data(
    message: dict[str, Json], request_id: RequestId, limits: Limits, frame_bytes: int
) -> SetUserData:
    if "data" not in message:
        raise RequestError("bad-request", "set-user-data needs 'data'")
    _check_size("userData", message["data"], limits.user_data_bytes, frame_bytes)
    return SetUserData(request_id, message["data"])


def parse_session_data_write(
    body: dict[str, Json], request_id: RequestId, limits: Limits, frame_bytes: int | None = None
) -> SetMeetingSessionData:
    """Validate a session-data write (a client frame or a REST body: the same fields);
    `frame_bytes`: the size of the frame it came in, when known."""
    data = body.get("data")
    if not isinstance(data, dict):
        raise RequestError("bad-request", "meeting session 'data' must be a JSON object")
    strategy = body.get("mergeStrategy", "replace")
    if strategy not in MERGE_STRATEGIES:
        raise RequestError("bad-request", '\'mergeStrategy\' must be "replace" or "shallow-merge"')
    keys = body.get("keysToDelete")
    if keys is None:
        keys = []
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise RequestError("bad-request", "'keysToDelete' must be a list of strings")
    if keys and strategy != "shallow-merge":
        raise RequestError(
            "bad-request", "'keysToDelete' goes with mergeStrategy \"shallow-merge\""
        )
    both = sorted(set(keys) & data.keys())
    if both:
        raise RequestError("bad-request", f"keys both set and deleted: {', '.join(both[:5])}")
    _check_size("meeting session data", data, limits.session_data_bytes, frame_bytes)
    return SetMeetingSessionData(request_id, data, strategy, tuple(dict.fromkeys(keys)))


WIRE_TYPES: dict[type, str] = {
    Join: "join",
    SendAppMessage: "send-app-message",
    SetUserData: "set-user-data",
    SetMeetingSessionData: "set-meeting-session-data",
    UpdateParticipant: "update-participant",
    Leave: "leave",
    Ping: "ping",
}


def _parse_update_participant(
    message: dict[str, Json], request_id: RequestId, limits: Limits, frame_bytes: int
) -> UpdateParticipant:
    session_id = message.get("sessionId")
    if not _is_session_id(session_id):
        raise RequestError(
            "bad-request", f"update-participant needs 'sessionId' (1-{MAX_ID_LENGTH} characters)"
        )
    assert isinstance(session_id, str)
    if message.get("eject") is not True:
        raise RequestError("bad-request", "update-participant supports one update: 'eject': true")
    return UpdateParticipant(request_id, session_id, eject=True)


def _parse_leave(
    message: dict[str, Json], request_id: RequestId, limits: Limits, frame_bytes: int
) -> Leave:
    return Leave(request_id)


def _parse_ping(
    message: dict[str, Json], request_id: RequestId, limits: Limits, frame_bytes: int
) -> Ping:
    return Ping(request_id)


_PARSERS: dict[str, Callable[[dict[str, Json], RequestId, Limits, int], Request]] = {
    "join": _parse_join,
    "send-app-message": _parse_send_app_message,
    "set-user-data": _parse_set_user_data,
    "set-meeting-session-data": parse_session_data_write,
    "update-participant": _parse_update_participant,
    "leave": _parse_leave,
    "ping": _parse_ping,
}


# -- server frames --


def encode(frame_type: str, **fields: Json) -> bytes:
    """A server frame ``{"type": frame_type, **fields}`` as bytes; an `id`, `resumeToken` or
    `seq` of None is left out."""
    return orjson.dumps({"type": frame_type, **_present(fields)})


def encode_state(frame_type: str, **fields: Json) -> bytes:
    """`encode` for frames that carry replicated state (participants, session data), with
    object keys sorted below the top level: every node sends the same converged state as the
    same bytes, whatever order its replica received the writes in."""
    sorted_fields = {
        name: orjson.Fragment(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
        for name, value in _present(fields).items()
    }
    return orjson.dumps({"type": frame_type, **sorted_fields})


_OPTIONAL = ("id", "resumeToken", "seq")  # left out of a frame when None


def _present(fields: dict[str, Json]) -> dict[str, Json]:
    """`fields` without an `id`, `resumeToken` or `seq` of None: the caller's own keyword
    dict, changed in place (faster than a copy, and nobody else holds it)."""
    for name in _OPTIONAL:
        if name in fields and fields[name] is None:
            del fields[name]
    return fields


def encode_error(
    request_id: RequestId, code: str, message: str, retry_after_ms: int | None = None
) -> bytes:
    """An ``error`` frame; `retry_after_ms` (a refusal for load) adds ``retryAfter``."""
    if retry_after_ms is None:
        return encode("error", id=request_id, code=code, message=message)
    return encode("error", id=request_id, code=code, message=message, retryAfter=retry_after_ms)


def frame_type(frame: bytes) -> str:
    """The ``type`` of a frame made by `encode` or `encode_state` (always its first field),
    read without parsing it (for the metrics of every frame sent)."""
    end = frame.find(b'"', 9)
    return frame[9:end].decode() if frame.startswith(b'{"type":"') and end > 0 else "?"
