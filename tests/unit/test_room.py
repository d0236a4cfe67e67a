"""RoomState: the change reports a node turns into events, and the write rules."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from roomstate.crdt import LWWMap, RoomState, Stamp
from tests.property.strategies import apply_room_op, room_ops, rooms

LOC = {"node": "n1", "incarnation": "i1"}


def stamp(wall: int, node: str = "n1") -> Stamp:
    return Stamp(wall, 0, node)


def test_merge_reports_joins_updates_leaves_and_session_changes() -> None:
    source, replica = RoomState(), RoomState()
    changes = replica.merge(source.join("s1", {"user_name": "a"}, LOC, None, stamp(1)))
    assert (changes.joined, changes.updated, changes.left) == (["s1"], [], [])
    changes = replica.merge(source.set_user_data("s1", {"hand": True}, stamp(2)))
    assert changes.updated == ["s1"] and not changes.joined
    assert not replica.merge(source.set_user_data("s1", {"hand": False}, stamp(1, "n0")))
    changes = replica.merge(source.replace_session_data({"a": 1}, stamp(3)))
    assert changes.session_data and not changes.updated
    changes = replica.merge(source.remove(["s1"]))
    assert changes.left == ["s1"]
    assert not replica.merge(source.remove(["s1"])), "a duplicate removal is no news"


def test_user_data_arriving_before_its_join_shows_on_join() -> None:
    source, replica = RoomState(), RoomState()
    join = source.join("s1", {"user_name": "a"}, LOC, None, stamp(1))
    update = source.set_user_data("s1", "late", stamp(2))
    assert not replica.merge(update), "not present yet: nothing to show"
    assert replica.merge(join).joined == ["s1"]
    user_data = replica.present()["s1"].user_data
    assert user_data is not None and user_data.value == "late"


def test_a_removed_session_never_comes_back() -> None:
    room = RoomState()
    join = room.join("s1", {"user_name": "a"}, LOC, 1, stamp(1))
    room.remove(["s1"])
    assert not room.merge(join)
    assert not room.merge(RoomState().set_user_data("s1", 2, stamp(9)))
    assert room.present() == {}


def test_located_at_names_only_that_node_incarnation() -> None:
    room = RoomState()
    room.join("s1", {}, LOC, None, stamp(1))
    room.join("s2", {}, {"node": "n1", "incarnation": "i0"}, None, stamp(1))
    room.join("s3", {}, LOC, None, stamp(1))
    room.move("s3", {"node": "n2", "incarnation": "i7"}, stamp(2))
    assert room.located_at("n1", "i1") == ["s1"]


def who_is_where(state: RoomState) -> dict[str, tuple[bool, Any]]:
    return {
        sid: (p.present, p.location.value if p.location is not None else None)
        for sid, p in state.participants.items()
    }


def test_membership_version_counts_joins_moves_and_removals_only() -> None:
    room = RoomState()
    room.join("s1", {}, LOC, None, stamp(1))
    assert room.membership_version == 1
    room.set_user_data("s1", {"hand": True}, stamp(2))
    room.replace_session_data({"a": 1}, stamp(3))
    room.merge_session_data({"b": 2}, stamp(4), ("a",))
    assert room.membership_version == 1, "userData and session data move no one"
    room.move("s1", {"node": "n2", "incarnation": "i2"}, stamp(5))
    assert room.membership_version == 2
    room.move("s1", LOC, stamp(4))  # older than the move it lost to: nothing changes
    assert room.membership_version == 2
    room.remove(["s1"])
    assert room.membership_version == 3
    room.remove(["s1"])
    assert room.membership_version == 3
    assert room == RoomState(removed={"s1"}, session_data=room.session_data.copy()), (
        "bookkeeping: not part of equality"
    )


def test_a_join_older_than_a_known_move_still_counts_as_a_membership_change() -> None:
    """The move arrived first (its record has a location but no info: not present yet); the
    join's location loses to it, and only `info` changes, which makes the participant present."""
    source, replica = RoomState(), RoomState()
    join = source.join("s1", {"user_name": "a"}, LOC, None, stamp(3))
    move = source.move("s1", {"node": "n2", "incarnation": "i2"}, stamp(5))
    replica.merge(move)
    version = replica.membership_version
    assert replica.merge(join).joined == ["s1"]
    assert replica.membership_version > version


@given(
    steps=st.lists(
        st.tuples(st.just("write"), room_ops()) | st.tuples(st.just("merge"), rooms()),
        max_size=12,
    )
)
def test_membership_version_changes_whenever_who_is_where_changes(
    steps: list[tuple[str, Any]],
) -> None:
    """What `roomstate.room.Room.locations` relies on to keep its view until the next change."""
    state = RoomState()
    for kind, step in steps:
        before, version = who_is_where(state), state.membership_version
        if kind == "write":
            apply_room_op(state, step)
        else:
            state.merge(step)
        if who_is_where(state) != before:
            assert state.membership_version > version


def test_replace_hides_concurrent_older_merges_but_not_newer_ones() -> None:
    """The worked example of docs/crdt.md."""
    a, b = LWWMap(), LWWMap()
    older = a.shallow_merge({"x": 1}, stamp(10, "a"))
    replace = b.replace({"y": 2}, stamp(11, "b"))
    newer = a.shallow_merge({"z": 3}, stamp(12, "a"))
    for delta in (older, newer):
        b.merge(delta)
    a.merge(replace)
    assert a == b
    assert a.value() == {"y": 2, "z": 3}
    assert set(a.entries) == {"y", "z"}, "keys older than the epoch are collected"


def test_delete_beats_an_older_write_that_arrives_later() -> None:
    m = LWWMap()
    write = LWWMap().shallow_merge({"x": 1}, stamp(5))
    m.delete(("x",), stamp(6))
    m.merge(write)
    assert m.value() == {}
    assert m.entries["x"].deleted, "the tombstone stays while no replace covers it"


def test_equal_stamps_resolve_the_same_way_everywhere() -> None:
    a = LWWMap().shallow_merge({"k": "A"}, stamp(1))
    b = LWWMap().shallow_merge({"k": "B"}, stamp(1))
    left, right = a.copy(), b.copy()
    left.merge(b)
    right.merge(a)
    assert left == right and left.value() == {"k": "B"}


# -- forgetting removals (docs/crdt.md) --

KEEP = 1000


def joined_state(sid: str = "s1", wall: int = 0) -> RoomState:
    state = RoomState()
    state.join(sid, {"user_name": sid}, {"node": "a"}, {"x": 1}, Stamp(wall, 0, "a"))
    return state


def test_a_removed_id_is_forgotten_past_the_floor_less_twice_the_drift() -> None:
    state = joined_state()
    state.remove(["s1"])
    assert state.collect(100, KEEP, max_drift_ms=50) == 0  # dated 100; no floor yet
    assert state.collect(1_100, KEEP, max_drift_ms=50) == 0  # floor 100: dated 100 is not before
    assert state.collect(1_199, KEEP, max_drift_ms=50) == 0  # floor 199: 100 is not before 99
    assert state.collect(1_201, KEEP, max_drift_ms=50) == 1  # floor 201: 100 is before 101
    assert state.removed == set() and state.floor_ms == 201


def test_past_the_floor_only_what_a_forgotten_removal_hid_is_refused() -> None:
    state = joined_state("live")
    state.collect(0, KEEP)
    state.collect(5_000, KEEP)  # floor 4000
    late = RoomState().set_user_data("live", 2, Stamp(100, 0, "a"))
    state.merge(late)  # older than the floor, of a participant it holds: last writer wins
    assert state.participants["live"].user_data is not None
    assert state.participants["live"].user_data.value == 2
    gone = joined_state("gone", wall=3_000)
    assert not state.merge(gone), "registers of an id not held, before the floor, take nothing"
    assert "gone" not in state.participants
    fresh = joined_state("new", wall=4_000)
    assert state.merge(fresh).joined == ["new"]
    mixed = joined_state("mixed", wall=3_999)
    mixed.set_user_data("mixed", 5, Stamp(4_001, 0, "a"))
    state.merge(mixed)  # only the registers stamped from the floor on
    assert state.participants["mixed"].info is None
    assert state.participants["mixed"].user_data is not None


def test_a_session_tombstone_is_forgotten_once_stamped_before_the_floor() -> None:
    state = RoomState()
    state.merge_session_data({"k": 1, "j": 1}, Stamp(10, 0, "a"))
    state.merge_session_data({}, Stamp(20, 0, "a"), ("k",))
    state.collect(0, KEEP)
    state.collect(KEEP + 20, KEEP)  # floor 20: the tombstone (20) is not before it
    assert "k" in state.session_data.entries
    state.collect(KEEP + 21, KEEP)
    assert "k" not in state.session_data.entries
    state.merge(RoomState().merge_session_data({"k": 1}, Stamp(10, 0, "a")))
    assert state.session_data.value() == {"j": 1}, "the write the tombstone hid came back"


def test_a_replica_sets_no_floor_before_it_has_collected_for_a_horizon() -> None:
    """One made from a store that just lost its data refuses nothing the others merge back."""
    state = RoomState()
    state.collect(10_000, KEEP)
    state.collect(10_999, KEEP)
    assert state.floor_ms == 0
    assert state.merge(joined_state("old", wall=0)).joined == ["old"]
    state.collect(11_000, KEEP)
    assert state.floor_ms == 10_000
