"""Room logic for large rooms: hidden participants, counts, participant events batched per
loop turn, `joined` from kept encodings. Sans-I/O."""

from __future__ import annotations

from typing import Any

import orjson

from roomstate.crdt import HybridLogicalClock, RoomState
from roomstate.room import Output, Room, RoomConfig
from roomstate.room.pacing import window_for
from roomstate.wire.protocol import encode_state


def make_room(config: RoomConfig | None = None) -> Room:
    config = config or RoomConfig()
    return Room("webinar", RoomState(), HybridLogicalClock("n1"), "n1/i1", config)


def join(room: Room, sid: str, now: int, hidden: bool = False, owner: bool = False) -> Output:
    info: dict[str, Any] = {"user_id": f"u-{sid}", "user_name": sid, "owner": owner}
    if hidden:
        info["hidden"] = True
    return room.join(sid, info, {"node": "n1", "incarnation": "i1"}, None, now)


def frames(out: Output) -> list[tuple[list[str], dict[str, Any]]]:
    return [(recipients, orjson.loads(frame)) for recipients, frame in out.sends]


def settled(room: Room, now: int, *joins: tuple[str, bool, bool]) -> None:
    for sid, hidden, owner in joins:
        join(room, sid, now, hidden, owner)
        room.poll(now)


def test_a_hidden_participant_is_neither_announced_nor_listed_but_sees_itself() -> None:
    room = make_room()
    settled(room, 0, ("host", False, True), ("guest", False, False))
    out = join(room, "h1", 10, hidden=True)
    assert frames(out) == []
    assert "h1" not in room.participants()
    mine = orjson.loads(room.joined_frames(1, "h1")[0])
    assert set(mine["participants"]) == {"host", "guest", "h1"}
    assert mine["participants"]["h1"]["permissions"] == {"hasPresence": False}
    assert "permissions" not in mine["participants"]["host"]
    theirs = orjson.loads(room.joined_frames(2, "guest")[0])
    assert set(theirs["participants"]) == {"host", "guest"}
    assert mine["participantCounts"] == {"hidden": 1, "present": 2}
    room.poll(10)
    assert frames(room.leave("h1", "left", 20)) == []


def test_only_owners_get_a_hidden_participants_user_data_update() -> None:
    room = make_room()
    settled(room, 0, ("host", False, True), ("guest", False, False), ("h1", True, False))
    found = frames(room.set_user_data("h1", {"hand": True}, 100))
    assert [(r, f["type"]) for r, f in found] == [(["host"], "participant-updated")]
    assert found[0][1]["participant"]["permissions"] == {"hasPresence": False}


def test_an_app_message_reaches_a_hidden_participant() -> None:
    room = make_room()
    settled(room, 0, ("host", False, True), ("h1", True, False))
    event = room.app_message("host", "hi", "h1", 5)
    assert event.message is not None
    assert frames(room.deliver_app_message(event.message, "1-0"))[0][0] == ["h1"]


def test_counts_go_out_once_per_interval_carrying_the_latest() -> None:
    room = make_room(RoomConfig(counts_interval_ms=1000))
    settled(room, 0, ("host", False, True))
    join(room, "h1", 2000, hidden=True)
    first = [f for _, f in frames(room.poll(2000)) if f["type"] == "participant-counts-updated"]
    assert first == [
        {"type": "participant-counts-updated", "participantCounts": {"hidden": 1, "present": 1}}
    ]
    for n in range(2, 6):
        join(room, f"h{n}", 2000 + n, hidden=True)
        room.joined_frames(None, f"h{n}")[0]  # as the node answers the join
        assert room.poll(2000 + n).sends == []
    assert room.next_deadline() == 3000
    later = frames(room.poll(3000))
    assert [f["participantCounts"] for _, f in later] == [{"hidden": 5, "present": 1}]
    assert later[0][0] == ["host", "h1", "h2", "h3", "h4"], "h5 got these counts in joined"


def test_participant_events_of_one_turn_after_the_first_go_out_as_one_batch() -> None:
    room = make_room()
    settled(room, 0, ("a", False, False), ("b", False, False))
    first = frames(join(room, "c", 10))
    assert [(r, f["type"]) for r, f in first] == [(["a", "b"], "participant-joined")]
    assert frames(join(room, "d", 10)) == []
    assert frames(join(room, "e", 10)) == []
    assert room.next_deadline() == 10, "polled on the next loop turn"
    sent = [(r, f) for r, f in frames(room.poll(10)) if f["type"] == "participant-events"]
    by_recipients = {
        tuple(r): [e["participant"]["session_id"] for e in f["events"]] for r, f in sent
    }
    assert by_recipients == {("a", "b", "c"): ["d", "e"]}
    assert room.poll(11).sends == [], "nothing is sent twice"


def test_a_late_joiner_of_the_turn_gets_only_the_events_after_it() -> None:
    room = make_room()
    settled(room, 0, ("a", False, False))
    join(room, "b", 10)
    join(room, "c", 10)
    join(room, "d", 10)
    sent = {tuple(r): orjson.loads(f) for r, f in room.poll(10).sends}
    assert sent[("a", "b")]["type"] == "participant-events"
    assert sent[("c",)]["type"] == "participant-joined"
    assert sent[("c",)]["participant"]["session_id"] == "d"


def test_an_app_message_never_overtakes_a_pending_participant_event() -> None:
    room = make_room()
    settled(room, 0, ("a", False, False), ("b", False, False))
    join(room, "c", 10)
    join(room, "d", 10)
    event = room.app_message("d", "hello", "*", 10)
    assert event.message is not None
    kinds = [f["type"] for _, f in frames(room.deliver_app_message(event.message, "1-0"))]
    assert kinds == ["participant-joined", "app-message"]


def _assert_joined_is_encode_state(room: Room, sid: str) -> None:
    snapshot = room.snapshot(sid)
    expected = encode_state(
        "joined",
        id=3,
        sessionId=sid,
        participants=snapshot.participants,
        participantCounts=snapshot.participant_counts,
        meetingSessionState={"data": snapshot.session_data},
    )
    assert room.joined_frames(3, sid)[0] == expected
    assert room.joined_frames(3, sid, snapshot=snapshot)[0] == expected


def test_joined_from_kept_encodings_is_byte_for_byte_encode_state() -> None:
    room = make_room()
    settled(room, 0, ("b", False, True), ("a", False, False), ("h", True, False))
    room.set_user_data("a", {"hand": [1, {"z": 1, "y": 2}]}, 50)
    for sid in ("a", "h"):
        _assert_joined_is_encode_state(room, sid)
    # the kept listing follows every step: joins between others, updates, leaves, a remote walk
    for n, sid in enumerate(("c", "aa", "0", "h2", "zz")):
        join(room, sid, 100 + n, hidden=sid == "h2")
        _assert_joined_is_encode_state(room, sid)
    room.set_user_data("aa", {"hand": True}, 200)
    _assert_joined_is_encode_state(room, "h2")
    room.leave("c", "left", 300)
    room.leave("h", "left", 301)
    _assert_joined_is_encode_state(room, "0")
    room.state.remove(["zz"])  # behind the roster's back: its next read walks once
    _assert_joined_is_encode_state(room, "aa")


def test_counts_follow_remote_joins_and_leaves_without_a_walk_and_match_one() -> None:
    a, b = (
        make_room(),
        Room("webinar", RoomState(), HybridLogicalClock("n2"), "n2/i1", RoomConfig()),
    )
    settled(a, 0, ("host", False, True))
    for n in range(5):
        for event in join(b, f"r{n}", 10 + n, hidden=n % 2 == 0).publish:
            a.receive(event, 10 + n, "1-0")
    for event in b.leave("r0", "left", 30).publish:
        a.receive(event, 30, "2-0")
    assert a.participant_counts() == {"hidden": 2, "present": 3}
    fresh = Room("webinar", a.state.copy(), HybridLogicalClock("n3"), "n3/i1", RoomConfig())
    assert fresh.participant_counts() == a.participant_counts()


def _membership(out: Output) -> list[tuple[list[str], str, list[str]]]:
    """(recipients, frame type, session ids it is about) of the membership frames."""
    found = []
    for recipients, frame in frames(out):
        events = frame.get("events", [frame])
        if frame["type"] in ("participant-joined", "participant-events"):
            found.append(
                (recipients, frame["type"], [e["participant"]["session_id"] for e in events])
            )
    return found


def test_a_storm_is_batched_once_per_window_until_a_window_passes_quiet() -> None:
    room = make_room(RoomConfig(membership_batch_ms=50, counts_interval_ms=60_000))
    settled(room, 0, ("host", False, True))
    # the first join after quiet goes out at once; the next ones wait for the window's end
    assert _membership(join(room, "a", 1000)) == [(["host"], "participant-joined", ["a"])]
    room.poll(1000)  # the turn ends; the counts wait for the open window (one write with it)
    assert room.next_deadline() == 1050
    for n, now in enumerate((1010, 1020, 1040)):
        assert _membership(join(room, f"b{n}", now)) == []
        assert _membership(room.poll(now)) == []  # the turn ends, the window does not
    batch = _membership(room.poll(1050))
    assert batch == [
        (["host", "a"], "participant-events", ["b0", "b1", "b2"]),
        (["b0"], "participant-events", ["b1", "b2"]),  # each joiner: the events after its own
        (["b1"], "participant-joined", ["b2"]),
    ]
    # the storm goes on: the next window is open, its joins wait for its end
    assert _membership(join(room, "c", 1060)) == []
    assert room.next_deadline() == 1100
    assert [t for _, t, _ in _membership(room.poll(1100))] == ["participant-joined"]
    # a window without joins ends the storm: the next join goes out at once again
    assert _membership(room.poll(1150)) == []
    assert room.next_deadline() == 61_050, "only the counts are due (last sent with the batch)"
    assert [ids for _, _, ids in _membership(join(room, "d", 2000))] == [["d"]]


def test_without_a_window_a_batch_is_one_loop_turn() -> None:
    room = make_room(RoomConfig(counts_interval_ms=0))
    settled(room, 0, ("host", False, True))
    join(room, "a", 1000)
    join(room, "b", 1000)
    assert room.next_deadline() == 1000
    assert [ids for _, _, ids in _membership(room.poll(1000))] == [["b"]]
    assert room.next_deadline() is None
    assert [ids for _, _, ids in _membership(join(room, "c", 1001))] == [["c"]]


def test_flush_now_sends_what_waits_for_the_window() -> None:
    """A shutdown closes the connections before a window ends: what waits goes out first."""
    room = make_room(RoomConfig(membership_batch_ms=50, counts_interval_ms=60_000))
    settled(room, 0, ("host", False, True))
    join(room, "a", 1000)
    room.poll(1000)
    assert _membership(room.leave("a", "node-shutdown", 1010)) == []
    sent = frames(room.flush_now())
    assert [(r, f["type"], f.get("reason")) for r, f in sent] == [
        (["host"], "participant-left", "node-shutdown")
    ]
    assert room.flush_now().sends == [], "nothing is sent twice"


def test_the_batch_window_grows_with_the_local_participants() -> None:
    assert [window_for(50, n) for n in (0, 40, 100, 250, 1000, 5000)] == [
        50,
        50,
        100,
        250,
        1000,
        1000,
    ]
    assert window_for(0, 5000) == 0, "no window: one batch per loop turn, whatever the size"
    room = make_room(RoomConfig(membership_batch_ms=50, counts_interval_ms=60_000))
    for n in range(1000):
        join(room, f"p{n}", 0, hidden=True)
    room.poll(0)
    assert _membership(join(room, "a", 1000)) != []  # the first after quiet: at once
    assert room.next_deadline() == 1000 + 1000, "1,001 local participants: the 1 s window"
    assert _membership(join(room, "b", 1100)) == []
    assert _membership(room.poll(1999)) == []
    assert [t for _, t, _ in _membership(room.poll(2000))] == ["participant-joined"]


def test_counts_due_during_a_window_go_out_with_its_batch() -> None:
    room = make_room(RoomConfig(membership_batch_ms=50, counts_interval_ms=1000))
    settled(room, 0, ("host", False, True))
    join(room, "a", 1000)  # at once; opens a window until 1050
    join(room, "b", 1010)
    assert room.next_deadline() == 1050
    assert frames(room.poll(1020)) == [], "the counts wait for the batch"
    sent = [(recipients, frame["type"]) for recipients, frame in frames(room.poll(1050))]
    assert sent == [
        (["host", "a"], "participant-joined"),
        (["host", "a", "b"], "participant-counts-updated"),
    ]


def _pages(frames: list[bytes]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The frames decoded, and the participants of all of them together (none twice)."""
    decoded = [orjson.loads(f) for f in frames]
    whole: dict[str, Any] = {}
    for f in decoded:
        assert not whole.keys() & f["participants"].keys(), "a participant on two pages"
        whole.update(f["participants"])
    return decoded, whole


def test_a_roster_over_the_page_size_comes_in_pages_that_make_the_whole() -> None:
    limit = 600
    room = make_room(RoomConfig(roster_page_bytes=limit))
    settled(room, 0, *((f"p{n:02}", False, n == 0) for n in range(20)))
    room.set_user_data("p07", {"hand": True, "note": "x" * 200}, 5)
    join(room, "h", 10, hidden=True)
    for frames in (
        room.joined_frames(1, "h"),
        room.joined_frames(1, "h", snapshot=room.snapshot("h"), resumed=True),  # a resume's
    ):
        decoded, whole = _pages(frames)
        assert whole == room.snapshot("h").participants
        assert decoded[0]["type"] == "joined" and decoded[0]["paged"] is True
        assert [f["type"] for f in decoded[1:]] == ["participants-page"] * (len(decoded) - 1)
        assert [f["last"] for f in decoded[1:]] == [False] * (len(decoded) - 2) + [True]
        assert all(len(orjson.dumps(f["participants"])) <= limit for f in decoded)
        assert len(decoded) >= 5
    assert "h" in orjson.loads(room.joined_frames(1, "h")[0])["participants"], "own: page one"
    # a roster that fits is one frame, without "paged"
    small = make_room(RoomConfig(roster_page_bytes=limit))
    settled(small, 0, ("a", False, False), ("b", False, False))
    (only,) = small.joined_frames(1, "a")
    assert "paged" not in orjson.loads(only)


def test_a_refused_resume_says_so_and_an_unpaged_joined_has_no_paged_flag() -> None:
    room = make_room()
    settled(room, 0, ("a", False, False))
    refused = orjson.loads(room.joined_frames(1, "a", "a.x", "0-1", resumed=False)[0])
    assert refused["resumed"] is False and "paged" not in refused and "replayed" not in refused
    snapshot = room.snapshot("a")
    again = room.joined_frames(1, "a", snapshot=snapshot, resumed=True, replayed=False)
    assert orjson.loads(again[0])["replayed"] is False


def test_raised_hands_for_the_owners_keep_the_shortest_window_in_a_large_room() -> None:
    room = make_room(RoomConfig(membership_batch_ms=50, counts_interval_ms=60_000))
    settled(room, 0, ("host", False, True))
    for n in range(1000):
        join(room, f"h{n}", 0, hidden=True)
    room.poll(0)
    room.set_user_data("h1", {"hand": True}, 1000)  # at once, to the owner; opens a window
    assert room.next_deadline() == 1050, "owners-only events: the window of 1 recipient"
    room.set_user_data("h2", {"hand": True}, 1010)
    sent = [
        (r, f["type"])
        for r, f in frames(room.poll(1050))
        if f["type"] != "participant-counts-updated"
    ]
    assert sent == [(["host"], "participant-updated")]
    # an event for everyone in the next window makes it the room's size (1,002: 1 s)
    room.set_user_data("h3", {"hand": True}, 1060)
    join(room, "p", 1070)
    assert room.next_deadline() == 1100
    room.poll(1100)
    assert room.next_deadline() == 1100 + 1000


def test_a_raised_hand_after_a_storm_is_not_held_for_the_storms_window() -> None:
    room = make_room(RoomConfig(membership_batch_ms=50, counts_interval_ms=60_000))
    settled(room, 0, ("host", False, True))
    for n in range(1000):
        join(room, f"h{n}", 0, hidden=True)
    room.poll(0)
    join(room, "a", 1000)  # at once; a storm's window for everyone opens (1,002 local: 1 s)
    join(room, "b", 1100)
    assert room.next_deadline() == 2000
    room.poll(2000)  # b goes out; the storm's next window is open for 1 s
    assert room.next_deadline() == 3000
    room.set_user_data("h1", {"hand": True}, 2100)
    assert room.next_deadline() == 2050, "owners-only events wait the owners' window at most"
    sent = [(r, f["type"]) for r, f in frames(room.poll(2100))]
    assert sent == [(["host"], "participant-updated")]
