"""Last-writer-wins register and map, ordered by HLC stamps.

Both are state-based CRDTs: ``merge`` is commutative, associative and idempotent, and a delta
(the state produced by one write) is itself a state, so applying a delta is merging it.

Stamps are unique per write (they carry the writing node's id), so two different values with one
stamp only arise from misuse. Even then merge stays deterministic: equal stamps are ordered by the
canonical JSON encoding of the values (`_tiebreak`).

``merge`` mutates the receiver and returns whether its state changed, so a node can tell whether
an incoming delta is news.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from roomstate.crdt.hlc import Stamp

__all__ = ["Entry", "LWWMap", "LWWRegister"]

Json = Any  # a value that orjson can encode: dict, list, str, int, float, bool or None


def _tiebreak(value: Json) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass
class LWWRegister:
    """One value; the write with the greatest stamp wins."""

    value: Json
    stamp: Stamp

    def wins_over(self, other: LWWRegister) -> bool:
        """Whether this register's write beats `other`'s."""
        if self.stamp != other.stamp:
            return self.stamp > other.stamp
        return _tiebreak(self.value) > _tiebreak(other.value)

    def merge(self, other: LWWRegister) -> bool:
        if not other.wins_over(self):
            return False
        self.value, self.stamp = other.value, other.stamp
        return True

    def copy(self) -> LWWRegister:
        return LWWRegister(self.value, self.stamp)


@dataclass(frozen=True)
class Entry:
    """One key of an `LWWMap`: its value, or a tombstone recording when it was deleted."""

    stamp: Stamp
    value: Json = None
    deleted: bool = False

    def wins_over(self, other: Entry) -> bool:
        if self.stamp != other.stamp:
            return self.stamp > other.stamp
        # Same stamp: a delete beats a write (a shallow-merge that also deletes the key).
        return (self.deleted, _tiebreak(self.value)) > (other.deleted, _tiebreak(other.value))


@dataclass
class LWWMap:
    """A JSON object whose keys are LWW registers, with an epoch for whole-object replacement.

    - `replace` sets the epoch to its stamp: every entry stamped before the epoch is gone, even
      one that arrives later. It then writes its own keys at that stamp.
    - `shallow_merge` writes the given keys at its stamp, leaving the others alone.
    - `delete` writes tombstones, so an older write of the key that arrives later stays hidden.

    Entries and tombstones older than the epoch are collected at once: the epoch alone hides
    anything older, so nothing is lost by dropping them. Tombstones older than the *floor* are
    collected by `collect` (docs/crdt.md, "Forgetting removals"): a write of a key this map does
    not hold, stamped before the floor, is then refused, as the tombstone would have refused it.
    """

    epoch: Stamp | None = None  # stamp of the latest replace; older entries are gone
    entries: dict[str, Entry] = field(default_factory=dict)  # key -> latest write or tombstone
    # Wall ms below which tombstones are forgotten and writes of keys not held are refused.
    # This replica's own horizon (`collect`), not state: never merged, encoded or compared.
    floor_ms: int = field(default=0, compare=False, repr=False)
    # No tombstone is stamped before this (ms): `collect` looks for them only past it.
    oldest_tombstone_ms: float = field(default=math.inf, compare=False, repr=False)

    def __post_init__(self) -> None:
        for entry in self.entries.values():
            if entry.deleted and entry.stamp.wall_ms < self.oldest_tombstone_ms:
                self.oldest_tombstone_ms = entry.stamp.wall_ms

    # -- writes: each returns the delta to publish, already merged into self --

    def replace(self, data: dict[str, Json], stamp: Stamp) -> LWWMap:
        delta = LWWMap(stamp, {key: Entry(stamp, value) for key, value in data.items()})
        self.merge(delta)
        return delta

    def shallow_merge(
        self, data: dict[str, Json], stamp: Stamp, keys_to_delete: tuple[str, ...] = ()
    ) -> LWWMap:
        entries = {key: Entry(stamp, value) for key, value in data.items()}
        entries.update((key, Entry(stamp, deleted=True)) for key in keys_to_delete)
        delta = LWWMap(None, entries)
        self.merge(delta)
        return delta

    def delete(self, keys: tuple[str, ...], stamp: Stamp) -> LWWMap:
        return self.shallow_merge({}, stamp, keys)

    # -- state --

    def value(self) -> dict[str, Json]:
        """The map as a plain dict, without deleted keys."""
        return {key: entry.value for key, entry in self.entries.items() if not entry.deleted}

    def merge(self, other: LWWMap) -> bool:
        changed = False
        if other.epoch is not None and (self.epoch is None or other.epoch > self.epoch):
            self.epoch = other.epoch
            self._collect()
            changed = True
        floor = self.floor_ms
        for key, theirs in other.entries.items():
            if self.epoch is not None and theirs.stamp < self.epoch:
                continue
            mine = self.entries.get(key)
            if mine is None and theirs.stamp.wall_ms < floor:
                continue  # older than a tombstone this map may have forgotten
            if mine is None or theirs.wins_over(mine):
                self.entries[key] = theirs
                changed = True
                if theirs.deleted and theirs.stamp.wall_ms < self.oldest_tombstone_ms:
                    self.oldest_tombstone_ms = theirs.stamp.wall_ms
        return changed

    def copy(self) -> LWWMap:
        return LWWMap(self.epoch, dict(self.entries), self.floor_ms, self.oldest_tombstone_ms)

    def collect(self, floor_ms: int) -> int:
        """Raise the floor to `floor_ms` and forget the tombstones stamped before it (what they
        hid was stamped before them, so the floor refuses it from now on). Returns how many
        were forgotten. The caller keeps `floor_ms` behind every write still to arrive."""
        if floor_ms <= self.floor_ms:
            return 0
        self.floor_ms = floor_ms
        if floor_ms <= self.oldest_tombstone_ms:
            return 0  # (a pass over the keys only when some tombstone is due)
        old = [k for k, e in self.entries.items() if e.deleted and e.stamp.wall_ms < floor_ms]
        for key in old:
            del self.entries[key]
        self.oldest_tombstone_ms = min(
            (e.stamp.wall_ms for e in self.entries.values() if e.deleted), default=math.inf
        )
        return len(old)

    def _collect(self) -> None:
        """Drop entries older than the epoch."""
        epoch = self.epoch
        assert epoch is not None
        for key in [key for key, entry in self.entries.items() if entry.stamp < epoch]:
            del self.entries[key]
