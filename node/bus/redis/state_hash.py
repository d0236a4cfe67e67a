"""The room state as Redis stores it: a hash the PUBLISH script merges deltas into. Pure.

A delta goes to the script as flat ops (`delta_ops`): kind, id, stamp, payload each; the script
keeps one field per register, ``"<stamp> <payload>"`` (the layout is in scripts.py), and
`state_from_hash` reads the fields back into a `RoomState`. Stored text it cannot read raises
`CodecError` (or `ValueError`, for bad JSON): the bus reports that room's state as unreadable.
"""

from __future__ import annotations

from typing import Any

import orjson

from roomstate.crdt import (
    DEFAULT_KEEP_MS,
    DEFAULT_MAX_DRIFT_MS,
    CodecError,
    Entry,
    LWWMap,
    LWWRegister,
    Participant,
    RoomState,
    Stamp,
)

__all__ = ["HORIZON", "condition_ops", "delta_ops", "state_from_hash"]

_REGISTERS = {"i": "info", "l": "location", "u": "user_data"}  # field suffix -> Participant's

HORIZON = (DEFAULT_KEEP_MS, 2 * DEFAULT_MAX_DRIFT_MS)
"""How long the store keeps removals (ms), and the drift margin past that for removed ids (ms):
the rule of docs/crdt.md, "Forgetting removals"."""


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def delta_ops(delta: RoomState, horizon: tuple[int, int] = HORIZON) -> list[str]:
    """The PUBLISH script's arguments for a delta: kind, id, stamp, payload per op (the first
    one `horizon`, as `HORIZON`: the script forgets old removals as it stores the delta)."""
    keep_ms, margin_ms = horizon
    ops: list[str] = ["h", "", str(keep_ms), str(margin_ms)]
    for sid in delta.removed:
        ops += ["x", sid, "", ""]
    if delta.session_data.epoch is not None:
        ops += ["e", "", delta.session_data.epoch.encode(), ""]
    for key, entry in delta.session_data.entries.items():
        if entry.deleted:
            ops += ["d", key, entry.stamp.encode(), "d"]
        else:
            ops += ["m", key, entry.stamp.encode(), "v" + _canonical(entry.value)]
    for sid, p in delta.participants.items():
        for kind, register in (("i", p.info), ("l", p.location), ("u", p.user_data)):
            if register is not None:
                ops += [kind, sid, register.stamp.encode(), _canonical(register.value)]
    return ops


def condition_ops(session_id: str, location: Any) -> list[str]:
    """The op that makes the script store its event only if the stored location of
    `session_id` is `location` (compared as canonical JSON)."""
    return ["c", session_id, "", _canonical(location)]


def state_from_hash(fields: dict[str, str]) -> RoomState:
    """The RoomState stored in a room's state hash (the inverse of what PUBLISH stores)."""
    state = RoomState()
    entries: dict[str, Entry] = {}  # the session data's
    for field, stored in fields.items():
        kind, _, rest = field.partition(":")
        if kind == "x":
            state.removed.add(rest)
            continue
        if kind == "e":
            state.session_data.epoch = Stamp.decode(stored)
            continue
        if kind == "g":  # the store's floor: this replica refuses what the store refused
            state.floor_ms = int(stored)
            continue
        if kind not in ("p", "m"):
            continue  # "n": the presence count; "l": the last event's id; "c", "q": forgetting
        stamp_text, _, payload = stored.partition(" ")
        stamp = Stamp.decode(stamp_text)
        if kind == "m":
            if payload == "d":
                entries[rest] = Entry(stamp, deleted=True)
            else:
                entries[rest] = Entry(stamp, orjson.loads(payload[1:]))
            continue
        sid, _, register = rest.rpartition(":")
        name = _REGISTERS.get(register)
        if name is None:
            raise CodecError(f"not a participant's register: {field!r}")
        participant = state.participants.setdefault(sid, Participant())
        setattr(participant, name, LWWRegister(orjson.loads(payload), stamp))
    state.session_data = LWWMap(state.session_data.epoch, entries, state.floor_ms)
    return state
