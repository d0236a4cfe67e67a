"""Hybrid logical clock (HLC) stamps.

A stamp is ``(wall_ms, counter, node)``. Stamps are totally ordered by that tuple: the wall
clock first, then a logical counter that breaks ties within one millisecond, then the id of the
node that made the stamp, so two nodes never make equal stamps.

The clock never reads time itself: every call is given ``now_ms`` by its caller. That keeps this
module pure and lets tests drive skewed clocks.

Encoding: ``"{wall_ms:012x}.{counter:04x}.{node}"``. The two numbers are fixed-width lowercase
hex, so comparing two encoded stamps as strings (bytes, or Lua ``<``) gives the same answer as
comparing the stamps. 12 hex digits of milliseconds last until the year 10889.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from roomstate.crdt.errors import ClockDriftError, CodecError, CrdtError

__all__ = ["DEFAULT_MAX_DRIFT_MS", "ZERO", "HybridLogicalClock", "Stamp", "clock_skew_ms"]

DEFAULT_MAX_DRIFT_MS = 500
"""How far (ms) a remote stamp may be ahead of the local wall clock before `recv` refuses it."""

_MAX_WALL = 16**12 - 1
_MAX_COUNTER = 16**4 - 1
_NODE_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")
_ENCODED = re.compile(r"([0-9a-f]{12})\.([0-9a-f]{4})\.([A-Za-z0-9_\-]{0,64})\Z")


class Stamp(NamedTuple):
    """One HLC timestamp; tuple order is stamp order."""

    wall_ms: int
    counter: int
    node: str

    def encode(self) -> str:
        """The string form whose lexicographic order equals stamp order."""
        return f"{self.wall_ms:012x}.{self.counter:04x}.{self.node}"

    @classmethod
    def decode(cls, text: str) -> Stamp:
        """Parse `encode`'s output; raise `CodecError` on anything else (stored or received
        text, as the codec's other errors are: readers of stored data catch that one)."""
        match = _ENCODED.match(text)
        if match is None:
            raise CodecError(f"not an HLC stamp: {text!r}")
        return cls(int(match[1], 16), int(match[2], 16), match[3])

    def __str__(self) -> str:
        return self.encode()


ZERO = Stamp(0, 0, "")
"""Smaller than every stamp a clock makes."""


def check_node_id(node: str) -> str:
    """Return `node` if it is a valid node id (1-64 of ``A-Z a-z 0-9 _ -``)."""
    if not _NODE_ID.match(node):
        raise CrdtError(f"node id must be 1-64 characters of A-Z a-z 0-9 _ -, got {node!r}")
    return node


class HybridLogicalClock:
    """The HLC of one node (Kulkarni et al., 2014), with time passed in.

    `tick` stamps a local event; `recv` stamps the receipt of a remote stamp after checking
    that it is not too far ahead; `observe` only moves the clock past a stamp that is already
    part of shared history (a delta read from the room's stream), where refusing would make
    replicas diverge.
    """

    def __init__(self, node: str, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS) -> None:
        self.node = check_node_id(node)
        self.max_drift_ms = max_drift_ms  # remote stamps further ahead than this are refused
        self.last = Stamp(0, 0, node)  # the greatest stamp made or observed so far

    def tick(self, now_ms: int) -> Stamp:
        """A stamp for a local event: greater than every stamp made or observed before."""
        return self._advance(max(self.last.wall_ms, now_ms), 0)

    def recv(self, remote: Stamp, now_ms: int) -> Stamp:
        """A stamp for receiving `remote`: greater than it and than every earlier stamp.

        Raises `ClockDriftError` if `remote` is more than `max_drift_ms` ahead of `now_ms`.
        """
        ahead = remote.wall_ms - now_ms
        if ahead > self.max_drift_ms:
            raise ClockDriftError(
                f"remote stamp is {ahead} ms ahead of the local clock; "
                f"the drift bound is {self.max_drift_ms} ms"
            )
        wall = max(self.last.wall_ms, remote.wall_ms, now_ms)
        floor = remote.counter + 1 if wall == remote.wall_ms else 0
        return self._advance(wall, floor)

    def observe(self, remote: Stamp) -> None:
        """Move the clock past `remote` without a drift check (it is already history)."""
        if (remote.wall_ms, remote.counter) > (self.last.wall_ms, self.last.counter):
            self.last = Stamp(remote.wall_ms, remote.counter, self.node)

    def _advance(self, wall: int, counter_floor: int) -> Stamp:
        """Make the next stamp at `wall` with a counter of at least `counter_floor`."""
        counter = counter_floor
        if wall == self.last.wall_ms:
            counter = max(counter, self.last.counter + 1)
        if counter > _MAX_COUNTER:  # 65,536 events in one ms: borrow the next millisecond
            wall, counter = wall + 1, 0
        if wall > _MAX_WALL:
            raise CrdtError(f"wall clock {wall} ms does not fit in a stamp")
        self.last = Stamp(wall, counter, self.node)
        return self.last


def clock_skew_ms(before_ms: int, reference_ms: int, after_ms: int) -> int:
    """How far a local clock surely is from a reference clock, from one reading of the
    reference taken between two local readings (`before_ms` <= `after_ms`).

    Positive: the local clock is ahead by at least that much; negative: behind by at least
    that much; 0 when the readings cannot tell them apart (the reference fell within the local
    interval). The round trip only ever makes the answer smaller, never wrong.
    """
    if reference_ms < before_ms:
        return before_ms - reference_ms
    if reference_ms > after_ms:
        return after_ms - reference_ms
    return 0
