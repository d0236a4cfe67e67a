"""Clock drift: measuring a node's clock against the store's (crdt.hlc.clock_skew_ms), and the
delivery rule (a delta already in the log is merged whatever its stamps: docs/crdt.md)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roomstate.crdt import HybridLogicalClock, RoomState, Stamp
from roomstate.crdt.hlc import clock_skew_ms
from roomstate.room import Room, RoomConfig
from roomstate.wire.events import BusEvent


def test_skew_examples() -> None:
    assert clock_skew_ms(1000, 1000, 1002) == 0
    assert clock_skew_ms(3000, 1001, 3002) == 1999  # ahead: the reference is before `before`
    assert clock_skew_ms(1000, 3000, 1003) == -1997  # behind: the reference is after `after`
    assert clock_skew_ms(1000, 1500, 2000) == 0  # a slow round trip cannot tell


@given(
    real_before=st.integers(0, 2**40),
    trip_out=st.integers(0, 5000),
    trip_back=st.integers(0, 5000),
    offset=st.integers(-(10**6), 10**6),
)
def test_measured_skew_is_never_beyond_the_true_offset_nor_of_the_wrong_sign(
    real_before: int, trip_out: int, trip_back: int, offset: int
) -> None:
    """Whatever the round trip, the measure errs only toward 0: a node is never called out of
    bound by more than it is, nor ahead when it is behind."""
    reference = real_before + trip_out  # the store reads its (true) clock on the way
    before, after = real_before + offset, reference + trip_back + offset
    skew = clock_skew_ms(before, reference, after)
    assert min(0, offset) <= skew <= max(0, offset)
    if trip_out + trip_back == 0:
        assert skew == offset


def test_a_delivered_delta_is_merged_whatever_its_stamp_and_the_clock_moves_past_it() -> None:
    """Refusing a stamp at delivery would leave this replica different from the store's."""
    clock = HybridLogicalClock("n1")
    room = Room("lobby", RoomState(), clock, "n1/i1", RoomConfig())
    now = 1_000_000
    future = Stamp(now + 60_000, 0, "n2")
    delta = RoomState().merge_session_data({"k": "future"}, future)
    room.receive(BusEvent("n2/i1", now, delta=delta), now, "5-0")
    assert room.session_data() == {"k": "future"}
    assert clock.tick(now) > future  # a later local write wins over it
