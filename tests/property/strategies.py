"""Hypothesis strategies for the CRDT types.

States are built the way real ones are: by applying random writes to an empty state. Stamps come
from a small space so that writes often collide on wall time, counter or key, which is where the
merge rules matter. `unique_stamps` gives writes the distinct stamps a real clock would.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from roomstate.crdt import LWWMap, LWWRegister, RoomState, Stamp, to_obj

NODES = ("a", "b", "c")
KEYS = ("k1", "k2", "k3", "k4", "k5")
SESSIONS = ("s1", "s2", "s3", "s4")

stamps = st.builds(Stamp, st.integers(0, 12), st.integers(0, 2), st.sampled_from(NODES))
few_stamps = st.builds(Stamp, st.integers(0, 2), st.just(0), st.sampled_from(NODES[:2]))
"""So few stamps that writes often share one: for checking tie-breaks."""

json_scalars = (
    st.none()
    | st.booleans()
    # equal in Python (1 == 1.0 == True, 0 == -0.0 == False), different on the wire: a merge
    # that kept either of two such values would pass an == check and diverge
    | st.sampled_from([0, 0.0, -0.0, 1, 1.0, True, False])
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=3)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=6,
)
objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)
tie_values = st.sampled_from([0, 0.0, -0.0, 1, 1.0, True, False, {"a": 1}, {"a": 1.0}, {"a": True}])
"""Values that Python's == takes for one another: with `few_stamps`, where tie-breaks decide."""

registers = st.builds(LWWRegister, json_values, stamps)


def counts(state: RoomState) -> dict[str, int]:
    """``{"hidden": H, "present": P}`` of a replica, counted by walking it (the model of what
    the room logic's `Roster` keeps step by step)."""
    infos = [p.info.value if p.info is not None else None for p in state.present().values()]
    hidden = sum(1 for info in infos if isinstance(info, dict) and info.get("hidden") is True)
    return {"hidden": hidden, "present": len(infos) - hidden}


def canonical(state: LWWRegister | LWWMap | RoomState) -> bytes:
    """A state as canonical JSON bytes (keys sorted): two states are the same if these are.
    Python's == is not enough: it takes 1, 1.0 and True for one value, which the wire does not."""
    return orjson.dumps(to_obj(state), option=orjson.OPT_SORT_KEYS)


@st.composite
def map_ops(
    draw: st.DrawFn,
    stamp: st.SearchStrategy[Stamp] = stamps,
    values: st.SearchStrategy[Any] = json_values,
) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["replace", "merge", "delete"]))
    data = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
    if kind == "replace":
        return ("replace", draw(data), draw(stamp))
    if kind == "merge":
        deletes = draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
        return ("merge", draw(data), tuple(deletes), draw(stamp))
    return (
        "delete",
        tuple(draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3))),
        draw(stamp),
    )


def apply_map_op(state: LWWMap, op: tuple[Any, ...]) -> LWWMap:
    """Apply one op to `state`; return its delta."""
    if op[0] == "replace":
        return state.replace(op[1], op[2])
    if op[0] == "merge":
        return state.shallow_merge(op[1], op[3], op[2])
    return state.delete(op[1], op[2])


@st.composite
def maps(
    draw: st.DrawFn,
    stamp: st.SearchStrategy[Stamp] = stamps,
    values: st.SearchStrategy[Any] = json_values,
) -> LWWMap:
    state = LWWMap()
    for op in draw(st.lists(map_ops(stamp, values), max_size=6)):
        apply_map_op(state, op)
    return state


@st.composite
def room_ops(
    draw: st.DrawFn,
    stamp: st.SearchStrategy[Stamp] = stamps,
    values: st.SearchStrategy[Any] = json_values,
) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["join", "user-data", "move", "remove", "session"]))
    sid = draw(st.sampled_from(SESSIONS))
    if kind == "join":
        info = {"user_name": draw(st.text(max_size=3)), "owner": draw(st.booleans())}
        if draw(st.booleans()):
            info["hidden"] = True  # Daily's hasPresence: false (only a hidden one has the key)
        location = {"node": draw(st.sampled_from(NODES)), "incarnation": "1"}
        return ("join", sid, info, location, draw(values), draw(stamp))
    if kind == "user-data":
        return ("user-data", sid, draw(values), draw(stamp))
    if kind == "move":
        return (
            "move",
            sid,
            {"node": draw(st.sampled_from(NODES)), "incarnation": "2"},
            draw(stamp),
        )
    if kind == "remove":
        return ("remove", sid)
    return ("session", draw(map_ops(stamp, values)))


def apply_room_op(state: RoomState, op: tuple[Any, ...]) -> RoomState:
    """Apply one op to `state`; return its delta."""
    kind = op[0]
    if kind == "join":
        return state.join(*op[1:])
    if kind == "user-data":
        return state.set_user_data(*op[1:])
    if kind == "move":
        return state.move(*op[1:])
    if kind == "remove":
        return state.remove([op[1]])
    session = op[1]
    if session[0] == "replace":
        return state.replace_session_data(session[1], session[2])
    if session[0] == "merge":
        return state.merge_session_data(session[1], session[3], session[2])
    return state.merge_session_data({}, session[2], session[1])


@st.composite
def rooms(
    draw: st.DrawFn,
    stamp: st.SearchStrategy[Stamp] = stamps,
    values: st.SearchStrategy[Any] = json_values,
) -> RoomState:
    state = RoomState()
    for op in draw(st.lists(room_ops(stamp, values), max_size=8)):
        apply_room_op(state, op)
    return state
