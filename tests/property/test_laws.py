"""Join-semilattice laws for every CRDT type, and delta = merge.

`merge` is in place, so each law is checked on copies: ``joined(a, b)`` is a copy of `a` with `b`
merged in. Equality is structural (dataclass equality over every stamp, value and tombstone).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import LWWMap, LWWRegister, RoomState

from .strategies import (
    apply_map_op,
    apply_room_op,
    json_values,
    map_ops,
    maps,
    registers,
    room_ops,
    rooms,
    stamps,
)

STATES = {"register": registers, "map": maps(), "room": rooms()}


def joined(a: Any, *others: Any) -> Any:
    result = a.copy()
    for other in others:
        result.merge(other)
    return result


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_is_commutative(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(STATES[kind]), data.draw(STATES[kind])
    assert joined(a, b) == joined(b, a)


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_is_associative(kind: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(STATES[kind]) for _ in range(3))
    assert joined(joined(a, b), c) == joined(a, joined(b, c))


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_is_idempotent(kind: str, data: st.DataObject) -> None:
    a = data.draw(STATES[kind])
    assert joined(a, a) == a
    b = data.draw(STATES[kind])
    assert joined(joined(a, b), b) == joined(a, b)


@pytest.mark.parametrize("kind", STATES)
@given(data=st.data())
def test_merge_does_not_change_its_argument(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(STATES[kind]), data.draw(STATES[kind])
    before = b.copy()
    joined(a, b).merge(joined(b, a))
    assert b == before


@given(state=registers, value=json_values, stamp=stamps)
def test_register_delta_equals_merge(state: LWWRegister, value: Any, stamp: Any) -> None:
    delta = LWWRegister(value, stamp)
    assert joined(state, delta) == joined(delta, state)


@given(state=maps(), op=map_ops())
def test_map_write_equals_merging_its_delta(state: LWWMap, op: tuple[Any, ...]) -> None:
    written = state.copy()
    delta = apply_map_op(written, op)
    assert joined(state, delta) == written
    assert joined(delta, state) == written


@given(state=rooms(), op=room_ops())
def test_room_write_equals_merging_its_delta(state: RoomState, op: tuple[Any, ...]) -> None:
    written = state.copy()
    delta = apply_room_op(written, op)
    assert joined(state, delta) == written
    assert joined(delta, state) == written


@given(state=rooms(), other=rooms())
def test_removal_is_final(state: RoomState, other: RoomState) -> None:
    merged = joined(state, other)
    assert merged.removed == state.removed | other.removed
    assert not merged.removed & merged.participants.keys()
