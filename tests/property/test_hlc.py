"""Hybrid logical clock properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomstate.crdt import ClockDriftError, CrdtError, HybridLogicalClock, Stamp

walls = st.integers(0, 2**40)
remote_stamps = st.builds(
    Stamp, walls, st.integers(0, 2**16 - 1), st.sampled_from(["a", "z", "n-1"])
)


@given(times=st.lists(walls, min_size=1, max_size=50))
def test_stamps_from_one_clock_strictly_increase(times: list[int]) -> None:
    """Whatever the wall clock does (stall, jump back), tick never repeats or goes back."""
    clock = HybridLogicalClock("n1")
    stamps = [clock.tick(now) for now in times]
    assert all(a < b for a, b in itertools.pairwise(stamps))


@given(events=st.lists(st.tuples(walls, st.none() | remote_stamps), min_size=1, max_size=50))
def test_a_stamp_after_recv_is_greater_than_the_received_one(
    events: list[tuple[int, Stamp | None]],
) -> None:
    clock = HybridLogicalClock("n1", max_drift_ms=2**41)
    previous = None
    for now, remote in events:
        stamp = clock.tick(now) if remote is None else clock.recv(remote, now)
        if remote is not None:
            assert stamp > remote
        if previous is not None:
            assert stamp > previous
        previous = stamp


@given(remote=remote_stamps, now=walls)
def test_observe_moves_the_next_tick_past_the_observed_stamp(remote: Stamp, now: int) -> None:
    clock = HybridLogicalClock("m")
    clock.observe(remote)
    assert clock.tick(now) > remote


@given(a=remote_stamps, b=remote_stamps)
def test_encoding_order_is_stamp_order(a: Stamp, b: Stamp) -> None:
    assert (a.encode() < b.encode()) == (a < b)
    assert (a.encode().encode() < b.encode().encode()) == (a < b)  # as bytes, as Redis sees them
    assert Stamp.decode(a.encode()) == a


@given(now=walls, ahead=st.integers(501, 10_000))
def test_recv_refuses_a_stamp_beyond_the_drift_bound(now: int, ahead: int) -> None:
    clock = HybridLogicalClock("n1")
    with pytest.raises(ClockDriftError, match=rf"{ahead} ms ahead.*drift bound is 500 ms"):
        clock.recv(Stamp(now + ahead, 0, "n2"), now)
    assert clock.last == Stamp(0, 0, "n1")  # a refused stamp leaves the clock untouched


def test_recv_accepts_a_stamp_at_the_drift_bound() -> None:
    clock = HybridLogicalClock("n1")
    assert clock.recv(Stamp(1500, 7, "n2"), 1000) == Stamp(1500, 8, "n1")


def test_counter_overflow_borrows_the_next_millisecond() -> None:
    clock = HybridLogicalClock("n1")
    clock.observe(Stamp(10, 0xFFFF, "n2"))
    assert clock.tick(10) == Stamp(11, 0, "n1")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "n:1", "ü"])
def test_node_ids_are_checked(bad: str) -> None:
    with pytest.raises(CrdtError, match="node id must be"):
        HybridLogicalClock(bad)
