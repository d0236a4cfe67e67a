"""The Redis Streams bus, for a standalone Redis or a Redis Cluster: `RedisBus` wires its parts
and does the room log's writes and reads of stored data.

The package's parts, each owning one thing (docs/architecture.md has the whole picture):

    keys.py         the key layout: a room's shard, stream, state hash, channel; leases, epochs
    state_hash.py   the room state as the state hash stores it (pure)
    scripts.py      the Lua scripts that write (merge, append, publish atomically) and read
    resp.py         the pipelining connection of the hot path
    connections.py  redis-py's client, one such connection per server, the Cluster's slot map
    feed.py         each read room's position, held-back events, lost writes, gaps (sans-I/O)
    reader.py       subscriptions, pushed events, catch-up reads and resyncs (uses the feed)
    leases.py       node leases, and the rooms whose stored state Redis lost
    keeper.py       the lease's renewals, on a thread of their own (load cannot delay them)

Writing: events go out as ``EVALSHA`` of the PUBLISH script (PUBLISH_MESSAGE for an event that
changes no state, such as an app message) over the hot path's connections, and are pushed to
the nodes hosting the room (reader.py). Once a node holds a lease through the bus, each script
stores its event only if the event's incarnation still holds the node's lease (its copy in the
room's shard, in a Cluster): a fencing token checked by the store itself.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

from roomstate.bus import Bus, EventHandler, LeaseKeeper, LeaseState, Snapshot
from roomstate.bus.redis.connections import REDIS_ERRORS, Connections
from roomstate.bus.redis.feed import Feed
from roomstate.bus.redis.keeper import KeeperThread
from roomstate.bus.redis.keys import SHARDS, epoch_key, fence, publish_keys, shard_of, webhook_key
from roomstate.bus.redis.keys import channel as channel
from roomstate.bus.redis.keys import lease_key as lease_key
from roomstate.bus.redis.keys import log_key as log_key
from roomstate.bus.redis.keys import state_key as state_key
from roomstate.bus.redis.leases import Leases
from roomstate.bus.redis.reader import RESYNC_ORIGIN as RESYNC_ORIGIN
from roomstate.bus.redis.reader import Reader
from roomstate.bus.redis.scripts import PUBLISH, PUBLISH_MESSAGE, SNAPSHOT
from roomstate.bus.redis.state_hash import condition_ops, delta_ops, state_from_hash
from roomstate.bus.redis.webhooks import RedisWebhookQueue
from roomstate.crdt import CodecError
from roomstate.errors import BusError, FencedError
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent, decode_event, encode_event

__all__ = ["RedisBus"]

log = logging.getLogger(__name__)

STREAM_MAXLEN = 1000  # approximate events kept per room stream


class RedisBus(Bus):
    shared = True  # other nodes share the store

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conns = Connections(settings)
        self._feed = Feed()  # where each room read stands: the reader's, the leases' gaps
        self._reader = Reader(self._conns, self._feed, self.snapshot)
        self._leases = Leases(self._conns, self._feed)
        metrics = self.metrics
        self._keeper = KeeperThread(settings, self._conns, metrics)  # renews the lease once kept
        self._observe_publish = metrics.publish_latency.observe
        metrics.reconnects = lambda: (
            self._conns.reconnects + self._reader.reconnects + self._keeper.reconnects
        )
        metrics.lease_age = self._lease_age
        self._publish = self._conns.script(PUBLISH, 5)
        self._publish_message = self._conns.script(PUBLISH_MESSAGE, 5)
        self._snapshot = self._conns.client.register_script(SNAPSHOT)
        self._grace_ms = int(settings.room_grace_s * 1000)
        # removals kept (ms), and the drift margin past it (docs/crdt.md, "Forgetting removals")
        self.horizon = (int(settings.tombstone_keep_s * 1000), 2 * settings.max_drift_ms)
        self._hooks = [webhook_key(shard) for shard in range(SHARDS)]  # by shard
        self.webhook_queue = RedisWebhookQueue(self._conns)

    @property
    def reader(self) -> Reader:
        """The reading side (its subscriptions and catch-ups, for tests and diagnostics)."""
        return self._reader

    # -- lifecycle --

    async def start(self) -> None:
        await self._conns.start()

    def start_reading(self, origin: str) -> None:
        """Deliver events from now on; `origin` marks this node's own events."""
        self._reader.start(origin)

    async def close(self) -> None:
        await self._keeper.close()
        await self._reader.close()
        await self._conns.close()

    @property
    def ready(self) -> bool:
        return self._conns.ready

    # -- the room log --

    async def publish(
        self, room: str, event: BusEvent, only_if_at: tuple[str, Any] | None = None
    ) -> str | None:
        ops = delta_ops(event.delta, self.horizon) if event.delta is not None else []
        if only_if_at is not None:
            ops += condition_ops(*only_if_at)
        shard, keys = publish_keys(room)
        if self._leases.fencing:  # stored only while the event's incarnation holds its lease
            lease, incarnation = fence(event.origin, self._leases.lease_group(room))
        else:
            lease, incarnation = keys[1], ""
        # webhooks on: the script records what the event changed ("w" and the event's reason)
        hooks = "" if not self.webhooks else "w" + (event.reason or "")
        sent = time.perf_counter()
        try:
            result = await self._conns.evalsha(
                shard,
                self._publish if ops else self._publish_message,  # no state change: fewer calls
                (*keys, lease, self._hooks[shard], encode_event(event), STREAM_MAXLEN,
                 self._grace_ms, incarnation, hooks, *ops),
            )  # fmt: skip
        except FencedError:
            self._observe_publish(time.perf_counter() - sent)
            self.metrics.fenced_writes += 1
            raise  # Redis answered: it is reachable
        except BusError:
            self._conns.ready = False
            raise
        self._observe_publish(time.perf_counter() - sent)
        self._conns.ready = True
        if result is None:
            return None
        position = str(result.decode())
        if ops:
            self._feed.stored_write(room, position)  # (if this node reads the room)
        return position

    async def snapshot(self, room: str) -> Snapshot:
        try:
            keys = [log_key(room), state_key(room), epoch_key(shard_of(room))]
            flat, position, epoch = await self._snapshot(keys=keys, args=[uuid.uuid4().hex])
        except REDIS_ERRORS as exc:
            self._conns.ready = False
            raise BusError(f"cannot read the room from Redis: {exc}") from exc
        self._leases.saw_epoch(shard_of(room), epoch.decode())  # lost_rooms compares with it
        fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        try:
            state = state_from_hash(fields)
        except (CodecError, ValueError) as exc:
            raise BusError(f"the stored state of {room!r} is unreadable: {exc}") from exc
        return Snapshot(state, position.decode())

    async def read_range(self, room: str, after: str) -> list[tuple[str, BusEvent]] | None:
        key = log_key(room)
        try:
            # One read, from `after` itself: if `after` is no longer the first entry, the
            # stream was trimmed past it (or is new: Redis lost it), and no partial range is
            # returned. (Two reads could see a trim happen between them.)
            start = "-" if after == "0-0" else after
            entries: Any = await self._conns.client.xrange(key, start, "+")
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot read the room's stream: {exc}") from exc
        if after != "0-0":
            if not entries or entries[0][0].decode() != after:
                return None
            entries = entries[1:]
        events = []
        for entry_id, fields in entries:
            try:
                events.append((entry_id.decode(), decode_event(fields[b"e"])))
            except (CodecError, KeyError) as exc:
                log.error("room %s: skipping unreadable event %s: %s", room, entry_id, exc)
        return events

    def position(self, room: str) -> str:
        position = self._feed.position(room)
        return "0-0" if position is None else position

    def subscribe(self, room: str, after: str, handler: EventHandler) -> None:
        self._reader.subscribe(room, after, handler)

    def unsubscribe(self, room: str, handler: EventHandler) -> None:
        self._reader.unsubscribe(room, handler)

    # -- membership --

    def lease_group(self, room: str) -> int | None:
        return self._leases.lease_group(room)

    def lease_confirmed_at(self, room: str) -> float:
        # The registration is made here, the renewals on the keeper's thread.
        mine = self._leases.lease_confirmed_at(room)
        return max(mine, self._keeper.leases.lease_confirmed_at(room))

    def _lease_age(self) -> float | None:
        """Seconds since the lease's copy confirmed longest ago was last confirmed held (None:
        no lease taken through this bus yet, or none confirmed)."""
        if not self._leases.fencing:
            return None
        mine, kept = self._leases, self._keeper.leases  # registrations, renewals
        confirmed = min(
            max(mine.confirmed_at(group), kept.confirmed_at(group)) for group in mine.lease_groups()
        )
        return None if confirmed == -math.inf else time.monotonic() - confirmed

    def keep_lease(self, keeper: LeaseKeeper) -> None:
        self._keeper.start(keeper)

    def stop_keeping_lease(self) -> None:
        self._keeper.stop()

    async def renew_lease(
        self, node_id: str, incarnation: str, ttl_ms: int, register: bool
    ) -> LeaseState:
        return await self._leases.renew_lease(node_id, incarnation, ttl_ms, register)

    async def lost_rooms(self, rooms: list[str]) -> list[str]:
        return await self._leases.lost_rooms(rooms)

    async def live_incarnations(self, node_ids: list[str]) -> dict[str, set[str]]:
        return await self._leases.live_incarnations(node_ids)
