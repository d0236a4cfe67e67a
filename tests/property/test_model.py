"""Model equivalence: writes with distinct stamps, merged in any order, give the value that a
plain dict gets by applying the same writes in stamp order."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from roomstate.crdt import LWWMap, RoomState, Stamp

from .strategies import apply_map_op, json_values, map_ops, objects


def unique_stamps(n: int) -> st.SearchStrategy[list[Stamp]]:
    """`n` distinct stamps, close together so that ordering is interesting."""
    return st.lists(
        st.builds(Stamp, st.integers(0, 20), st.integers(0, 3), st.sampled_from("abc")),
        min_size=n,
        max_size=n,
        unique=True,
    )


def map_model(ops: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Apply the ops to a dict in stamp order: replace, shallow merge, delete."""
    model: dict[str, Any] = {}
    for op in sorted(ops, key=lambda op: op[-1]):
        if op[0] == "replace":
            model = dict(op[1])
        elif op[0] == "merge":
            model.update(op[1])
            for key in op[2]:
                model.pop(key, None)
        else:
            for key in op[1]:
                model.pop(key, None)
    return model


@st.composite
def map_histories(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Map ops with distinct stamps."""
    ops = draw(st.lists(map_ops(), max_size=10))
    return [(*op[:-1], stamp) for op, stamp in zip(ops, draw(unique_stamps(len(ops))), strict=True)]


@given(ops=map_histories(), order=st.randoms(use_true_random=False))
def test_map_value_equals_the_model_in_any_delivery_order(
    ops: list[tuple[Any, ...]], order: Any
) -> None:
    deltas = [apply_map_op(LWWMap(), op) for op in ops]
    order.shuffle(deltas)
    replica = LWWMap()
    for delta in deltas:
        replica.merge(delta)
    assert replica.value() == map_model(ops)


@given(
    writes=st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]), json_values), max_size=10),
    removed=st.sets(st.sampled_from(["s1", "s2", "s3"])),
    session=objects,
    data=st.data(),
)
def test_room_value_equals_the_model_in_any_delivery_order(
    writes: list[tuple[str, Any]], removed: set[str], session: dict[str, Any], data: st.DataObject
) -> None:
    """Joins, then userData writes and removals, arrive in a shuffled order."""
    stamps = data.draw(unique_stamps(len(writes) + 4))
    join_stamp = min(stamps)  # every join precedes the writes, as the writer saw it first
    deltas = [
        RoomState().join(
            sid, {"user_name": sid}, {"node": "a", "incarnation": "1"}, None, join_stamp
        )
        for sid in ("s1", "s2", "s3")
    ]
    deltas += [
        RoomState().set_user_data(sid, value, stamp)
        for (sid, value), stamp in zip(writes, sorted(stamps)[1:], strict=False)
    ]
    deltas.append(RoomState().remove(removed))
    deltas.append(RoomState().replace_session_data(session, sorted(stamps)[-1]))
    data.draw(st.randoms(use_true_random=False)).shuffle(deltas)
    replica = RoomState()
    for delta in deltas:
        replica.merge(delta)

    model: dict[str, Any] = {sid: None for sid in ("s1", "s2", "s3")}
    for (sid, value), _ in zip(writes, sorted(stamps)[1:], strict=False):
        model[sid] = value  # writes are already in stamp order
    for sid in removed:
        del model[sid]
    seen = {sid: p.user_data.value for sid, p in replica.present().items() if p.user_data}
    assert seen == model
    assert replica.session_data.value() == session
