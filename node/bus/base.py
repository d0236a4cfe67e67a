"""The bus: how nodes share room events. One interface in two parts, two implementations.

- `RoomLog`: per room, an ordered log of events and the merged state they add up to.
- `Membership`: which node incarnations are alive (leases), and which rooms the store lost.
- `Bus` is both, plus a lifecycle; `MemoryBus` (roomstate/bus/memory.py: one process, no Redis)
  and `RedisBus` (roomstate/bus/redis/: Redis Streams, standalone or Cluster) implement it.

A bus keeps, per room, an ordered log of events and the merged room state those events add up to.
A node that starts serving a room takes a `snapshot` (the stored state and the log position it
corresponds to, read together), then subscribes *after* that position: no gap, and an event that
is seen twice does no harm because CRDT merge is idempotent.

The stored state of a room with no participants left is dropped after `room_grace_s`.
Handlers are called on the event loop, in log order per room.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from roomstate.bus.keeper import LeaseKeeper
from roomstate.crdt import RoomState
from roomstate.metrics import BusMetrics
from roomstate.webhooks.queue import WebhookQueue
from roomstate.wire.events import BusEvent

__all__ = ["Bus", "EventHandler", "LeaseState", "Membership", "RoomLog", "Snapshot"]

LeaseState = Literal["held", "taken", "missing"]

EventHandler = Callable[[str, str, BusEvent], None]
"""Called with (room, position, event) for each event of a subscribed room."""


@dataclass
class Snapshot:
    state: RoomState  # the stored state of the room (empty if the room is new)
    position: str  # the log position the state includes everything up to


class RoomLog(abc.ABC):
    """Publish room events, subscribe to rooms, snapshot a room for a late joiner."""

    webhooks = False
    """Whether `publish` also records, in the same atomic step, the webhook events of what it
    stored (roomstate.webhooks: joins, leaves, a meeting's start) in `webhook_queue`."""

    @abc.abstractmethod
    async def publish(
        self, room: str, event: BusEvent, only_if_at: tuple[str, Any] | None = None
    ) -> str | None:
        """Store `event` in the room's log (merging its delta into the stored state); return
        its position. With `only_if_at` = (session id, location), store it only if the stored
        location of that participant is that one, else return None. Raises `BusError` if it
        could not be stored."""

    @abc.abstractmethod
    async def snapshot(self, room: str) -> Snapshot: ...

    @abc.abstractmethod
    async def read_range(self, room: str, after: str) -> list[tuple[str, BusEvent]] | None:
        """The room's events after position `after`, oldest first; None if the log no longer
        holds them all (trimmed, or the store lost its data): then nothing can be replayed."""

    @abc.abstractmethod
    def position(self, room: str) -> str:
        """The log position of the last event of a subscribed room handed to the handlers: a
        client attached now gets every later event live."""

    @abc.abstractmethod
    def subscribe(self, room: str, after: str, handler: EventHandler) -> None:
        """Deliver the room's events after position `after` to `handler`."""

    @abc.abstractmethod
    def unsubscribe(self, room: str, handler: EventHandler) -> None: ...

    @abc.abstractmethod
    def start_reading(self, origin: str) -> None:
        """Begin delivering events; `origin` names the node reading (for its wake-ups)."""


class Membership(abc.ABC):
    """Node leases (which incarnations are alive), and rooms whose stored state was lost."""

    shared = False
    """Whether other nodes share this store: then they can judge this node lost and remove its
    participants, so the node must fence itself when it cannot renew its lease."""

    @abc.abstractmethod
    async def renew_lease(
        self, node_id: str, incarnation: str, ttl_ms: int, register: bool
    ) -> LeaseState:
        """Register (`register`) or renew a node's lease: "held" (it is ours), "taken"
        (another incarnation holds it) or "missing" (expired, or the store lost it). A store
        of several servers (a Redis Cluster) keeps a copy per lease group (`lease_group`):
        "taken" if any copy is, else "missing" if any is; copies that cannot be reached now
        are left out (`BusError` only if none can)."""

    _keeper_task: asyncio.Task[None] | None = None

    def keep_lease(self, keeper: LeaseKeeper) -> None:
        """Run `keeper`'s renewal rounds until `stop_keeping_lease`, its reports called on the
        running loop. Here: as a task on that loop (a store nobody else shares cannot judge the
        node lost, so no load can cost it its lease); a shared store runs them where the
        node's own work cannot make them late."""
        self._keeper_task = asyncio.get_running_loop().create_task(keeper.run())

    def stop_keeping_lease(self) -> None:
        """No more renewals (the lease expires after its TTL unless the node registers again)."""
        if self._keeper_task is not None:
            self._keeper_task.cancel()
            self._keeper_task = None

    def lease_group(self, room: str) -> object:
        """Which copy of a node's lease the node renews for `room`'s store server (its
        admission check looks at that copy); one group for a single-server store."""
        return None

    @abc.abstractmethod
    def lease_confirmed_at(self, room: str) -> float:
        """Monotonic time at which the last renewal that found this node's lease held, in the
        group of `room`, was sent (-inf: never)."""

    @abc.abstractmethod
    async def lost_rooms(self, rooms: list[str]) -> list[str]:
        """Those of `rooms` whose stored state may have been lost since the last call (the
        store restarted without its data): their hosts merge their replicas back."""

    @abc.abstractmethod
    async def live_incarnations(self, node_ids: list[str]) -> dict[str, set[str]]:
        """For each node, the incarnations holding its lease (a store of several servers keeps
        a copy per lease group: any copy counts); an empty set where it has expired."""


class Bus(RoomLog, Membership):
    """What a node needs from the store it shares rooms through."""

    _metrics: BusMetrics | None = None
    webhook_queue: WebhookQueue  # the recorded webhook events, shared with the bus's other nodes

    @property
    def metrics(self) -> BusMetrics:
        """The bus's own health (publish latency, reconnects, the lease), for the node's
        /metrics; what an implementation does not know stays at zero."""
        if self._metrics is None:
            self._metrics = BusMetrics()
        return self._metrics

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the bus can take writes now."""
