"""Pure helpers of the room: a session-data write checked against the size limit, and the
view of who is where.
"""

from __future__ import annotations

from typing import Any

from roomstate.crdt import RoomState
from roomstate.crdt.hlc import Stamp
from roomstate.crdt.lww import LWWMap
from roomstate.errors import RequestError
from roomstate.wire.protocol import SetMeetingSessionData, compact_size

__all__ = ["Locations", "session_data_delta"]


def session_data_delta(
    state: RoomState, write: SetMeetingSessionData, stamp: Stamp, limit: int
) -> LWWMap:
    """The delta of a session-data write, *not* applied; `RequestError` (too-large) if the
    result would be over `limit` bytes."""
    candidate = state.session_data.copy()
    if write.merge_strategy == "replace":
        delta = candidate.replace(write.data, stamp)
    else:
        # A tombstone only for a key the room has: deleting a key it does not have changes
        # nothing, and storing one for every name a client makes up would grow without bound.
        entries = candidate.entries
        deleting = tuple(
            key for key in write.keys_to_delete if key in entries and not entries[key].deleted
        )
        delta = candidate.shallow_merge(write.data, stamp, deleting)
    # Deleted keys count as keys of null: each is kept as a tombstone until the next
    # replace, in every replica and in the store.
    stored = {key: None if e.deleted else e.value for key, e in candidate.entries.items()}
    size = compact_size(stored)
    if size > limit:
        deleted = sum(1 for e in candidate.entries.values() if e.deleted)
        counted = f", with {deleted} deleted keys, kept until the next replace," if deleted else ""
        raise RequestError(
            "too-large",
            f"meeting session data would be {size} bytes{counted}; the limit is {limit}",
        )
    return delta


class Locations:
    """The present participants by the (node, incarnation) holding their connection."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._state: RoomState | None = None  # the replica `_found` is of
        self._version = -1  # and its membership_version then

    def of(self, state: RoomState) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """Each with its location as the replica has it; local ones too. The node's upkeep
        asks every room for this every second, so it is kept until a merge adds, removes or
        moves a participant (`RoomState.membership_version`): a round then costs a lookup per
        room, not a walk over every participant (docs/performance.md). The answer is shared
        with later calls: read it, do not change it. A location that is not {"node",
        "incarnation"} with string values (no node writes one) is left out."""
        version = state.membership_version
        if self._state is not state or self._version != version:
            found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
            for sid, p in state.participants.items():
                location = p.location.value if p.present and p.location is not None else None
                if not isinstance(location, dict):
                    continue
                node, incarnation = location.get("node"), location.get("incarnation")
                if isinstance(node, str) and isinstance(incarnation, str):
                    found.setdefault((node, incarnation), {})[sid] = location
            self._found, self._version, self._state = found, version, state
        return self._found
