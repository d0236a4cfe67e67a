"""Log positions and participant locations: two small values every layer passes around. Sans-I/O.

A *position* names an event in a room's log. It is a string on the wire (clients echo it back as
``resumeAfter``) and in the buses: the Redis bus's positions are stream ids ``"<ms>-<n>"`` (the
store's clock in milliseconds, then a counter), the in-memory bus's are counters ``"<n>"``.
`position_key` orders the positions of one bus; `position_clock_ms` reads the store's clock out
of a position that carries one.

A *location* says where a participant's connection is: ``{"node": ID, "incarnation": ID}``, the
value of its location register in the room state.
"""

from __future__ import annotations

__all__ = ["location", "position_clock_ms", "position_key"]


def position_key(position: str | bytes) -> tuple[int, int]:
    """A key that orders the positions of one bus: ``"1700000000000-3"`` -> (1700000000000, 3),
    ``"42"`` -> (42, 0). Raises `ValueError` on anything else."""
    text = position.decode() if isinstance(position, bytes) else position
    first, _, second = text.partition("-")
    return int(first), int(second or 0)


def position_clock_ms(position: str | None) -> int | None:
    """The store's clock (ms) in a position, if it carries one: a Redis stream id does, an
    in-memory counter does not."""
    ms, sep, n = (position or "").partition("-")
    return int(ms) if sep and ms.isdigit() and n.isdigit() else None


def location(node_id: str, incarnation: str) -> dict[str, str]:
    """The location of a connection held by incarnation `incarnation` of node `node_id`."""
    return {"node": node_id, "incarnation": incarnation}
