"""The replicated state of one room: its participants and its meeting session data.

- Participants form a set keyed by session id. A participant has three LWW registers: `info`
  (user id, user name, join time, owner: written once, at join), `location` (the node and node
  incarnation holding its connection: rewritten when it resumes on another node) and `user_data`.
  A participant is present once its `info` is known. Removal is final: a removed session id is
  remembered and anything later said about it is ignored, so it never comes back. `collect`
  forgets removed ids once they are older than the horizon, and from then on refuses the
  registers, older than its floor, of session ids it does not hold: all a forgotten removal
  hid (docs/crdt.md, "Forgetting removals").
- Session data is one `LWWMap`.

Writes are methods that apply the write to this replica and return the delta to publish (a small
`RoomState` that other replicas merge). `merge` reports what became visible through `Changes`, so
the node knows which events to send.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from roomstate.crdt.hlc import DEFAULT_MAX_DRIFT_MS, Stamp
from roomstate.crdt.lww import Json, LWWMap, LWWRegister

__all__ = ["DEFAULT_KEEP_MS", "Changes", "Participant", "RoomState"]

DEFAULT_KEEP_MS = 120_000
"""The horizon (ms): how long a removal is kept before `collect` may forget it. It must exceed
how far a replica may lag the store and still merge into it (docs/crdt.md, "Forgetting
removals")."""


def _merge_register(
    mine: LWWRegister | None, theirs: LWWRegister | None
) -> tuple[LWWRegister | None, bool]:
    """The merge of two optional registers (a delta may carry only some of them), and whether
    it differs from `mine`."""
    if theirs is None:
        return mine, False
    if mine is None:
        return theirs.copy(), True
    return mine, mine.merge(theirs)


@dataclass
class Participant:
    """One participant's registers; any may still be unknown at a replica (None)."""

    info: LWWRegister | None = None  # {"user_id", "user_name", "joined_at", "owner"}
    location: LWWRegister | None = None  # {"node", "incarnation"}
    user_data: LWWRegister | None = None  # the participant's userData (any JSON value)

    @property
    def present(self) -> bool:
        return self.info is not None

    def copy(self) -> Participant:
        return Participant(
            *(None if r is None else r.copy() for r in (self.info, self.location, self.user_data))
        )

    def since(self, floor_ms: int) -> Participant | None:
        """A copy without the registers stamped before `floor_ms` (None: nothing left)."""
        kept = [
            None if r is None or r.stamp.wall_ms < floor_ms else r.copy()
            for r in (self.info, self.location, self.user_data)
        ]
        return None if kept == [None, None, None] else Participant(*kept)


@dataclass
class Changes:
    """What a merge changed, as the participants would see it."""

    joined: list[str] = field(default_factory=list)  # became present
    updated: list[str] = field(default_factory=list)  # userData changed (and not just joined)
    left: list[str] = field(default_factory=list)  # were present, now removed
    session_data: bool = False  # the session data's state changed

    def __bool__(self) -> bool:
        return bool(self.joined or self.updated or self.left or self.session_data)


@dataclass
class RoomState:
    """One replica of a room."""

    participants: dict[str, Participant] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # session ids removed for good
    session_data: LWWMap = field(default_factory=LWWMap)
    # Counts the merges into this replica that added, removed or moved a participant (a new
    # record, a removal, a changed `info` or `location`), so that a view derived from who is
    # where can be kept until it changes. Bookkeeping, not state: never merged, encoded,
    # copied or compared.
    membership_version: int = field(default=0, compare=False, repr=False)
    # This replica's own horizon, like `membership_version` never merged, encoded or compared:
    # wall ms below which removals are forgotten and registers of unknown ids refused.
    floor_ms: int = field(default=0, compare=False, repr=False)
    # The removed ids `collect` has dated (ms, in the order dated: oldest first), and those
    # removed since its last round, still to be dated.
    _dated: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _undated: list[str] = field(default_factory=list, compare=False, repr=False)
    _since_ms: int | None = field(default=None, compare=False, repr=False)  # first `collect`

    def __post_init__(self) -> None:
        self._undated.extend(self.removed - self._dated.keys())

    # -- reads --

    def present(self) -> dict[str, Participant]:
        """The participants whose join is known, by session id."""
        return {sid: p for sid, p in self.participants.items() if p.present}

    def located_at(self, node: str, incarnation: str) -> list[str]:
        """Session ids whose connection is held by this node incarnation."""
        return [
            sid
            for sid, p in self.participants.items()
            if p.location is not None
            and p.location.value == {"node": node, "incarnation": incarnation}
        ]

    def stamps(self) -> list[Stamp]:
        """Every stamp this state carries (what a receiving clock must move past)."""
        found = [entry.stamp for entry in self.session_data.entries.values()]
        if self.session_data.epoch is not None:
            found.append(self.session_data.epoch)
        for p in self.participants.values():
            found += [r.stamp for r in (p.info, p.location, p.user_data) if r is not None]
        return found

    # -- writes: each applies to this replica and returns the delta to publish --

    def join(
        self,
        session_id: str,
        info: dict[str, Json],
        location: dict[str, Json],
        user_data: Json,
        stamp: Stamp,
    ) -> RoomState:
        return self._apply(
            RoomState(
                participants={
                    session_id: Participant(
                        LWWRegister(info, stamp),
                        LWWRegister(location, stamp),
                        LWWRegister(user_data, stamp),
                    )
                }
            )
        )

    def set_user_data(self, session_id: str, data: Json, stamp: Stamp) -> RoomState:
        delta = Participant(user_data=LWWRegister(data, stamp))
        return self._apply(RoomState(participants={session_id: delta}))

    def move(self, session_id: str, location: dict[str, Json], stamp: Stamp) -> RoomState:
        delta = Participant(location=LWWRegister(location, stamp))
        return self._apply(RoomState(participants={session_id: delta}))

    def remove(self, session_ids: Iterable[str]) -> RoomState:
        return self._apply(RoomState(removed=set(session_ids)))

    def replace_session_data(self, data: dict[str, Json], stamp: Stamp) -> RoomState:
        return RoomState(session_data=self.session_data.replace(data, stamp))

    def merge_session_data(
        self, data: dict[str, Json], stamp: Stamp, keys_to_delete: tuple[str, ...] = ()
    ) -> RoomState:
        return RoomState(session_data=self.session_data.shallow_merge(data, stamp, keys_to_delete))

    def _apply(self, delta: RoomState) -> RoomState:
        self.merge(delta)
        return delta

    # -- merge --

    def merge(self, other: RoomState) -> Changes:
        changes = Changes()
        membership_changed = False
        for sid in other.removed - self.removed:
            self.removed.add(sid)
            self._undated.append(sid)
            gone = self.participants.pop(sid, None)
            membership_changed |= gone is not None
            if gone is not None and gone.present:
                changes.left.append(sid)
        for sid, theirs in other.participants.items():
            if sid in self.removed:
                continue
            mine = self.participants.get(sid)
            if mine is None:
                # Registers of an id not held, older than the floor: what a forgotten removal hid
                fresh = theirs.since(self.floor_ms) if self.floor_ms else theirs.copy()
                if fresh is None:
                    continue
                self.participants[sid] = fresh
                membership_changed = True
                if fresh.present:
                    changes.joined.append(sid)
                continue
            was_present = mine.present
            mine.info, info_changed = _merge_register(mine.info, theirs.info)
            mine.location, moved = _merge_register(mine.location, theirs.location)
            mine.user_data, data_changed = _merge_register(mine.user_data, theirs.user_data)
            membership_changed |= info_changed or moved
            if mine.present and not was_present:
                changes.joined.append(sid)
            elif mine.present and data_changed:
                changes.updated.append(sid)
        changes.session_data = self.session_data.merge(other.session_data)
        if membership_changed:
            self.membership_version += 1
        return changes

    def copy(self) -> RoomState:
        return RoomState(
            {sid: p.copy() for sid, p in self.participants.items()},
            set(self.removed),
            self.session_data.copy(),
            floor_ms=self.floor_ms,
            _dated=dict(self._dated),  # (those still to be dated: found by __post_init__)
            _since_ms=self._since_ms,
        )

    # -- collection --

    def collect(self, now_ms: int, keep_ms: int, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS) -> int:
        """Forget what removals older than the horizon hid (docs/crdt.md, "Forgetting
        removals"); `now_ms` is this replica's wall clock. Removed ids learnt since the last
        round are dated `now_ms`; the floor becomes ``now_ms - keep_ms``; removed ids dated
        more than twice the drift bound before the floor are forgotten (every register they
        hid was stamped before the floor, by a clock at most the drift bound ahead, while the
        date was read from one at most the drift bound behind); session-data tombstones
        stamped before the floor are too. Returns how many were forgotten. O(what it dates
        and forgets): dates only grow, so the oldest are first.

        The floor first moves once this replica has collected for a whole horizon: one made
        from a store that had just lost its data gets the other replicas merged back first."""
        for sid in self._undated:
            if sid in self.removed:
                self._dated.setdefault(sid, now_ms)
        self._undated.clear()
        if self._since_ms is None:
            self._since_ms = now_ms
        floor = now_ms - keep_ms
        if floor <= self.floor_ms or floor < self._since_ms:
            return 0
        self.floor_ms = floor
        forgotten = 0
        dated = self._dated
        while dated:
            sid = next(iter(dated))
            if dated[sid] >= floor - 2 * max_drift_ms:
                break
            del dated[sid]
            self.removed.discard(sid)
            forgotten += 1
        return forgotten + self.session_data.collect(floor)
