"""Join-semilattice laws for every CRDT type, and delta = merge.

`merge` is in place, so each law is checked on copies: ``joined(a, b)`` is a copy of `a` with `b`
merged in. States are compared as canonical bytes (`canonical`: every stamp, value and tombstone,
with 1, 1.0 and True told apart as the wire tells them apart).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomstate.crdt import LWWMap, LWWRegister, RoomState

from .strategies import (
    apply_map_op,
    apply_room_op,
    canonical,
    few_stamps,
    json_values,
    map_ops,
    maps,
    registers,
    room_ops,
    rooms,
    stamps,
    tie_values,
)

STATES = {
    "register": registers,
    "map": maps(),
    "room": rooms(),
    # many writes on one stamp, with values Python's == takes for one another: the tie-breaks
    "register, ties": st.builds(LWWRegister, tie_values, few_stamps),
    "map, ties": maps(few_stamps, tie_values),
    "room, ties": rooms(few_stamps, tie_values),
}


def joined(a: Any, *others: Any) -> Any:
    result = a.copy()
    for other in others:
        result.merge(other)
    return result


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_is_commutative(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(STATES[kind]), data.draw(STATES[kind])
    assert canonical(joined(a, b)) == canonical(joined(b, a))


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_is_associative(kind: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(STATES[kind]) for _ in range(3))
    assert canonical(joined(joined(a, b), c)) == canonical(joined(a, joined(b, c)))


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_is_idempotent(kind: str, data: st.DataObject) -> None:
    a = data.draw(STATES[kind])
    assert canonical(joined(a, a)) == canonical(a)
    b = data.draw(STATES[kind])
    assert canonical(joined(joined(a, b), b)) == canonical(joined(a, b))


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_does_not_change_its_argument(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(STATES[kind]), data.draw(STATES[kind])
    before = b.copy()
    joined(a, b).merge(joined(b, a))
    assert canonical(b) == canonical(before)


@given(state=registers, value=json_values, stamp=stamps)
def test_a_register_write_takes_the_value_with_the_greater_stamp(
    state: LWWRegister, value: Any, stamp: Any
) -> None:
    written = joined(state, LWWRegister(value, stamp))
    if stamp > state.stamp:
        assert canonical(written) == canonical(LWWRegister(value, stamp))
    elif stamp < state.stamp:
        assert canonical(written) == canonical(state)
    else:  # one stamp, two values (misuse): either, the same whichever came first
        assert written.stamp == stamp
        assert canonical(written) == canonical(joined(LWWRegister(value, stamp), state))


@given(state=maps(), op=map_ops())
def test_map_write_equals_merging_its_delta(state: LWWMap, op: tuple[Any, ...]) -> None:
    written = state.copy()
    delta = apply_map_op(written, op)
    assert canonical(joined(state, delta)) == canonical(written)
    assert canonical(joined(delta, state)) == canonical(written)


@given(state=rooms(), op=room_ops())
def test_room_write_equals_merging_its_delta(state: RoomState, op: tuple[Any, ...]) -> None:
    written = state.copy()
    delta = apply_room_op(written, op)
    assert canonical(joined(state, delta)) == canonical(written)
    assert canonical(joined(delta, state)) == canonical(written)


@given(state=rooms(), other=rooms())
def test_removal_is_final(state: RoomState, other: RoomState) -> None:
    merged = joined(state, other)
    assert merged.removed == state.removed | other.removed
    assert not merged.removed & merged.participants.keys()
