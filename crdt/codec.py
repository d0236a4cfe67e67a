"""Versioned byte encoding of the CRDT states (orjson).

Every encoded state is one JSON object ``{"v": 1, "t": TYPE, ...}`` where TYPE is ``"reg"``,
``"map"`` or ``"room"``. Stamps are their string form (`Stamp.encode`), which sorts like the stamps,
so a Lua script in Redis can compare them without decoding.

Version 1 layout::

    reg   {"s": STAMP, "x": VALUE}
    map   {"e": STAMP | null, "k": {KEY: [STAMP, VALUE]}, "d": {KEY: STAMP}}     d: tombstones
    room  {"p": {SID: {"i": REG?, "l": REG?, "u": REG?}}, "r": [SID...], "m": MAP}
          where REG is [STAMP, VALUE] and MAP is the map layout without "v" and "t"

A replica's floor and the dates of its removals (`RoomState.collect`) are its own, not state:
never encoded; a decoded state has no floor.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson

from roomstate.crdt.errors import CodecError, CrdtError
from roomstate.crdt.hlc import Stamp
from roomstate.crdt.lww import Entry, LWWMap, LWWRegister
from roomstate.crdt.room import Participant, RoomState

__all__ = ["VERSION", "decode", "encode", "from_obj", "to_obj"]

VERSION = 1

State = LWWRegister | LWWMap | RoomState
T = TypeVar("T", bound=State)
_TAGS: dict[type, str] = {LWWRegister: "reg", LWWMap: "map", RoomState: "room"}


def encode(state: State) -> bytes:
    return orjson.dumps(to_obj(state))


def decode(data: bytes | str, expect: type[T]) -> T:
    """Decode bytes made by `encode`, which must hold a state of type `expect`."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"not JSON: {exc}") from None
    return from_obj(obj, expect)


def to_obj(state: State) -> dict[str, Any]:
    """The JSON-ready object for `state` (for embedding in a larger message)."""
    if isinstance(state, LWWRegister):
        return {"v": VERSION, "t": "reg", "s": state.stamp.encode(), "x": state.value}
    if isinstance(state, LWWMap):
        return {"v": VERSION, "t": "map", **_map_obj(state)}
    return {"v": VERSION, "t": "room", **_room_obj(state)}


def from_obj(obj: Any, expect: type[T]) -> T:
    """The inverse of `to_obj`, for an object that must hold a state of type `expect`."""
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        version = obj.get("v") if isinstance(obj, dict) else None
        raise CodecError(f"unsupported codec version {version!r}; this build reads {VERSION}")
    if obj.get("t") != _TAGS[expect]:
        raise CodecError(f"expected a {_TAGS[expect]!r} state, got {obj.get('t')!r}")
    state: State
    try:
        if expect is LWWRegister:
            state = LWWRegister(obj["x"], Stamp.decode(obj["s"]))
        elif expect is LWWMap:
            state = _map_from(obj)
        else:
            state = _room_from(obj)
    except (CrdtError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CodecError(f"malformed {_TAGS[expect]!r} state: {exc!r}") from None
    assert isinstance(state, expect)
    return state


def _reg(register: LWWRegister) -> list[Any]:
    return [register.stamp.encode(), register.value]


def _reg_from(pair: list[Any]) -> LWWRegister:
    stamp, value = pair
    return LWWRegister(value, Stamp.decode(stamp))


def _map_obj(state: LWWMap) -> dict[str, Any]:
    return {
        "e": None if state.epoch is None else state.epoch.encode(),
        "k": {k: [e.stamp.encode(), e.value] for k, e in state.entries.items() if not e.deleted},
        "d": {k: e.stamp.encode() for k, e in state.entries.items() if e.deleted},
    }


def _map_from(obj: dict[str, Any]) -> LWWMap:
    entries = {key: Entry(Stamp.decode(s), value) for key, (s, value) in obj["k"].items()}
    entries.update((key, Entry(Stamp.decode(s), deleted=True)) for key, s in obj["d"].items())
    epoch = None if obj["e"] is None else Stamp.decode(obj["e"])
    # what merging it into an empty map keeps: nothing older than the epoch
    return LWWMap(epoch, {k: e for k, e in entries.items() if epoch is None or e.stamp >= epoch})


def _room_obj(state: RoomState) -> dict[str, Any]:
    participants = {}
    for sid, p in state.participants.items():
        fields = {"i": p.info, "l": p.location, "u": p.user_data}
        participants[sid] = {name: _reg(reg) for name, reg in fields.items() if reg is not None}
    return {
        "p": participants,
        "r": sorted(state.removed),
        "m": _map_obj(state.session_data),
    }


def _room_from(obj: dict[str, Any]) -> RoomState:
    if not isinstance(obj["r"], list) or not all(isinstance(sid, str) for sid in obj["r"]):
        raise CodecError(f"'r' must be a list of session ids, not {obj['r']!r:.80}")
    removed = set(obj["r"])
    participants = {}
    for sid, fields in obj["p"].items():
        if sid in removed:
            continue
        participants[sid] = Participant(
            *(_reg_from(fields[name]) if name in fields else None for name in ("i", "l", "u"))
        )
    return RoomState(participants, removed, _map_from(obj["m"]))
