"""The Redis bus's membership: node leases, and the rooms whose stored state Redis lost.

A node's lease (keys.py) holds its incarnation, with a TTL the node renews. In a Cluster there is
a copy per shard (a *lease group*), each on the master of that shard: a dead master hides only
the copies of its own rooms. Once a node holds a lease through the bus, the PUBLISH scripts store
an event only while its incarnation holds the lease copy of the room's shard (`fencing`).

Lost rooms: each shard has an epoch key, a random value set once; a Redis that lost its data (a
restart without persistence) has none, so a changed or new value shows the shard's rooms lost.
Rooms whose stream lacked events come from the feed (feed.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

from roomstate.bus import LeaseState
from roomstate.bus.redis.connections import COMMAND_TIMEOUT_S, REDIS_ERRORS, Connections
from roomstate.bus.redis.feed import Feed
from roomstate.bus.redis.keys import SHARDS, epoch_key, lease_key, shard_of
from roomstate.bus.redis.scripts import RENEW_LEASE
from roomstate.errors import BusError

__all__ = ["Leases"]

log = logging.getLogger(__name__)


class Leases:
    """Renews and reads node leases; tells which rooms' stored state was lost."""

    def __init__(self, conns: Connections, feed: Feed) -> None:
        self._conns = conns
        self._feed = feed  # its gaps are lost rooms too
        self._renew = conns.script(RENEW_LEASE, 1)
        # Whether writes are fenced: set once a node takes a lease through the bus.
        self.fencing = False
        self._epochs: dict[int, str] = {}  # shard -> its epoch key's value when last seen
        # Lease group -> when the last renewal that found the lease held there was sent.
        self._lease_ok: dict[int | None, float] = {}

    def _groups(self) -> list[int | None]:
        return list(range(SHARDS)) if self._conns.cluster else [None]

    def lease_group(self, room: str) -> int | None:
        return shard_of(room) if self._conns.cluster else None

    def lease_groups(self) -> list[int | None]:
        """Every group a copy of the lease is kept in."""
        return self._groups()

    def lease_confirmed_at(self, room: str) -> float:
        return self.confirmed_at(self.lease_group(room))

    def confirmed_at(self, group: int | None) -> float:
        """When the last renewal that found the lease held in `group` was sent (-inf: never)."""
        return self._lease_ok.get(group, -math.inf)

    async def renew_lease(
        self, node_id: str, incarnation: str, ttl_ms: int, register: bool
    ) -> LeaseState:
        mode = "register" if register else "renew"
        self.fencing = True
        groups = self._groups()
        sent = time.monotonic()
        # Over the hot path's connections (one write per server): a dead master's copies fail
        # alone, without redis-py's cluster client rediscovering the cluster after each error.
        replies = await asyncio.gather(
            *(
                self._conns.evalsha(
                    g or 0, self._renew, (lease_key(node_id, g), incarnation, ttl_ms, mode)
                )
                for g in groups
            ),
            return_exceptions=True,
        )
        answered = [
            (g, r) for g, r in zip(groups, replies, strict=True) if not isinstance(r, BaseException)
        ]
        if not answered:
            self._conns.ready = False
            failure = next(r for r in replies if isinstance(r, BaseException))
            raise BusError(f"cannot renew the lease: {failure}") from failure
        if len(answered) == len(groups):
            self._conns.ready = True
        else:
            log.warning("lease renewed on %d of %d shards", len(answered), len(groups))
        for g, reply in answered:
            if reply == 1:
                self._lease_ok[g] = sent
        states = {reply for _, reply in answered}
        return "taken" if 0 in states else "missing" if -1 in states else "held"

    def saw_epoch(self, shard: int, epoch: str) -> None:
        """A snapshot read `shard`'s epoch: the first value seen is the one `lost_rooms`
        compares with."""
        self._epochs.setdefault(shard, epoch)

    async def lost_rooms(self, rooms: list[str]) -> list[str]:
        """Rooms in shards whose epoch key changed or vanished (that shard's Redis lost its
        data: a restart without persistence), and rooms whose stream was found lacking events
        this node had seen (a failover to a replica that was behind, or a trim)."""
        shards = sorted({shard_of(room) for room in rooms})
        if not shards:
            self._feed.take_gaps()
            return []
        lost: set[int] = set()
        try:
            # One round trip for all shards (a Cluster pipeline: one per master).
            pipe = self._conns.client.pipeline(transaction=False)
            for shard in shards:
                pipe.set(epoch_key(shard), uuid.uuid4().hex, nx=True)
                pipe.get(epoch_key(shard))
            replies = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot check the shard epochs: {exc}") from exc
        for shard, value in zip(shards, replies[1::2], strict=True):
            current = value.decode() if isinstance(value, bytes) else str(value)
            known = self._epochs.get(shard)
            if known is not None and known != current:
                lost.add(shard)
            self._epochs[shard] = current
        gaps = self._feed.take_gaps()
        if not lost and not gaps:
            return []  # the usual answer: no second pass over every room
        return [room for room in rooms if shard_of(room) in lost or room in gaps]

    async def live_incarnations(self, node_ids: list[str]) -> dict[str, set[str]]:
        """For each node, the incarnations holding a copy of its lease (empty: expired
        everywhere). In a Cluster a node is alive while any copy is: a master that takes longer
        than the lease TTL to fail over must not make the others remove a live node's
        participants (the node itself refuses writes to that master's rooms meanwhile)."""
        groups = self._groups()

        async def read(group: int | None) -> Any:
            conn = await self._conns.writer(group or 0)
            keys = [lease_key(node_id, group) for node_id in node_ids]
            return await conn.call("MGET", *keys, timeout=COMMAND_TIMEOUT_S)

        replies = await asyncio.gather(*(read(g) for g in groups), return_exceptions=True)
        answered = [reply for reply in replies if not isinstance(reply, BaseException)]
        if len(answered) < len(groups):
            await self._conns.refresh_topology()
        if not answered:
            raise BusError(f"cannot read the leases: {replies[0]}")
        live: dict[str, set[str]] = {node_id: set() for node_id in node_ids}
        for values in answered:
            for node_id, value in zip(node_ids, values, strict=True):
                if value is not None:
                    live[node_id].add(value.decode())
        return live
