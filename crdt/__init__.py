"""Conflict-free replicated data types for room state: pure, no I/O, no clock reads.

- `HybridLogicalClock` and `Stamp`: totally ordered stamps; time is passed in.
- `LWWRegister`: one value, last writer wins (userData).
- `LWWMap`: a JSON object with `replace` (an epoch) and `shallow_merge`/`delete` (per-key stamps,
  tombstones) (meeting session data).
- `RoomState`: participants (a set with final removal) and session data, with `Changes` reports;
  `collect` forgets removals older than the horizon.
- `encode`/`decode`: the versioned byte codec.
"""

from __future__ import annotations

from roomstate.crdt.codec import VERSION, decode, encode, from_obj, to_obj
from roomstate.crdt.errors import ClockDriftError, CodecError, CrdtError
from roomstate.crdt.hlc import DEFAULT_MAX_DRIFT_MS, ZERO, HybridLogicalClock, Stamp
from roomstate.crdt.lww import Entry, Json, LWWMap, LWWRegister
from roomstate.crdt.room import DEFAULT_KEEP_MS, Changes, Participant, RoomState

__all__ = [
    "DEFAULT_KEEP_MS",
    "DEFAULT_MAX_DRIFT_MS",
    "VERSION",
    "ZERO",
    "Changes",
    "ClockDriftError",
    "CodecError",
    "CrdtError",
    "Entry",
    "HybridLogicalClock",
    "Json",
    "LWWMap",
    "LWWRegister",
    "Participant",
    "RoomState",
    "Stamp",
    "decode",
    "encode",
    "from_obj",
    "to_obj",
]
