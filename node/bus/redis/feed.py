"""Where each room the node reads stands in its log, and what an event means for it. Sans-I/O.

The reader (reader.py) gives the feed every event of a followed room, pushed on the room's
channel or read from its stream, and does what the answer (a `Step`) says: the feed does no I/O
and reads no clock, so its rules are tested by feeding it events by hand.

Per followed room it keeps:

- the room's *position*: the stream id of the last event handed over. A pushed message names
  the id before it, so the messages form a chain: one that does not follow the position shows
  that pub/sub dropped some, and the room *catches up* from the stream, its pushes held back
  meanwhile (`hold`, `release`). An event read at or before the position was handed over
  already.
- the newest state write this node stored there (`stored_write`), until the chain reaches it:
  a chain that goes past it without it shows that Redis lost it (killed before its AOF held it,
  or a failover to a replica that was behind).

A room whose stream lacked events (a lost stored write, or a catch-up that found its position
gone: `still_holds`) is a *gap*; `take_gaps` reports it once, so that its hosts merge their
replicas back (the lost writes are in them).
"""

from __future__ import annotations

import enum

from roomstate.wire.positions import position_key

__all__ = ["Feed", "Held", "Step"]

Held = tuple[str, bytes]  # an event held back while its room catches up: its id, its bytes


class Step(enum.Enum):
    """What to do with an event given to the feed."""

    DROP = "drop"  # the room is not followed, or the event was handed over already
    HOLD = "hold"  # the room is catching up: held back until `release`
    CATCH_UP = "catch up"  # not the event after the position: held back; the room catches up
    NEXT = "next"  # the event after the position, now the room's: hand it over
    # NEXT, and the chain went past a state write this node stored without it: Redis lost
    # that write (the room is a gap now)
    NEXT_PAST_WRITE = "next past a lost write"


class Feed:
    """The positions, held-back events, stored writes and gaps of the rooms a node reads."""

    def __init__(self) -> None:
        self._positions: dict[str, str] = {}  # room followed -> its position
        self._held: dict[str, list[Held]] = {}  # room catching up -> its pushes held back
        # Room -> the newest state write this node stored there (its position's key), until
        # the room's chain reaches it.
        self._stored: dict[str, tuple[int, int]] = {}
        self._gaps: set[str] = set()  # rooms whose stream lacked events, not yet reported

    # -- which rooms --

    def follow(self, room: str, after: str) -> bool:
        """Follow `room` from position `after`; False if it is followed already (its position
        stays: the caller catches a new room up)."""
        if room in self._positions:
            return False
        self._positions[room] = after
        return True

    def drop(self, room: str) -> None:
        """Stop following `room` (a gap found there is still reported)."""
        self._positions.pop(room, None)
        self._stored.pop(room, None)
        self._held.pop(room, None)

    def follows(self, room: str) -> bool:
        return room in self._positions

    def position(self, room: str) -> str | None:
        """The id of the last event of `room` handed over (None: not followed)."""
        return self._positions.get(room)

    # -- events --

    def push(self, room: str, entry_id: str, prev: str, raw: bytes) -> Step:
        """A message pushed on the room's channel: event `entry_id`, stored after `prev`."""
        position = self._positions.get(room)
        if position is None:
            return Step.DROP
        held = self._held.get(room)
        if held is not None:
            held.append((entry_id, raw))
            return Step.HOLD
        if prev != position:  # messages were missed: the stream has them
            self._held[room] = [(entry_id, raw)]
            return Step.CATCH_UP
        return self._advance(room, position, entry_id)  # newer by construction

    def read(self, room: str, entry_id: str) -> Step:
        """An event read from the room's stream, or released after a catch-up: DROP, NEXT or
        NEXT_PAST_WRITE."""
        position = self._positions.get(room)
        if position is None or position_key(entry_id) <= position_key(position):
            return Step.DROP  # caught up from the stream already, or a duplicate
        return self._advance(room, position, entry_id)

    def _advance(self, room: str, position: str, entry_id: str) -> Step:
        """Make `entry_id`, the event after `position` in the chain, the room's position."""
        self._positions[room] = entry_id
        stored = self._stored.get(room)
        if stored is None:
            return Step.NEXT
        after = position_key(entry_id)
        if after >= stored:
            del self._stored[room]
        if position_key(position) < stored < after:  # the chain went past it
            self._gaps.add(room)
            return Step.NEXT_PAST_WRITE
        return Step.NEXT

    def stored_write(self, room: str, position: str) -> None:
        """This node stored a state write in `room` at `position` (a lost suffix of the
        stream holds the newest ones: only the newest is looked for)."""
        current = self._positions.get(room)
        if current is None:
            return
        stored = position_key(position)
        if stored > max(self._stored.get(room, (0, 0)), position_key(current)):
            self._stored[room] = stored

    # -- catching up --

    def hold(self, room: str) -> None:
        """`room` starts catching up: its pushes are held back until `release`."""
        self._held.setdefault(room, [])

    def catching_up(self, room: str) -> bool:
        return room in self._held

    def release(self, room: str) -> list[Held]:
        """`room` has caught up: the events held back meanwhile, in order (give each to
        `read`: those the catch-up read are dropped)."""
        return self._held.pop(room, [])

    def still_holds(self, room: str, after: str, first: str | None) -> bool:
        """Whether a read of the room's stream from `after` on, `after` included, whose first
        entry is `first`, shows the stream still holds `after`. If not, events this node may
        not have seen are gone (trimmed, or lost by Redis): the room is a gap, and must be
        brought up to date another way (`resync`)."""
        if first == after:
            return True
        self._gaps.add(room)
        return False

    def resync(self, room: str, position: str) -> bool:
        """`room` was brought up to date from a snapshot at `position`; False if it is no
        longer followed."""
        if room not in self._positions:
            return False
        self._positions[room] = position
        self._stored.pop(room, None)  # (the room is a gap: its replica goes back whole)
        return True

    # -- gaps --

    def take_gaps(self) -> set[str]:
        """The rooms found lacking events since the last call."""
        gaps, self._gaps = self._gaps, set()
        return gaps
