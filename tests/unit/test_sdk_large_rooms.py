"""The SDK's call state in a large room (docs/sdk.md): counts, batched membership events, hidden
participants and the retry delay of a node shedding load, driven with server frames, no socket.

Frames are built with the wire's encoders; `participant-events` has none (the node splices the
single frames' bytes into it), so it is built the same way here, per the spec."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from roomstate.crdt import HybridLogicalClock, Json, RoomState
from roomstate.room import Room, RoomConfig
from roomstate.sdk.errors import Unavailable
from roomstate.sdk.state import EVENTS, CallState, Outgoing, daily_participant
from roomstate.wire.protocol import encode, encode_state

ME, BOB, CAROL, HIDDEN = "s-me", "s-bob", "s-carol", "s-hidden"
HIDDEN_PERMISSIONS: dict[str, Json] = {"hasPresence": False}


def person(sid: str, user_data: Json = None, hidden: bool = False) -> dict[str, Json]:
    found: dict[str, Json] = {"session_id": sid, "user_name": sid, "userData": user_data}
    if hidden:
        found["permissions"] = HIDDEN_PERMISSIONS
    return found


def frame(data: bytes) -> dict[str, Any]:
    return dict(orjson.loads(data))


def single(kind: str, participant: dict[str, Json]) -> bytes:
    return encode_state(kind, participant=participant)


def batch(*singles: bytes) -> dict[str, Any]:
    """A `participant-events` frame holding these single frames, as the node splices them."""
    return frame(b'{"type":"participant-events","events":[' + b",".join(singles) + b"]}")


def counts_frame(present: int, hidden: int) -> dict[str, Any]:
    counts = {"hidden": hidden, "present": present}
    return frame(encode_state("participant-counts-updated", participantCounts=counts))


def join(
    state: CallState,
    participants: dict[str, dict[str, Json]],
    counts: dict[str, Json] | None = None,
) -> Outgoing:
    request = state.join(token="t")
    state.encode(request)
    fields: dict[str, Json] = {"participants": participants, "meetingSessionState": {"data": {}}}
    if counts is not None:
        fields["participantCounts"] = counts
    state.receive_frame(frame(encode_state("joined", id=request.id, sessionId=ME, **fields)))
    return request


def in_room(*others: str, me_hidden: bool = False) -> CallState:
    state = CallState()
    everyone = {ME: person(ME, hidden=me_hidden), **{sid: person(sid) for sid in others}}
    join(state, everyone, {"hidden": int(me_hidden) + 7, "present": len(others) + 1})
    state.events_received()
    return state


# -- counts --


def test_counts_come_from_joined_then_from_each_update_which_is_an_event() -> None:
    state = CallState()
    assert state.participant_counts() == {"hidden": 0, "present": 0}
    join(state, {ME: person(ME), BOB: person(BOB)}, {"hidden": 40, "present": 2})
    assert state.participant_counts() == {"hidden": 40, "present": 2}
    state.events_received()
    state.receive_frame(counts_frame(present=3, hidden=41))
    assert state.participant_counts() == {"hidden": 41, "present": 3}
    assert state.events_received() == [
        ("participant-counts-updated", {"participantCounts": {"hidden": 41, "present": 3}})
    ]
    assert "participant-counts-updated" in EVENTS
    state.forget_room()  # left: the counts were the room's
    assert state.participant_counts() == {"hidden": 0, "present": 0}


def test_the_counts_given_out_are_copies() -> None:
    state = in_room(BOB)
    state.participant_counts()["present"] = 99
    state.receive_frame(counts_frame(present=5, hidden=0))
    event = state.events_received()[0][1]
    event["participantCounts"]["present"] = 99
    assert state.participant_counts() == {"hidden": 0, "present": 5}


def test_a_joined_without_counts_counts_the_participants_listed() -> None:
    state = CallState()
    join(state, {ME: person(ME, hidden=True), BOB: person(BOB), CAROL: person(CAROL)})
    assert state.participant_counts() == {"hidden": 1, "present": 2}


# -- batched membership events --


def test_a_batch_is_unpacked_into_the_single_events_in_order() -> None:
    frames = [
        single("participant-joined", person(CAROL)),
        single("participant-updated", person(BOB, {"hand": "up"})),
        single("participant-left", person(BOB)),
    ]
    batched, one_by_one = in_room(BOB), in_room(BOB)
    batched.receive_frame(batch(*frames))
    for data in frames:
        one_by_one.receive_frame(frame(data))
    events = batched.events_received()
    assert [name for name, _ in events] == [
        "participant-joined",
        "participant-updated",
        "participant-left",
    ]
    assert events == one_by_one.events_received()
    assert events[1][1] == {"participant": daily_participant(person(BOB, {"hand": "up"}), False)}
    assert set(batched.participants()) == {"local", CAROL} == set(one_by_one.participants())


def test_a_batch_skips_the_entries_about_this_client() -> None:
    state = in_room(BOB)
    sent = state.set_user_data({"mine": 1})
    state.encode(sent)
    state.receive_frame(
        batch(
            single("participant-joined", person(ME)),
            single("participant-updated", person(ME, {"stale": 1})),
            single("participant-joined", person(CAROL)),
        )
    )
    carol = daily_participant(person(CAROL), False)
    assert state.events_received() == [("participant-joined", {"participant": carol})]
    assert state.participants()["local"]["userData"] == {"mine": 1}
    assert ME not in state.participants()


def test_a_batch_entry_of_an_unknown_type_is_skipped() -> None:
    state = in_room(BOB)
    state.receive_frame(
        batch(encode("app-message", data=1, fromId=BOB), single("participant-left", person(BOB)))
    )
    assert [name for name, _ in state.events_received()] == ["participant-left"]


# -- hidden participants --


def test_a_hidden_local_participant_sees_itself_and_works_like_any_other() -> None:
    state = in_room(BOB, me_hidden=True)
    local = state.participants()["local"]
    assert local["permissions"]["hasPresence"] is False and local["local"] is True
    assert state.participant_counts() == {"hidden": 8, "present": 2}
    write = state.set_user_data({"hand": "up"})
    state.encode(write)
    assert state.participants()["local"]["userData"] == {"hand": "up"}
    state.receive_frame(frame(encode("ack", id=write.id)))
    state.receive_frame(frame(encode("app-message", data="hi", fromId=BOB, seq="3")))
    assert state.events_received() == [("app-message", {"data": "hi", "fromId": BOB})]
    assert state.participants()["local"]["userData"] == {"hand": "up"}


def test_an_update_about_a_hidden_participant_is_an_event_not_a_participant() -> None:
    # what an owner gets: hands raised among the hidden audience
    state = in_room(BOB)
    hidden = person(HIDDEN, {"hand": "up"}, hidden=True)
    state.receive_frame(frame(single("participant-updated", hidden)))
    state.receive_frame(batch(single("participant-updated", hidden)))
    shown = daily_participant(hidden, False)
    assert state.events_received() == [("participant-updated", {"participant": shown})] * 2
    assert set(state.participants()) == {"local", BOB}


def test_a_joined_listing_a_hidden_participant_keeps_it_out_of_participants() -> None:
    state = CallState()
    join(state, {ME: person(ME), BOB: person(BOB), HIDDEN: person(HIDDEN, hidden=True)})
    assert set(state.participants()) == {"local", BOB}


# -- a node shedding load --


def refused(request: Outgoing, **fields: Json) -> dict[str, Any]:
    return frame(encode("error", id=request.id, code="unavailable", message="busy", **fields))


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [(1500, 1.5), (0, 0.0), (250.5, 0.2505), (None, None), (-1, None), ("1", None), (True, None)],
)
def test_unavailable_gives_the_delay_asked_for_in_seconds(retry_after: Json, seconds: Any) -> None:
    state = CallState()
    request = state.join()
    state.encode(request)
    fields = {} if retry_after is None else {"retryAfter": retry_after}
    reply = state.receive_frame(refused(request, **fields))
    assert reply is not None and isinstance(reply.error, Unavailable)
    assert reply.error.retry_after == seconds
    assert reply.error.message == "busy"
    state.join_failed()
    assert state.events_received() == []


def test_an_unavailable_answering_no_request_is_a_nonfatal_error_with_its_delay() -> None:
    state = in_room(BOB)
    state.receive_frame(frame(encode("error", code="unavailable", message="busy", retryAfter=2000)))
    assert state.events_received() == [
        (
            "nonfatal-error",
            {"code": "unavailable", "retryAfter": 2000, "type": "node-error", "errorMsg": "busy"},
        )
    ]


def test_a_paged_roster_is_the_joins_reply_once_its_last_page_is_in() -> None:
    room = Room(
        "r", RoomState(), HybridLogicalClock("n1"), "n1/i1", RoomConfig(roster_page_bytes=400)
    )
    where = {"node": "n1", "incarnation": "i1"}
    for n in range(12):
        room.join(f"p{n:02}", {"user_id": f"u{n}", "user_name": f"p{n}"}, where, {"n": n}, n)
    room.join(ME, {"user_id": "me", "user_name": "me"}, where, None, 20)
    state = CallState()
    request = state.join(token="t")
    state.encode(request)
    frames = room.joined_frames(request.id, ME)
    assert len(frames) > 2
    replies = [state.receive_frame(frame(f)) for f in frames]
    assert replies[:-1] == [None] * (len(frames) - 1), "no reply before the last page"
    last = replies[-1]
    assert last is not None and last.id == request.id and last.error is None
    assert set(state.participants()) == {"local", *(f"p{n:02}" for n in range(12))}
    assert [name for name, _ in state.events_received()][:1] == ["joined-meeting"]
