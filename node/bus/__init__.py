"""How nodes share rooms: the `Bus` interface (the room log and membership) and its in-memory
implementation. The Redis implementation is `roomstate.bus.redis.RedisBus` (needs the `redis`
extra)."""

from roomstate.bus.base import Bus, EventHandler, LeaseState, Membership, RoomLog, Snapshot
from roomstate.bus.keeper import LeaseKeeper, LeaseRound
from roomstate.bus.memory import MemoryBus

__all__ = [
    "Bus",
    "EventHandler",
    "LeaseKeeper",
    "LeaseRound",
    "LeaseState",
    "Membership",
    "MemoryBus",
    "RoomLog",
    "Snapshot",
]
