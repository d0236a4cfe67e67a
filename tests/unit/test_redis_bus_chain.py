"""The Redis bus's reading of a room's chain of events (node/redis_bus.py), fed pushes by
hand: a state write this node stored and got an answer for, that the chain then skips, was
lost by Redis (killed with the last second of its AOF unwritten, or a failover to a replica
that was behind) and must be reported, so that the node merges its replica back."""

from __future__ import annotations

from roomstate.bus.redis.bus import RedisBus, channel
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent, encode_event

ROOM = "chain"


def bus_at(position: str) -> tuple[RedisBus, list[str]]:
    """A bus (not connected: nothing here talks to Redis) hosting ROOM at `position`."""
    bus = RedisBus(Settings(redis="redis://127.0.0.1:1"))
    seen: list[str] = []
    bus._handlers[ROOM] = [lambda room, position, event: seen.append(position)]
    bus._positions[ROOM] = position
    bus._subscribed[ROOM] = None  # type: ignore[assignment]
    return bus, seen


def push(bus: RedisBus, entry_id: str, prev: str) -> None:
    raw = encode_event(BusEvent("other/1", 0))
    bus._on_push(b"smessage", channel(ROOM).encode(), f"{entry_id} {prev} ".encode() + raw)


def test_a_chain_that_skips_a_stored_write_reports_the_room_lost() -> None:
    # The node stored 200-0 (answered); its push never came before Redis was killed, and the
    # restarted Redis, its AOF short of that second, goes on from 100-0.
    bus, seen = bus_at("100-0")
    bus._stored_write(ROOM, "200-0")
    push(bus, "300-0", "100-0")
    assert seen == ["300-0"]
    assert ROOM in bus._gaps, "the write 200-0 is not in the stream any more"


def test_a_chain_that_holds_the_stored_write_reports_nothing() -> None:
    bus, seen = bus_at("100-0")
    bus._stored_write(ROOM, "200-0")
    push(bus, "150-0", "100-0")  # another node's, stored before ours
    push(bus, "200-0", "150-0")  # ours
    push(bus, "300-0", "200-0")
    assert seen == ["150-0", "200-0", "300-0"]
    assert bus._gaps == set()
