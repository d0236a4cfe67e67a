"""The SDK's call state driven with server frames, no socket (roomstate.sdk.state).

The frames are built with the wire's own encoders, as the node builds them."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from roomstate.crdt import Json
from roomstate.sdk.errors import NotJoined, RateLimited, TooLarge
from roomstate.sdk.state import EVENTS, CallState, Outgoing, Reply, daily_participant
from roomstate.wire.protocol import Join, Limits, encode, encode_error, encode_state, parse

ME, BOB, CAROL = "s-me", "s-bob", "s-carol"


def server(kind: str, **fields: Json) -> dict[str, Any]:
    """A server frame as the client reads it off the socket."""
    return dict(orjson.loads(encode(kind, **fields)))


def person(sid: str, user_data: Json = None) -> dict[str, Json]:
    return {"session_id": sid, "user_name": sid, "userData": user_data}


def seen(sid: str, user_data: Json = None, local: bool = False) -> dict[str, Json]:
    """`person` as participants() and the events give it: daily-js's shape."""
    return daily_participant(person(sid, user_data), local)


def test_participants_have_daily_js_shape() -> None:
    assert seen(BOB) == {
        "session_id": BOB,
        "user_name": BOB,
        "userData": None,
        "local": False,
        "owner": False,
        "permissions": {
            "hasPresence": True,
            "canSend": True,
            "canReceive": {"base": True},
            "canAdmin": False,
        },
    }


def joined(
    request: Outgoing,
    participants: dict[str, dict[str, Json]],
    data: dict[str, Json] | None = None,
    **fields: Json,
) -> dict[str, Any]:
    frame = encode_state(
        "joined",
        id=request.id,
        sessionId=ME,
        participants=participants,
        meetingSessionState={"data": data or {}},
        **fields,
    )
    return dict(orjson.loads(frame))


def ack(request: Outgoing) -> dict[str, Any]:
    return server("ack", id=request.id)


def refused(request: Outgoing, code: str = "rate-limited") -> dict[str, Any]:
    return dict(orjson.loads(encode_error(request.id, code, "too many requests")))


def session_update(data: dict[str, Json]) -> dict[str, Any]:
    return dict(
        orjson.loads(
            encode_state("meeting-session-state-updated", meetingSessionState={"data": data})
        )
    )


def parsed_join(frame: bytes) -> Join:
    """The join request the node reads in `frame`."""
    request = parse(frame, Limits())
    assert isinstance(request, Join)
    return request


def sent(state: CallState, request: Outgoing) -> Outgoing:
    """`request`, encoded as the transport would before sending it."""
    state.encode(request)
    return request


def in_room(
    others: tuple[str, ...] = (BOB,), data: dict[str, Json] | None = None, seq: str | None = "7"
) -> CallState:
    """A state that joined (its events taken)."""
    state = CallState()
    join = sent(state, state.join(user_name="me"))
    everyone = {sid: person(sid) for sid in (ME, *others)}
    state.receive_frame(joined(join, everyone, data, resumeToken="rt", seq=seq))
    state.events_received()
    return state


def names(state: CallState) -> list[str]:
    return [name for name, _ in state.events_received()]


# -- requests and replies --


def test_a_join_is_the_frame_the_node_parses_and_its_reply_fills_the_state() -> None:
    state = CallState()
    request = state.join(token="t", user_name="me", user_data={"c": 1})
    join = parsed_join(state.encode(request))
    assert (join.token, join.user_name, join.user_data, join.resume) == ("t", "me", {"c": 1}, None)
    reply = state.receive_frame(
        joined(
            request,
            {ME: person(ME, {"c": 1}), BOB: person(BOB)},
            {"k": 1},
            resumeToken="rt",
            seq="3",
        )
    )
    assert isinstance(reply, Reply) and reply.id == request.id and reply.error is None
    assert reply.frame["sessionId"] == ME
    assert (state.session_id, state.resume_token, state.last_seq) == (ME, "rt", "3")
    assert state.in_meeting
    assert state.participants() == {"local": seen(ME, {"c": 1}, local=True), BOB: seen(BOB)}
    assert state.meeting_session_state() == {"data": {"k": 1}}
    [(event, payload)] = state.events_received()
    assert event == "joined-meeting" and payload["participants"] == state.participants()


def test_a_frame_with_an_id_not_awaited_is_no_reply() -> None:
    state = in_room()
    assert state.receive_frame(server("ack", id=99)) is None
    assert state.receive_frame(refused(Outgoing(98, "ping", {}))) is None
    [(event, payload)] = state.events_received()
    assert event == "nonfatal-error" and payload["code"] == "rate-limited"


def test_a_request_not_encoded_is_not_awaited() -> None:
    state = in_room()
    ping = state.ping()  # never encoded: the transport could not send it
    assert state.receive_frame(server("pong", id=ping.id)) is None
    assert state.receive_frame(server("pong", id=sent(state, state.ping()).id)) is not None


def test_set_user_data_before_joining_is_refused() -> None:
    with pytest.raises(NotJoined):
        CallState().set_user_data({"a": 1})


def test_every_event_is_a_documented_one() -> None:
    state = CallState()
    join = sent(state, state.join(resume="old"))
    state.receive_frame(joined(join, {ME: person(ME), BOB: person(BOB)}, {"k": 1}, resumed=False))
    state.receive_frame(server("participant-left", participant=person(BOB)))
    state.receive_frame(server("app-message", data=1, fromId=BOB, seq="1"))
    state.connection_lost(1006, expected=False)
    seen = set(names(state))
    assert seen <= EVENTS and "left-meeting" in seen and "nonfatal-error" in seen


# -- optimistic writes --


def test_user_data_changes_at_once_and_stays_when_the_node_takes_it() -> None:
    state = in_room()
    write = sent(state, state.set_user_data({"hand": "up"}))
    assert state.participants()["local"]["userData"] == {"hand": "up"}
    assert state.receive_frame(ack(write)) == Reply(write.id, {"type": "ack", "id": write.id})
    assert state.participants()["local"]["userData"] == {"hand": "up"}
    assert state.events_received() == []  # the node never echoes our own changes


def test_user_data_refused_is_rolled_back_to_the_newest_write_still_pending() -> None:
    state = in_room()
    first = sent(state, state.set_user_data({"v": 1}))
    second = sent(state, state.set_user_data({"v": 2}))
    reply = state.receive_frame(refused(second))
    assert reply is not None and isinstance(reply.error, RateLimited)
    assert state.participants()["local"]["userData"] == {"v": 1}
    state.receive_frame(refused(first))
    assert state.participants()["local"]["userData"] is None  # as joined


def test_the_node_echoing_our_own_participant_changes_nothing() -> None:
    state = in_room()
    sent(state, state.set_user_data({"v": 1}))
    state.receive_frame(server("participant-updated", participant=person(ME, {"v": 0})))
    assert state.participants()["local"]["userData"] == {"v": 1}
    assert ME not in state.participants()


def test_session_data_rebases_pending_writes_on_the_node_state() -> None:
    state = in_room(data={"a": 1})
    merge = sent(state, state.set_meeting_session_data({"b": 2}, "shallow-merge", ["a"]))
    assert state.meeting_session_state() == {"data": {"b": 2}}
    # the node's batch from before our write arrived: the write stays on top of it
    state.receive_frame(session_update({"a": 1, "c": 3}))
    assert state.meeting_session_state() == {"data": {"b": 2, "c": 3}}
    state.receive_frame(ack(merge))
    assert state.meeting_session_state() == {"data": {"b": 2, "c": 3}}
    state.receive_frame(session_update({"z": 0}))  # someone replaced it all
    assert state.meeting_session_state() == {"data": {"z": 0}}


def test_session_data_refused_is_rolled_back() -> None:
    state = in_room(data={"a": 1})
    write = sent(state, state.set_meeting_session_data({"b": 2}))
    assert state.meeting_session_state() == {"data": {"b": 2}}
    state.receive_frame(refused(write, "too-large"))
    assert state.meeting_session_state() == {"data": {"a": 1}}


def test_a_write_never_sent_is_rolled_back_one_maybe_sent_is_kept() -> None:
    state = in_room()
    lost = state.set_meeting_session_data({"x": 1}, "shallow-merge")
    state.abandon(lost.id, sent=False)  # no socket, or the send failed
    assert state.meeting_session_state() == {"data": {}}
    timed_out = sent(state, state.set_meeting_session_data({"y": 1}, "shallow-merge"))
    state.abandon(timed_out.id, sent=True)
    assert state.meeting_session_state() == {"data": {"y": 1}}
    # its late refusal is no reply any more: the app hears of it, the write stays until the
    # node's next state says otherwise
    assert state.receive_frame(refused(timed_out)) is None
    assert names(state) == ["nonfatal-error"]
    assert state.meeting_session_state() == {"data": {"y": 1}}


def test_a_write_that_cannot_be_encoded_is_rolled_back() -> None:
    state = in_room()
    request = state.set_user_data({"tags": {1, 2}})
    with pytest.raises(TypeError):
        state.encode(request)
    assert state.participants()["local"]["userData"] is None
    state.max_frame_bytes = 100
    request = state.set_meeting_session_data({"x": "y" * 200})
    with pytest.raises(TooLarge, match="frame limit is 100"):
        state.encode(request)
    assert state.meeting_session_state() == {"data": {}}


def test_session_data_must_be_a_dict_and_keys_a_list() -> None:
    state = in_room()
    with pytest.raises(TypeError, match="a dict"):
        state.set_meeting_session_data(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a list of keys"):
        state.set_meeting_session_data({}, "shallow-merge", "ab")  # type: ignore[arg-type]


# -- participants --


def test_participant_frames_change_the_participants_and_become_events() -> None:
    state = in_room()
    state.receive_frame(server("participant-joined", participant=person(CAROL)))
    state.receive_frame(server("participant-updated", participant=person(BOB, {"v": 1})))
    state.receive_frame(server("participant-left", participant=person(CAROL)))
    assert names(state) == ["participant-joined", "participant-updated", "participant-left"]
    assert state.participants() == {"local": seen(ME, local=True), BOB: seen(BOB, {"v": 1})}


# -- positions and resume --


def test_the_resume_position_is_the_latest_app_message_not_the_last_to_arrive() -> None:
    # A node delivers its own client's message when its publish is answered, and another
    # node's message can come first: "4" then "3". Quoting "3" replayed "4" again.
    state = CallState()
    for seq in ("1795935294642-3", "1795935294642-10", "1795935294641-99"):
        state.receive_frame(server("app-message", data=1, fromId="x", seq=seq))
    assert state.last_seq == "1795935294642-10"
    [(_, payload), *_] = state.events_received()
    assert payload == {"data": 1, "fromId": "x"}  # the position is the SDK's, not the app's


def test_the_in_memory_bus_positions_order_as_numbers() -> None:
    state = CallState()
    for seq in ("9", "10", "8"):
        state.receive_frame(server("app-message", data=1, fromId="x", seq=seq))
    assert state.last_seq == "10"


def test_an_app_message_whose_seq_is_no_position_is_delivered_and_never_quoted_back() -> None:
    # The SDK parsed positions its own way: "junk" became the position a resume quoted (the
    # node refuses it), and "1-²" (a digit to str.isdigit, not to int) lost the message.
    state = CallState()
    for seq in ("junk", "1-²"):
        state.receive_frame(server("app-message", data=seq, fromId="x", seq=seq))
    assert state.last_seq is None
    assert names(state) == ["app-message", "app-message"]
    state.receive_frame(server("app-message", data=1, fromId="x", seq="5"))
    state.receive_frame(server("app-message", data=1, fromId="x", seq="1-²"))
    assert state.last_seq == "5"


def test_a_resume_quotes_the_last_position_and_tells_what_changed_meanwhile() -> None:
    state = in_room(others=(BOB,), data={"k": 1}, seq="7")
    state.receive_frame(server("app-message", data=1, fromId=BOB, seq="9"))
    state.connection_lost(1006, expected=False)
    assert names(state) == ["app-message", "error", "left-meeting"]
    resume = state.join(resume="rt")
    assert parsed_join(state.encode(resume)).resume_after == "9"
    everyone = {ME: person(ME), CAROL: person(CAROL)}
    state.receive_frame(joined(resume, everyone, {"k": 2}, seq="12", resumed=True, replayed=True))
    events = state.events_received()
    assert [name for name, _ in events] == [
        "joined-meeting",
        "participant-joined",
        "participant-left",
        "meeting-session-state-updated",
    ]
    assert events[1][1]["participant"]["session_id"] == CAROL
    assert events[2][1]["participant"]["session_id"] == BOB
    assert state.last_seq == "12"


@pytest.mark.parametrize(
    ("flags", "code"),
    [({"resumed": False}, "session-lost"), ({"resumed": True, "replayed": False}, "messages-lost")],
)
def test_a_resume_that_lost_something_says_so(flags: dict[str, Json], code: str) -> None:
    state = in_room()
    state.connection_lost(1006, expected=False)
    state.events_received()
    resume = sent(state, state.join(resume="rt"))
    state.receive_frame(joined(resume, {ME: person(ME), BOB: person(BOB)}, None, **flags))
    events = state.events_received()
    assert events[-1][0] == "nonfatal-error" and events[-1][1]["code"] == code


def test_a_fresh_join_forgets_the_room_of_before() -> None:
    state = in_room(data={"k": 1})
    state.end_meeting("closed")
    state.join()
    assert state.participants() == {"local": seen(ME, local=True)}
    assert state.meeting_session_state() == {"data": {}}


# -- the connection --


def test_a_lost_connection_ends_the_meeting_once_and_keeps_writes_maybe_applied() -> None:
    state = in_room()
    sent(state, state.set_user_data({"v": 1}))
    assert state.connection_lost(1006, expected=False)
    events = state.events_received()
    assert events == [
        (
            "error",
            {
                "errorMsg": "the connection closed (code 1006)",
                "error": {"type": "connection-error", "msg": "the connection closed (code 1006)"},
                "closeCode": 1006,
            },
        ),
        ("left-meeting", {"reason": "connection-closed", "closeCode": 1006}),
    ]
    assert not state.in_meeting
    assert state.participants()["local"]["userData"] == {"v": 1}
    state.end_meeting("closed")
    assert state.events_received() == []


def test_an_expected_close_emits_no_error() -> None:
    state = in_room()
    assert not state.connection_lost(1000, expected=True)
    assert state.events_received() == []
    state.forget_room()
    state.end_meeting("left")
    assert state.events_received() == [("left-meeting", {"reason": "left"})]
    assert state.meeting_session_state() == {"data": {}} and BOB not in state.participants()


def test_a_join_that_failed_emits_no_meeting_events() -> None:
    state = CallState()
    join = sent(state, state.join())
    state.receive_frame(joined(join, {ME: person(ME)}))  # it came, but the caller timed out
    state.join_failed()
    state.events_received()
    assert not state.connection_lost(1006, expected=False)
    state.end_meeting("left")
    assert state.events_received() == []


def test_the_call_state_loads_no_transport() -> None:
    """`roomstate.sdk` loads its asyncio client on first use only, so another transport can use
    the state (orjson's own imports are the baseline)."""
    probe = (
        "import sys, orjson; before = set(sys.modules); import roomstate.sdk.state; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    top = {name.split(".")[0] for name in loaded}
    assert not top & {"asyncio", "aiohttp", "socket", "time"}, sorted(top)
