"""Room logic (node/room.py): who receives what, throttling, batching, remote deltas. Sans-I/O."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomstate.crdt import HybridLogicalClock, RoomState
from roomstate.errors import RequestError
from roomstate.room import Output, Room, RoomConfig
from roomstate.wire.events import AppMessage, BusEvent, decode_event, encode_event
from roomstate.wire.protocol import Limits, SetMeetingSessionData
from tests.property.strategies import apply_room_op, room_ops, rooms

# -- helpers --


def send_app_message(room: Room, from_id: str, data: Any, to: Any, now_ms: int) -> Output:
    """What the node does for a local app message: publish, then deliver with its position."""
    event = room.app_message(from_id, data, to, now_ms)
    assert event.message is not None
    out = room.deliver_app_message(event.message, "7-0")
    out.publish.append(event)
    return out


def make_room(node: str = "n1", config: RoomConfig | None = None) -> Room:
    # Counts at once unless a test says otherwise: most tests are about other frames.
    config = config or RoomConfig(counts_interval_ms=0)
    return Room("lobby", RoomState(), HybridLogicalClock(node), f"{node}/i1", config)


def info(sid: str, owner: bool = False) -> dict[str, Any]:
    return {"user_id": f"user-{sid}", "user_name": f"name-{sid}", "owner": owner}


def join(room: Room, sid: str, now_ms: int, user_data: Any = None, owner: bool = False) -> Output:
    location = {"node": room.clock.node, "incarnation": "i1"}
    return room.join(sid, info(sid, owner), location, user_data, now_ms)


def replace(data: dict[str, Any]) -> SetMeetingSessionData:
    return SetMeetingSessionData(None, data, "replace", ())


def shallow_merge(
    data: dict[str, Any], keys_to_delete: tuple[str, ...] = ()
) -> SetMeetingSessionData:
    return SetMeetingSessionData(None, data, "shallow-merge", keys_to_delete)


def sends(out: Output, kind: str | None = None) -> list[tuple[list[str], dict[str, Any]]]:
    """The frames of `out`, decoded, with their recipients (only those of type `kind`)."""
    decoded = [(recipients, orjson.loads(frame)) for recipients, frame in out.sends]
    return [(r, f) for r, f in decoded if kind is None or f["type"] == kind]


def expected_participant(sid: str, user_data: Any, joined_at: int, owner: bool = False) -> dict:
    return {
        "session_id": sid,
        "user_id": f"user-{sid}",
        "user_name": f"name-{sid}",
        "userData": user_data,
        "joined_at": joined_at,
        "owner": owner,
    }


def deliver(events: list[BusEvent], room: Room, now_ms: int, codec: bool = True) -> Output:
    """Feed bus events to `room` (through the byte codec unless told not to); merge the outputs."""
    total = Output()
    for event in events:
        if codec:
            event = decode_event(encode_event(event))
        out = room.receive(event, now_ms, "9-0")
        total.sends += out.sends
        total.publish += out.publish
    return total


def room_with(*sids: str, now_ms: int = 0, config: RoomConfig | None = None) -> Room:
    room = make_room(config=config)
    for sid in sids:
        join(room, sid, now_ms)
        room.poll(now_ms)  # each join in a loop turn of its own
    return room


# -- join --


def test_join_publishes_one_event_carrying_the_join_delta() -> None:
    room = make_room()
    out = join(room, "s1", 10, user_data={"hand": False})
    assert len(out.publish) == 1
    event = out.publish[0]
    assert (event.origin, event.sent_ms, event.message, event.reason) == ("n1/i1", 10, None, None)
    assert event.delta is not None
    joined = event.delta.participants["s1"]
    assert joined.present and joined.user_data is not None
    assert joined.user_data.value == {"hand": False}


def test_join_sends_participant_joined_with_the_participant_shape_to_other_locals() -> None:
    room = room_with("s1", "s2", now_ms=5)
    out = join(room, "s3", 20, user_data={"hand": True}, owner=True)
    assert sends(out) == [
        (
            ["s1", "s2"],
            {
                "type": "participant-joined",
                "participant": expected_participant("s3", {"hand": True}, 20, owner=True),
            },
        )
    ]


def test_the_joiner_does_not_get_its_own_participant_joined() -> None:
    room = make_room()
    assert join(room, "s1", 0).sends == []
    out = join(room, "s2", 1)
    assert all("s2" not in recipients for recipients, _ in out.sends)


def test_joined_frame_has_session_id_every_participant_and_session_state() -> None:
    room = make_room()
    join(room, "s1", 10, user_data={"a": 1})
    room.set_session_data(replace({"topic": "x"}), 11)
    join(room, "s2", 12, user_data=[2])
    frame = orjson.loads(room.joined_frames(7, "s2")[0])
    assert frame == {
        "type": "joined",
        "id": 7,
        "sessionId": "s2",
        "participants": {
            "s1": expected_participant("s1", {"a": 1}, 10),
            "s2": expected_participant("s2", [2], 12),
        },
        "participantCounts": {"hidden": 0, "present": 2},
        "meetingSessionState": {"data": {"topic": "x"}},
    }


def test_joined_frame_without_a_request_id_has_no_id_and_empty_session_data() -> None:
    room = room_with("s1")
    frame = orjson.loads(room.joined_frames(None, "s1")[0])
    assert "id" not in frame
    assert frame["meetingSessionState"] == {"data": {}}
    assert list(frame["participants"]) == ["s1"]


# -- app messages --


def test_app_message_to_star_reaches_every_other_local_never_the_sender() -> None:
    room = room_with("s1", "s2", "s3")
    out = send_app_message(room, "s2", {"x": 1}, "*", 100)
    assert out.sends == [
        (["s1", "s3"], b'{"type":"app-message","data":{"x":1},"fromId":"s2","seq":"7-0"}')
    ]


def test_app_message_to_one_session_id_reaches_only_it() -> None:
    room = room_with("s1", "s2", "s3")
    assert sends(send_app_message(room, "s1", "hi", "s3", 100)) == [
        (["s3"], {"type": "app-message", "data": "hi", "fromId": "s1", "seq": "7-0"})
    ]


def test_app_message_to_a_list_reaches_the_listed_locals() -> None:
    room = room_with("s1", "s2", "s3", "s4")
    out = send_app_message(room, "s1", 5, ("s2", "s4"), 100)
    assert [recipients for recipients, _ in out.sends] == [["s2", "s4"]]


def test_app_message_to_unknown_ids_is_not_delivered_to_them() -> None:
    room = room_with("s1", "s2")
    assert send_app_message(room, "s1", 5, "ghost", 100).sends == []
    out = send_app_message(room, "s1", 5, ("ghost", "s2", "other"), 100)
    assert [recipients for recipients, _ in out.sends] == [["s2"]]


def test_app_message_to_a_list_with_duplicates_delivers_once() -> None:
    room = room_with("s1", "s2", "s3")
    out = send_app_message(room, "s1", 5, ("s3", "s2", "s3", "s2"), 100)
    assert [recipients for recipients, _ in out.sends] == [["s3", "s2"]]


@pytest.mark.parametrize("to", ["*", "s2", ("s2", "ghost"), "ghost"])
def test_app_message_publishes_exactly_one_event_with_the_message(to: Any) -> None:
    room = room_with("s1", "s2")
    out = send_app_message(room, "s1", {"x": [1]}, to, 100)
    assert out.publish == [BusEvent("n1/i1", 100, message=AppMessage({"x": [1]}, "s1", to))]


@pytest.mark.parametrize(
    ("to", "recipients"),
    [("*", ["s1", "s2"]), ("s2", ["s2"]), (("s1", "ghost", "s1"), ["s1"])],
)
def test_a_remote_app_message_is_delivered_to_its_local_recipients(
    to: Any, recipients: list[str]
) -> None:
    room = room_with("s1", "s2")
    event = BusEvent("n2/i1", 50, message=AppMessage({"y": 2}, "r1", to))
    out = deliver([event], room, 60)
    assert sends(out) == [
        (recipients, {"type": "app-message", "data": {"y": 2}, "fromId": "r1", "seq": "9-0"})
    ]
    assert out.publish == []


def test_a_rest_app_message_comes_from_api() -> None:
    room = room_with("s1")
    out = room.receive(BusEvent("n2/i1", 50, message=AppMessage("hello", "API", "*")), 60, "9-0")
    assert sends(out) == [
        (["s1"], {"type": "app-message", "data": "hello", "fromId": "API", "seq": "9-0"})
    ]


def test_receive_ignores_events_of_this_rooms_own_origin() -> None:
    room = room_with("s1", "s2")
    before = room.state.copy()
    message = BusEvent("n1/i1", 50, message=AppMessage("echo", "s1", "*"))
    assert room.receive(message, 60, "9-0") == Output()
    other = make_room("n2")
    delta = join(other, "r1", 50).publish[0].delta
    assert room.receive(BusEvent("n1/i1", 50, delta=delta), 60, "9-0") == Output()
    assert room.state == before


# -- userData throttling --


def burst_of_user_data(room: Room, sid: str, start: int, count: int = 50) -> list[Output]:
    """`count` writes by `sid`, one per ms from `start`, then a poll at the next deadline."""
    outs = [room.set_user_data(sid, {"n": n}, start + n) for n in range(count)]
    outs.append(room.poll(start + count))  # the end of the loop turn
    deadline = room.next_deadline()
    assert deadline is not None and deadline <= start + 100
    outs.append(room.poll(deadline))
    return outs


def updates(outs: list[Output]) -> list[tuple[list[str], dict[str, Any]]]:
    return [sent for out in outs for sent in sends(out, "participant-updated")]


def test_fifty_user_data_writes_in_100_ms_make_at_most_two_updates_ending_on_the_last() -> None:
    room = room_with("s1", "s2", "s3")
    found = updates(burst_of_user_data(room, "s1", 1000))
    assert 1 <= len(found) <= 2
    assert found[-1][1]["participant"]["userData"] == {"n": 49}
    assert found[-1][1]["participant"]["session_id"] == "s1"
    assert room.next_deadline() is None


def test_the_first_user_data_write_goes_out_at_once() -> None:
    room = room_with("s1", "s2")
    assert sends(room.set_user_data("s1", 1, 1000), "participant-updated") == [
        (["s2"], {"type": "participant-updated", "participant": expected_participant("s1", 1, 0)})
    ]


def test_the_writer_never_receives_its_own_participant_updated() -> None:
    room = room_with("s1", "s2", "s3")
    found = updates(burst_of_user_data(room, "s1", 1000))
    assert found, "the others were told"
    for recipients, _ in found:
        assert recipients == ["s2", "s3"]


def test_every_user_data_write_is_published_and_applied_at_once() -> None:
    room = room_with("s1", "s2")
    published = []
    for n in range(50):
        out = room.set_user_data("s1", n, 1000 + n)
        assert room.participant("s1")["userData"] == n, "the writer's own state changes at once"
        published += out.publish
    assert len(published) == 50
    values = []
    for event in published:
        assert event.delta is not None
        register = event.delta.participants["s1"].user_data
        assert register is not None
        values.append(register.value)
    assert values == list(range(50))


def test_a_user_data_write_after_the_interval_goes_out_at_once() -> None:
    room = room_with("s1", "s2")
    room.set_user_data("s1", 1, 1000)
    room.poll(1000)
    out = room.set_user_data("s1", 2, 1100)
    assert [f["participant"]["userData"] for _, f in sends(out, "participant-updated")] == [2]


def test_a_user_data_write_an_interval_after_a_coalesced_update_goes_out_at_once() -> None:
    room = room_with("s1", "s2")
    room.set_user_data("s1", 1, 1000)
    room.set_user_data("s1", 2, 1010)
    assert len(sends(room.poll(1100), "participant-updated")) == 1
    out = room.set_user_data("s1", "late", 1200)
    assert [f["participant"]["userData"] for _, f in sends(out, "participant-updated")] == ["late"]


def test_a_write_within_the_interval_waits_for_the_deadline() -> None:
    room = room_with("s1", "s2")
    room.set_user_data("s1", 1, 1000)
    assert room.set_user_data("s1", 2, 1040).sends == []
    room.poll(1040)
    assert room.next_deadline() == 1100
    assert room.poll(1099).sends == []
    found = sends(room.poll(1100), "participant-updated")
    assert [f["participant"]["userData"] for _, f in found] == [2]
    assert room.next_deadline() is None


def test_user_data_throttling_is_per_participant() -> None:
    room = room_with("s1", "s2", "s3")
    first = room.set_user_data("s1", "a", 1000)
    room.poll(1000)
    second = room.set_user_data("s2", "b", 1001)
    assert len(sends(first, "participant-updated")) == 1
    assert len(sends(second, "participant-updated")) == 1


def test_user_data_updates_are_at_least_an_interval_apart_under_steady_writes() -> None:
    room = room_with("s1", "s2")
    sent_at = []
    for now in range(1000, 3000, 7):
        deadline = room.next_deadline()
        due = deadline is not None and deadline <= now
        if due and sends(room.poll(deadline), "participant-updated"):
            sent_at.append(deadline)
        if sends(room.set_user_data("s1", now, now), "participant-updated"):
            sent_at.append(now)
    assert len(sent_at) >= 15
    assert all(b - a >= 100 for a, b in itertools.pairwise(sent_at))


# -- session data --


def test_replace_sets_the_whole_session_data() -> None:
    room = room_with("s1")
    room.set_session_data(replace({"a": 1, "b": 2}), 100)
    assert room.session_data() == {"a": 1, "b": 2}
    room.set_session_data(replace({"c": 3}), 200)
    assert room.session_data() == {"c": 3}


def test_shallow_merge_sets_given_keys_and_deletes_keys_to_delete() -> None:
    room = room_with("s1")
    room.set_session_data(replace({"a": 1, "b": 2}), 100)
    room.set_session_data(shallow_merge({"b": 20, "c": 3}, ("a", "missing")), 200)
    assert room.session_data() == {"b": 20, "c": 3}


def test_deleting_keys_the_room_does_not_have_stores_nothing_for_them() -> None:
    """A tombstone only for a key that is there: a client naming made-up keys in
    `keysToDelete` must not grow the room's state (it is stored, and every node holds it)."""
    room = room_with("s1")
    room.set_session_data(replace({"a": 1}), 100)
    made_up = tuple(f"k{n}" for n in range(1000))
    out = room.set_session_data(shallow_merge({}, ("a", *made_up)), 200)
    assert room.session_data() == {}
    assert set(room.state.session_data.entries) == {"a"}  # a's tombstone, nothing else
    (event,) = out.publish
    assert event.delta is not None and set(event.delta.session_data.entries) == {"a"}
    tombstone = room.state.session_data.entries["a"]
    room.set_session_data(shallow_merge({}, ("a",)), 300)  # deleted already: nothing new
    assert room.state.session_data.entries == {"a": tombstone}


def test_deleted_keys_count_toward_the_size_limit_until_a_replace() -> None:
    """Each deleted key stays as a tombstone (until the next `replace`), in every replica and in
    Redis: writing then deleting ever new keys grew the state without bound while its value
    stayed empty (40 rounds of 90 KB keys: 3.6 MB). They count as keys of null."""
    room = room_with("s1")
    big = "x" * 30_000
    for n in range(3):  # 3 x 30 KB of deleted key names: within 100 KB
        room.set_session_data(shallow_merge({f"{big}{n}": 1}), 100 + 2 * n)
        room.set_session_data(shallow_merge({}, (f"{big}{n}",)), 101 + 2 * n)
    assert room.session_data() == {}
    with pytest.raises(RequestError, match="3 deleted keys, kept until the next replace") as e:
        room.set_session_data(shallow_merge({f"{big}3": 1}), 200)
    assert e.value.code == "too-large"
    assert len(room.state.session_data.entries) == 3
    room.set_session_data(replace({"fresh": 1}), 300)  # a replace drops the tombstones
    assert set(room.state.session_data.entries) == {"fresh"}
    room.set_session_data(shallow_merge({f"{big}3": 1}), 400)


def test_the_first_session_write_goes_to_every_local_including_the_writer() -> None:
    room = room_with("s1", "s2")
    out = room.set_session_data(replace({"a": 1}), 100)
    assert sends(out) == [
        (
            ["s1", "s2"],
            {"type": "meeting-session-state-updated", "meetingSessionState": {"data": {"a": 1}}},
        )
    ]
    assert len(out.publish) == 1 and out.publish[0].delta is not None


def test_session_events_are_batched_to_one_per_second_carrying_the_converged_data() -> None:
    room = room_with("s1", "s2")
    assert room.set_session_data(replace({"a": 1}), 1000).sends
    quiet = [
        room.set_session_data(shallow_merge({"b": 2}), 1100),
        room.set_session_data(shallow_merge({"c": 3}, ("a",)), 1500),
        room.set_session_data(shallow_merge({"b": 4}), 1999),
    ]
    assert all(out.sends == [] for out in quiet)
    assert all(len(out.publish) == 1 for out in quiet), "every write is still published"
    assert room.next_deadline() == 2000
    assert room.poll(1999).sends == []
    assert sends(room.poll(2000)) == [
        (
            ["s1", "s2"],
            {
                "type": "meeting-session-state-updated",
                "meetingSessionState": {"data": {"b": 4, "c": 3}},
            },
        )
    ]
    assert room.next_deadline() is None
    assert len(room.set_session_data(shallow_merge({"d": 5}), 3000).sends) == 1


def test_session_events_are_at_least_a_second_apart_under_steady_writes() -> None:
    room = room_with("s1", "s2")
    sent_at = []
    for now in range(0, 6000, 45):
        deadline = room.next_deadline()
        if deadline is not None and deadline <= now and room.poll(deadline).sends:
            sent_at.append(deadline)
        if room.set_session_data(shallow_merge({"t": now}), now).sends:
            sent_at.append(now)
    assert len(sent_at) >= 5
    assert all(b - a >= 1000 for a, b in itertools.pairwise(sent_at))


TINY = RoomConfig(limits=Limits(session_data_bytes=100), counts_interval_ms=0)


@pytest.mark.parametrize(
    "write",
    [
        shallow_merge({"more": "y" * 60}),
        replace({"big": "z" * 100}),
    ],
)
def test_a_session_write_whose_result_is_too_large_is_refused_and_changes_nothing(
    write: SetMeetingSessionData,
) -> None:
    room = room_with("s1", "s2", config=TINY)
    room.set_session_data(replace({"k": "x" * 50}), 100)
    room.poll(100)
    before, state_before = room.session_data(), room.state.copy()
    with pytest.raises(RequestError) as caught:
        room.set_session_data(write, 5000)
    assert caught.value.code == "too-large"
    assert "the limit is 100" in caught.value.message
    assert room.session_data() == before
    assert room.state == state_before
    assert room.next_deadline() is None, "no event was scheduled"


def test_a_session_write_that_shrinks_the_data_under_the_limit_is_accepted() -> None:
    room = room_with("s1", config=TINY)
    room.set_session_data(replace({"k": "x" * 50}), 100)
    room.set_session_data(shallow_merge({"j": "y" * 50}, ("k",)), 200)
    assert room.session_data() == {"j": "y" * 50}


# -- leave --


def test_leave_tells_the_others_with_the_reason() -> None:
    room = make_room()
    for sid, now, data in (("s1", 10, None), ("s2", 11, "u"), ("s3", 12, None)):
        join(room, sid, now, user_data=data)
        room.poll(now)
    out = room.leave("s2", "left", 20)
    assert sends(out) == [
        (
            ["s1", "s3"],
            {
                "type": "participant-left",
                "participant": expected_participant("s2", "u", 11),
                "reason": "left",
            },
        )
    ]
    assert "s2" not in room.participants() and "s2" not in room.local


def test_leave_publishes_a_removal_delta_with_its_reason() -> None:
    room = room_with("s1", "s2")
    out = room.leave("s1", "disconnected", 20)
    assert len(out.publish) == 1
    event = out.publish[0]
    assert event.reason == "disconnected" and event.origin == "n1/i1"
    assert event.delta is not None and event.delta.removed == {"s1"}


def test_leave_drops_a_pending_coalesced_user_data_update() -> None:
    room = room_with("s1", "s2")
    room.set_user_data("s1", 1, 1000)
    room.set_user_data("s1", 2, 1010)
    room.poll(1010)
    assert room.next_deadline() == 1100
    room.leave("s1", "left", 1020)
    room.poll(1020)
    assert room.next_deadline() is None
    assert sends(room.poll(1100), "participant-updated") == []


def test_leaving_twice_is_harmless() -> None:
    room = room_with("s1", "s2")
    room.leave("s1", "left", 20)
    state = room.state.copy()
    again = room.leave("s1", "left", 30)
    assert again.sends == [] and again.publish == []
    assert room.state == state
    assert list(room.local) == ["s2"]


# -- remote deltas --


@pytest.fixture
def pair() -> tuple[Room, Room]:
    """Room `a` on node n1 with locals s1, s2; room `b` on node n2, empty."""
    return room_with("s1", "s2"), make_room("n2")


def test_every_published_event_survives_the_bus_codec_unchanged() -> None:
    room = room_with("s1", "s2")
    events = [
        *room.set_user_data("s1", {"n": [1, None]}, 10).publish,
        *room.set_session_data(replace({"a": {"b": 1}}), 20).publish,
        *room.set_session_data(shallow_merge({"c": 1}, ("a",)), 30).publish,
        *send_app_message(room, "s1", "m", ("s2", "s2"), 40).publish,
        *send_app_message(room, "s1", {"k": 1}, "*", 41).publish,
        *room.leave("s2", "left", 50).publish,
    ]
    for event in events:
        assert decode_event(encode_event(event)) == event


def test_a_remote_join_is_sent_to_the_locals(pair: tuple[Room, Room]) -> None:
    a, b = pair
    out = deliver(join(b, "r1", 500, user_data={"x": 1}).publish, a, 510)
    assert sends(out) == [
        (
            ["s1", "s2"],
            {
                "type": "participant-joined",
                "participant": expected_participant("r1", {"x": 1}, 500),
            },
        )
    ]
    assert set(a.participants()) == {"s1", "s2", "r1"}
    assert "r1" not in a.local


def test_remote_user_data_is_throttled_to_the_locals(pair: tuple[Room, Room]) -> None:
    a, b = pair
    deliver(join(b, "r1", 500).publish, a, 500)
    a.poll(500)
    outs = [deliver(b.set_user_data("r1", n, 1000 + n).publish, a, 1000 + n) for n in range(50)]
    outs.append(a.poll(1050))
    deadline = a.next_deadline()
    assert deadline is not None and deadline <= 1100
    outs.append(a.poll(deadline))
    found = updates(outs)
    assert 1 <= len(found) <= 2
    assert all(recipients == ["s1", "s2"] for recipients, _ in found)
    assert found[-1][1]["participant"]["userData"] == 49
    assert a.participant("r1")["userData"] == 49


def test_a_remote_leave_is_sent_with_the_events_reason(pair: tuple[Room, Room]) -> None:
    a, b = pair
    deliver(join(b, "r1", 500, user_data="d").publish, a, 500)
    a.poll(500)
    out = deliver(b.leave("r1", "disconnected", 600).publish, a, 600)
    assert sends(out) == [
        (
            ["s1", "s2"],
            {
                "type": "participant-left",
                "participant": expected_participant("r1", "d", 500),
                "reason": "disconnected",
            },
        )
    ]
    assert "r1" not in a.participants()


def test_a_remote_leave_drops_a_pending_user_data_update(pair: tuple[Room, Room]) -> None:
    a, b = pair
    deliver(join(b, "r1", 500).publish, a, 500)
    deliver(b.set_user_data("r1", 1, 1000).publish, a, 1000)
    deliver(b.set_user_data("r1", 2, 1010).publish, a, 1010)
    a.poll(1010)
    assert a.next_deadline() == 1100
    deliver(b.leave("r1", "left", 1020).publish, a, 1020)
    a.poll(1020)
    assert a.next_deadline() is None
    assert a.poll(1100).sends == []


def test_remote_session_data_is_sent_to_every_local(pair: tuple[Room, Room]) -> None:
    a, b = pair
    out = deliver(b.set_session_data(shallow_merge({"k": "v"}), 700).publish, a, 700)
    assert sends(out) == [
        (
            ["s1", "s2"],
            {"type": "meeting-session-state-updated", "meetingSessionState": {"data": {"k": "v"}}},
        )
    ]
    assert a.session_data() == {"k": "v"}


def test_two_rooms_exchanging_their_events_end_with_equal_state() -> None:
    a, b = make_room("n1"), make_room("n2")
    a_events: list[BusEvent] = []
    b_events: list[BusEvent] = []
    a_events += join(a, "s1", 99).publish
    a_events += join(a, "s2", 99).publish
    b_events += join(b, "r1", 100, user_data=1).publish
    b_events += join(b, "r2", 101).publish
    a_events += a.set_user_data("s1", "mine", 102).publish
    b_events += b.set_user_data("r1", 2, 103).publish
    a_events += a.set_session_data(replace({"a": 1}), 104).publish
    b_events += b.set_session_data(shallow_merge({"b": 2}), 104).publish
    b_events += b.leave("r2", "left", 105).publish
    a_events += a.leave("s2", "left", 106).publish
    deliver(b_events, a, 200)
    deliver(a_events, b, 200, codec=False)
    assert a.state == b.state
    assert set(a.participants()) == set(b.participants()) == {"s1", "r1"}
    assert a.session_data() == b.session_data() == {"a": 1, "b": 2}
    assert a.participant("r1")["userData"] == 2 and b.participant("s1")["userData"] == "mine"


# -- convergence under reordering --


def concurrent_history() -> tuple[Room, list[BusEvent], Room, list[BusEvent]]:
    """Two nodes writing concurrently, each without seeing the other's events."""
    a, b = make_room("n1"), make_room("n2")
    ea: list[BusEvent] = []
    eb: list[BusEvent] = []
    ea += join(a, "s1", 100, user_data={"v": 0}).publish
    eb += join(b, "r1", 100, user_data={"v": 0}).publish
    ea += join(a, "s2", 101).publish
    ea += a.set_session_data(replace({"x": 1, "y": 1}), 110).publish
    eb += b.set_session_data(shallow_merge({"y": 2, "z": 2}), 110).publish
    eb += b.set_session_data(shallow_merge({}, ("x",)), 111).publish
    ea += a.set_user_data("s1", {"v": 1}, 112).publish
    ea += a.set_session_data(shallow_merge({"w": 1}, ("z",)), 113).publish
    eb += b.set_user_data("r1", {"v": 2}, 112).publish
    eb += join(b, "r2", 114).publish
    eb += b.leave("r1", "left", 115).publish
    ea += a.leave("s2", "disconnected", 116).publish
    ea += a.set_user_data("s1", {"v": 3}, 117).publish
    eb += b.set_session_data(replace({"only": True}), 105).publish
    return a, ea, b, eb


def test_two_rooms_receiving_each_others_events_in_different_orders_converge() -> None:
    a, ea, b, eb = concurrent_history()
    deliver(list(reversed(eb)), a, 1000)
    deliver(ea, b, 1000)
    assert a.state == b.state
    assert set(a.participants()) == {"s1", "r2"}


@pytest.mark.parametrize("seed", range(10))
def test_observers_receiving_all_events_in_shuffled_orders_converge(seed: int) -> None:
    a, ea, b, eb = concurrent_history()
    deliver(eb, a, 1000)
    deliver(ea, b, 1000)
    events = ea + eb
    random.Random(seed).shuffle(events)
    observer = make_room("n3")
    deliver(events, observer, 1000)
    assert observer.state == a.state == b.state
    assert observer.session_data() == a.session_data()


def test_redelivered_events_change_nothing_and_send_nothing() -> None:
    a, _, _, eb = concurrent_history()
    deliver(eb, a, 1000)
    state = a.state.copy()
    again = deliver(eb, a, 2000)
    assert a.state == state
    assert again.sends == [] and again.publish == []


# -- who is where (the node's upkeep) --


def test_locations_group_present_participants_by_node_incarnation() -> None:
    a = make_room("n1")
    join(a, "s1", 0)
    remote = RoomState()
    remote.join("r1", info("r1"), {"node": "n2", "incarnation": "i2"}, None, a.clock.tick(1))
    remote.join("r2", info("r2"), {"node": "n2", "incarnation": "i2"}, None, a.clock.tick(2))
    a.state.merge(remote)
    assert set(a.locations()) == {("n1", "i1"), ("n2", "i2")}
    assert set(a.locations()[("n2", "i2")]) == {"r1", "r2"}
    view = a.locations()
    a.set_user_data("s1", {"hand": True}, 10)
    assert a.locations() is view, "kept while no one joins, moves or leaves"
    a.state.move("r1", {"node": "n3", "incarnation": "i3"}, a.clock.tick(20))
    assert set(a.locations()[("n2", "i2")]) == {"r2"}
    assert a.locations()[("n3", "i3")] == {"r1": {"node": "n3", "incarnation": "i3"}}
    a.state.remove(["r2"])
    assert ("n2", "i2") not in a.locations()


def test_locations_leave_out_a_location_that_is_not_a_node_and_incarnation() -> None:
    a = make_room("n1")
    for n, location in enumerate(["x", {}, {"node": "n2"}, {"node": 2, "incarnation": "i"}]):
        a.state.join(f"bad{n}", info(f"bad{n}"), location, None, a.clock.tick(n))  # type: ignore[arg-type]
    a.state.join("ok", info("ok"), {"node": "n2", "incarnation": "i2"}, None, a.clock.tick(9))
    assert a.locations() == {("n2", "i2"): {"ok": {"node": "n2", "incarnation": "i2"}}}


@given(
    steps=st.lists(
        st.tuples(st.just("write"), room_ops()) | st.tuples(st.just("merge"), rooms()),
        max_size=12,
    )
)
def test_locations_always_match_the_replica(steps: list[tuple[str, Any]]) -> None:
    room = make_room()
    for kind, step in steps:
        if kind == "write":
            apply_room_op(room.state, step)
        else:
            room.state.merge(step)
        fresh: dict[tuple[str, str], dict[str, Any]] = {}
        for sid, p in room.state.participants.items():
            if p.present and p.location is not None:
                where = p.location.value
                assert isinstance(where, dict)
                fresh.setdefault((where["node"], where["incarnation"]), {})[sid] = where
        assert room.locations() == fresh
