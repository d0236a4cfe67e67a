"""The Redis Streams bus, for a standalone Redis or a Redis Cluster. The only module that
imports `redis`.

Layout (see docs/architecture.md). A room belongs to one of `SHARDS` shards (crc32 of its name);
every key of a shard carries the hash tag ``{rs<shard>}``, so in a Cluster a room's stream, state
and channel share a slot and one Lua script can merge a delta into the state, append the event and
publish it atomically:

    rs:{rs<k>}:log:<room>      stream of the room's events (MAXLEN ~ `STREAM_MAXLEN`): history
    rs:{rs<k>}:state:<room>    hash: the merged room state (node/redis_scripts.py)
    rs:{rs<k>}:ch:<room>       shard channel (SPUBLISH) of the room's events: live delivery
    rs:{rs<k>}:epoch           shard k's epoch: changes when its Redis loses its data
    rs:lease:<node id>         the node's lease: its incarnation, with a TTL (standalone Redis)
    rs:{rs<k>}:lease:<node id> in a Cluster, a copy per shard: a dead master hides only the
                               copies of its own shards, whose rooms it also holds

Writing: events go out as ``EVALSHA`` of the PUBLISH script (PUBLISH_MESSAGE for an event that
changes no state, such as an app message) on one pipelining connection per Redis server
(node/resp.py), so publishes made together share one write and one read, and each
costs one round trip at most. Once a node holds a lease through the bus, each script stores its
event only if the event's incarnation still holds the node's lease (its copy in the room's
shard, in a Cluster): a fencing token checked by the store itself.

Reading: a node subscribes (``SSUBSCRIBE``, one connection per Redis server) to the channels of
the rooms it hosts, so it gets exactly their events, pushed, whatever the number of rooms —
Redis does the fan-out to nodes. Each message carries its stream id and the id before it; the
stream is the source of truth. Subscribing, a lost subscriber connection or a message that does
not follow the last one seen make the room *catch up*: read the stream after the last id seen
(``XRANGE``) while holding back its messages, then let them through. So nothing published after
the snapshot a room was opened from is missed, even if pub/sub drops messages.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from roomstate.bus import Bus, EventHandler, LeaseState, Snapshot
from roomstate.bus.redis.resp import RespConnection, RespConnectionError, RespError
from roomstate.bus.redis.scripts import PUBLISH, PUBLISH_MESSAGE, RENEW_LEASE, SNAPSHOT
from roomstate.crdt import CodecError, Entry, LWWRegister, Participant, RoomState, Stamp
from roomstate.errors import BusError, FencedError
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent, decode_event, encode_event

__all__ = ["RedisBus"]

log = logging.getLogger(__name__)

SHARDS = 16  # shards (hash tags) rooms are spread over (Cluster slots; a lease copy each)
STREAM_MAXLEN = 1000  # approximate events kept per room stream
COMMAND_TIMEOUT_S = 2.0  # a command that Redis has not answered by then fails
# A client's write is acknowledged or refused within 2 s: its publish (connecting included) gets
# an error once WRITE_TIMEOUT_S have passed without Redis's answer.
WRITE_TIMEOUT_S = 1.5
CONNECT_TIMEOUT_S = 1.0  # for the hot path's connections
CATCH_UP_COUNT = 1000  # entries per XRANGE when a room catches up
CATCH_UP_RETRY_S = 0.5  # longest wait between two attempts of a room to catch up
REFRESH_INTERVAL_S = 0.5  # the Cluster's slot map is read again at most this often
# A subscription connection gets nothing but pushes, so a server gone without a word (its host
# powered off, a black hole) would never be noticed: each one is sent a PING this often, and
# dropped, its rooms catching up elsewhere, if the answer does not come in COMMAND_TIMEOUT_S.
SUBSCRIBER_PING_S = 5.0
# A caller waits at most this long for a refresh of the slot map (it goes on in the background):
# the seeds' connect timeouts add up when the whole Cluster is out of reach. A write waits as
# long as its own deadline allows.
REFRESH_WAIT_S = 0.5
RESYNC_ORIGIN = "redis/resync"  # origin of the snapshot delta a room gets after a gap
# What redis-py raises when Redis cannot be reached or refuses: its errors, and, from the Cluster
# client, RedisClusterException (not a RedisError) when no node of the Cluster answers.
REDIS_ERRORS = (RedisError, RedisClusterException)
# Error replies after which a command was not run and may be sent again (after a Cluster
# failover or resharding: to the new owner of the slot).
RETRY_AFTER = frozenset({"NOSCRIPT", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})


def shard_of(room: str) -> int:
    return zlib.crc32(room.encode()) % SHARDS


def _tag(shard: int) -> str:
    return "{rs" + str(shard) + "}"


def log_key(room: str) -> str:
    return f"rs:{_tag(shard_of(room))}:log:{room}"


def state_key(room: str) -> str:
    return f"rs:{_tag(shard_of(room))}:state:{room}"


def channel(room: str) -> str:
    return f"rs:{_tag(shard_of(room))}:ch:{room}"


@functools.lru_cache(maxsize=4096)
def publish_keys(room: str) -> tuple[int, tuple[str, str, str]]:
    """The room's shard, and the keys of its log, state and channel: what every publish needs
    (remembered for the 4,096 rooms used last: made anew, about 0.5 µs a publish)."""
    return shard_of(room), (log_key(room), state_key(room), channel(room))


def lease_key(node_id: str, group: int | None) -> str:
    """A node's lease (standalone Redis), or its copy in a Cluster's lease group (a shard)."""
    return f"rs:lease:{node_id}" if group is None else f"rs:{_tag(group)}:lease:{node_id}"


@functools.lru_cache(maxsize=1024)
def fence(origin: str, group: int | None) -> tuple[str, str]:
    """The lease key and the incarnation that a write of `origin` ("<node id>/<incarnation>",
    maybe followed by "/unhosted") is stored under: the PUBLISH scripts refuse it unless that
    lease still holds that incarnation."""
    node_id, _, rest = origin.partition("/")
    incarnation = rest.partition("/")[0]
    if not incarnation:
        raise ValueError(f"an origin without an incarnation cannot be fenced: {origin!r}")
    return lease_key(node_id, group), incarnation


def epoch_key(shard: int) -> str:
    """A shard's epoch: a random value that changes when that shard's Redis loses its data."""
    return f"rs:{_tag(shard)}:epoch"


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def delta_ops(delta: RoomState) -> list[str]:
    """The PUBLISH script's arguments for a delta: kind, id, stamp, payload per op."""
    ops: list[str] = []
    for sid in delta.removed:
        ops += ["x", sid, "", ""]
    if delta.session_data.epoch is not None:
        ops += ["e", "", delta.session_data.epoch.encode(), ""]
    for key, entry in delta.session_data.entries.items():
        if entry.deleted:
            ops += ["d", key, entry.stamp.encode(), "d"]
        else:
            ops += ["m", key, entry.stamp.encode(), "v" + _canonical(entry.value)]
    for sid, p in delta.participants.items():
        for kind, register in (("i", p.info), ("l", p.location), ("u", p.user_data)):
            if register is not None:
                ops += [kind, sid, register.stamp.encode(), _canonical(register.value)]
    return ops


def state_from_hash(fields: dict[str, str]) -> RoomState:
    """The RoomState stored in a room's state hash (the inverse of what PUBLISH stores)."""
    state = RoomState()
    for field, stored in fields.items():
        kind, _, rest = field.partition(":")
        if kind == "x":
            state.removed.add(rest)
            continue
        if kind == "e":
            state.session_data.epoch = Stamp.decode(stored)
            continue
        if kind not in ("p", "m"):
            continue  # "n": the presence count; "l": the last event's id
        stamp_text, _, payload = stored.partition(" ")
        stamp = Stamp.decode(stamp_text)
        if kind == "m":
            if payload == "d":
                state.session_data.entries[rest] = Entry(stamp, deleted=True)
            else:
                state.session_data.entries[rest] = Entry(stamp, orjson.loads(payload[1:]))
            continue
        sid, _, register = rest.rpartition(":")
        participant = state.participants.setdefault(sid, Participant())
        setattr(
            participant,
            {"i": "info", "l": "location", "u": "user_data"}[register],
            LWWRegister(orjson.loads(payload), stamp),
        )
    return state


class _Script(NamedTuple):
    source: str
    sha: str
    numkeys: int


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback for a call whose outcome nobody awaits (no "never retrieved" warning)."""
    if not future.cancelled():
        future.exception()


class _PerServer:
    """One connection per Redis server, opened once however many callers wait for it."""

    def __init__(self, open_: Callable[[tuple[str, int]], Awaitable[RespConnection]]) -> None:
        self._open = open_
        self.conns: dict[tuple[str, int], RespConnection] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[RespConnection]] = {}

    async def get(self, address: tuple[str, int]) -> RespConnection:
        conn = self.conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.ensure_future(self._open(address))
            self._opening[address] = opening
            opening.add_done_callback(lambda _: self._opening.pop(address, None))
        conn = await asyncio.shield(opening)
        self.conns[address] = conn
        return conn


class RedisBus(Bus):
    shared = True  # other nodes share the store

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = self._connect(COMMAND_TIMEOUT_S)  # snapshots, leases, Cluster topology
        self.cluster = isinstance(self.client, RedisCluster)
        self._publish = _Script(PUBLISH, self.client.register_script(PUBLISH).sha, 4)
        self._publish_message = _Script(
            PUBLISH_MESSAGE, self.client.register_script(PUBLISH_MESSAGE).sha, 4
        )
        # Whether this bus's writes are fenced: set once a node takes a lease through it.
        self._fenced_writes = False
        self._snapshot = self.client.register_script(SNAPSHOT)
        self._renew = _Script(RENEW_LEASE, self.client.register_script(RENEW_LEASE).sha, 1)
        # The hot path: one pipelining connection per Redis server for publishing.
        self._writers = _PerServer(self._open)
        self._slots = [key_slot(_tag(shard).encode()) for shard in range(SHARDS)]
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = -math.inf
        self._own_prefix = b""  # set by `start_reading`
        self._handlers: dict[str, list[EventHandler]] = {}
        self._positions: dict[str, str] = {}  # room -> last stream id read
        # Subscribing: one connection per Redis server; the rooms subscribed on each.
        self._subscribers = _PerServer(self._open_subscriber)
        self._subscribed: dict[str, RespConnection] = {}  # room -> where it is subscribed
        # Rooms catching up: their messages are held back meanwhile (id, previous id, event).
        self._held: dict[str, list[tuple[str, str, bytes]]] = {}
        self._syncs: dict[str, asyncio.Task[None]] = {}
        self._ready = False
        self._closing = False
        self._pinger: asyncio.TimerHandle | None = None
        self._epochs: dict[int, str] = {}  # shard -> its epoch key's value when last seen
        self._gaps: set[str] = set()  # rooms whose stream lacked events: reported as lost
        # Room -> the newest state write this node stored there, until the room's chain of
        # events reaches it: a chain that goes past it without it shows Redis lost it.
        self._stored: dict[str, tuple[int, int]] = {}
        # Lease group -> when the last renewal that found the lease held there was sent.
        self._lease_ok: dict[int | None, float] = {}
        self._grace_ms = int(settings.room_grace_s * 1000)

    def _connect(self, timeout: float) -> aioredis.Redis | RedisCluster:
        settings = self.settings
        if settings.redis_cluster:
            seeds = []
            for seed in settings.redis_cluster.split(","):
                host, _, port = seed.strip().rpartition(":")
                seeds.append(ClusterNode(host, int(port)))
            return RedisCluster(
                startup_nodes=seeds,
                socket_timeout=timeout,
                socket_connect_timeout=COMMAND_TIMEOUT_S,
            )
        assert settings.redis is not None
        return aioredis.Redis.from_url(
            settings.redis, socket_timeout=timeout, socket_connect_timeout=COMMAND_TIMEOUT_S
        )

    # -- lifecycle --

    async def start(self) -> None:
        try:
            await cast(Awaitable[Any], self.client.ping())
            if isinstance(self.client, RedisCluster):
                await self.client.initialize()  # the slot map the hot path routes by
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot reach Redis: {exc}") from exc
        self._ready = True

    def start_reading(self, origin: str) -> None:
        """Deliver events from now on; `origin` marks this node's own events."""
        # Events this node published start with these bytes: they are skipped undecoded.
        self._own_prefix = b'{"o":' + orjson.dumps(origin)
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        self._pinger = asyncio.get_running_loop().call_later(
            SUBSCRIBER_PING_S, self._ping_subscribers
        )

    def _ping_subscribers(self) -> None:
        for conn in list(self._subscribers.conns.values()):
            if not conn.closed:  # no answer in time: the connection fails, its rooms catch up
                conn.call("PING", timeout=COMMAND_TIMEOUT_S).add_done_callback(_retrieved)
        self._schedule_ping()

    async def close(self) -> None:
        self._closing = True
        if self._pinger is not None:
            self._pinger.cancel()
        syncs = list(self._syncs.values())
        for task in syncs:
            task.cancel()
        for conn in [*self._subscribers.conns.values(), *self._writers.conns.values()]:
            conn.close()
        await asyncio.gather(*syncs, return_exceptions=True)
        await self.client.aclose()

    @property
    def ready(self) -> bool:
        return self._ready

    # -- connections of the hot path --

    def _address(self, shard: int | None) -> tuple[str, int]:
        """The Redis server that holds `shard` (for a standalone Redis: the one server)."""
        if shard is None or not isinstance(self.client, RedisCluster):
            return ("", 0)
        node = self.client.nodes_manager.get_node_from_slot(self._slots[shard])
        return (node.host, int(node.port))

    async def _open(self, address: tuple[str, int]) -> RespConnection:
        try:
            if address == ("", 0):
                assert self.settings.redis is not None
                return await RespConnection.open_url(self.settings.redis, timeout=CONNECT_TIMEOUT_S)
            return await RespConnection.open(*address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, RespError) as exc:
            raise BusError(f"cannot connect to Redis at {address}: {exc}") from exc

    async def _writer(self, shard: int) -> RespConnection:
        """The publishing connection to `shard`'s server."""
        return await self._writers.get(self._address(shard if self.cluster else None))

    async def _refresh_topology(self, wait: float = REFRESH_WAIT_S) -> None:
        """Learn the Cluster's slot map again (after MOVED, a failover, a lost connection),
        waiting for it at most `wait` s (it goes on in the background)."""
        if not isinstance(self.client, RedisCluster):
            return
        now = time.monotonic()
        if self._refreshing is None and now - self._refreshed_at < REFRESH_INTERVAL_S:
            return  # a failed master makes every call fail for a while: ask at a bounded rate
        if self._refreshing is None:
            self._refreshed_at = now
            self._refreshing = asyncio.ensure_future(self.client.nodes_manager.initialize())
            self._refreshing.add_done_callback(self._refreshed)
        try:
            await asyncio.wait_for(asyncio.shield(self._refreshing), wait)
        except TimeoutError:
            log.warning("the Cluster's slot map is still being read; going on without it")
        except (*REDIS_ERRORS, OSError) as exc:
            log.warning("cannot refresh the Cluster's slot map: %s", exc)

    def _refreshed(self, future: asyncio.Future[Any]) -> None:
        self._refreshing = None
        if not future.cancelled() and future.exception() is not None:  # (retrieved: no warning)
            log.debug("a refresh of the Cluster's slot map failed: %s", future.exception())

    # -- the Bus interface --

    async def publish(
        self, room: str, event: BusEvent, only_if_at: tuple[str, Any] | None = None
    ) -> str | None:
        ops = delta_ops(event.delta) if event.delta is not None else []
        if only_if_at is not None:
            ops += ["c", only_if_at[0], "", _canonical(only_if_at[1])]
        shard, keys = publish_keys(room)
        if self._fenced_writes:  # stored only while the event's incarnation holds its lease
            lease, incarnation = fence(event.origin, self.lease_group(room))
        else:
            lease, incarnation = keys[1], ""
        try:
            result = await self._evalsha(
                shard,
                self._publish if ops else self._publish_message,  # no state change: fewer calls
                (*keys, lease, encode_event(event), STREAM_MAXLEN, self._grace_ms, incarnation,
                 *ops),
            )  # fmt: skip
        except FencedError:
            raise  # Redis answered: it is reachable
        except BusError:
            self._ready = False
            raise
        self._ready = True
        if result is None:
            return None
        position = str(result.decode())
        if ops and room in self._positions:
            self._stored_write(room, position)
        return position

    def _stored_write(self, room: str, position: str) -> None:
        """A state write this node stored at `position` (an AOF or a replica loses a suffix of
        the stream: the newest such write is the one to look for)."""
        stored = _stream_id(position)
        if stored > max(self._stored.get(room, (0, 0)), _stream_id(self._positions[room])):
            self._stored[room] = stored

    def _advance(self, room: str, position: str) -> None:
        """Make `position` the room's, the event after the last one read."""
        stored = self._stored.get(room)
        if stored is not None:
            before, after = _stream_id(self._positions[room]), _stream_id(position)
            if before < stored < after:  # the chain went past a write this node stored
                log.warning("room %s: the stream lacks a write this node stored", room)
                self._gaps.add(room)  # reported by lost_rooms: the node merges it back
            if after >= stored:
                del self._stored[room]
        self._positions[room] = position

    async def _evalsha(self, shard: int, script: _Script, args: tuple[Any, ...]) -> Any:
        """Run `script` with `args` (its keys, then its arguments) on the shard's server over
        the hot path's connection. An error reply that means "not run" (script not loaded,
        slot moved) is retried once."""
        # time.monotonic, not the loop's clock: asyncio.get_running_loop costs a getpid system
        # call, once per message here
        deadline = time.monotonic() + WRITE_TIMEOUT_S

        def left() -> float:  # of the write's time: for the call, or a slot-map refresh
            return max(0.05, deadline - time.monotonic())

        for attempt in (1, 2):
            try:
                conn = await self._writer(shard)
            except BusError:  # a failed master: its replica may own it now
                await self._refresh_topology(left())
                raise
            timeout = left()
            try:
                return await conn.call(
                    "EVALSHA", script.sha, script.numkeys, *args, timeout=timeout
                )
            except RespError as exc:
                if exc.prefix == "FENCED":
                    raise FencedError(f"Redis refused the write: {exc}") from exc
                if attempt == 2 or exc.prefix not in RETRY_AFTER:
                    raise BusError(f"Redis refused the write: {exc}") from exc
                if exc.prefix == "NOSCRIPT":
                    await self._load_script(conn, script.source)
                else:  # the retry goes where the new slot map says
                    await self._refresh_topology(left())
            except RespConnectionError as exc:
                # Unknown whether it was stored: no retry; the caller reports the failure and
                # the room is merged back whole once the bus is back.
                await self._refresh_topology(left())
                raise BusError(f"Redis lost the write: {exc}") from exc
        raise AssertionError("unreachable")

    async def _load_script(self, conn: RespConnection, source: str) -> None:
        try:
            await conn.call("SCRIPT", "LOAD", source, timeout=COMMAND_TIMEOUT_S)
        except (RespError, RespConnectionError) as exc:
            raise BusError(f"cannot load a script: {exc}") from exc

    async def snapshot(self, room: str) -> Snapshot:
        try:
            keys = [log_key(room), state_key(room), epoch_key(shard_of(room))]
            flat, position, epoch = await self._snapshot(keys=keys, args=[uuid.uuid4().hex])
        except REDIS_ERRORS as exc:
            self._ready = False
            raise BusError(f"cannot read the room from Redis: {exc}") from exc
        self._epochs.setdefault(shard_of(room), epoch.decode())  # lost_rooms compares with it
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
            entries: Any = await self.client.xrange(key, "-" if after == "0-0" else after, "+")
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
        return self._positions.get(room, "0-0")

    def subscribe(self, room: str, after: str, handler: EventHandler) -> None:
        self._handlers.setdefault(room, []).append(handler)
        if room not in self._positions:
            self._positions[room] = after
            self._catch_up_soon(room)

    def unsubscribe(self, room: str, handler: EventHandler) -> None:
        handlers = [h for h in self._handlers.get(room, ()) if h != handler]
        if handlers:
            self._handlers[room] = handlers
            return
        self._handlers.pop(room, None)
        self._positions.pop(room, None)
        self._stored.pop(room, None)
        self._held.pop(room, None)
        sync = self._syncs.pop(room, None)
        if sync is not None:
            sync.cancel()
        conn = self._subscribed.pop(room, None)
        if conn is not None:
            conn.send("SUNSUBSCRIBE", channel(room))

    # -- leases --

    def lease_group(self, room: str) -> int | None:
        return shard_of(room) if self.cluster else None

    def lease_confirmed_at(self, room: str) -> float:
        return self._lease_ok.get(self.lease_group(room), -math.inf)

    async def renew_lease(
        self, node_id: str, incarnation: str, ttl_ms: int, register: bool
    ) -> LeaseState:
        mode = "register" if register else "renew"
        self._fenced_writes = True
        groups: list[int | None] = list(range(SHARDS)) if self.cluster else [None]
        sent = time.monotonic()
        # Over the hot path's connections (one write per server): a dead master's copies fail
        # alone, without redis-py's cluster client rediscovering the cluster after each error.
        replies = await asyncio.gather(
            *(
                self._evalsha(
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
            self._ready = False
            failure = next(r for r in replies if isinstance(r, BaseException))
            raise BusError(f"cannot renew the lease: {failure}") from failure
        if len(answered) == len(groups):
            self._ready = True
        else:
            log.warning("lease renewed on %d of %d shards", len(answered), len(groups))
        for g, reply in answered:
            if reply == 1:
                self._lease_ok[g] = sent
        states = {reply for _, reply in answered}
        return "taken" if 0 in states else "missing" if -1 in states else "held"

    async def lost_rooms(self, rooms: list[str]) -> list[str]:
        """Rooms in shards whose epoch key changed or vanished (that shard's Redis lost its
        data: a restart without persistence), and rooms whose stream was found lacking events
        this node had seen (a failover to a replica that was behind, or a trim)."""
        shards = sorted({shard_of(room) for room in rooms})
        if not shards:
            self._gaps.clear()
            return []
        lost: set[int] = set()
        try:
            # One round trip for all shards (a Cluster pipeline: one per master).
            pipe = self.client.pipeline(transaction=False)
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
        gaps, self._gaps = self._gaps, set()
        if not lost and not gaps:
            return []  # the usual answer: no second pass over every room
        return [room for room in rooms if shard_of(room) in lost or room in gaps]

    async def live_incarnations(self, node_ids: list[str]) -> dict[str, set[str]]:
        """For each node, the incarnations holding a copy of its lease (empty: expired
        everywhere). In a Cluster a node is alive while any copy is: a master that takes longer
        than the lease TTL to fail over must not make the others remove a live node's
        participants (the node itself refuses writes to that master's rooms meanwhile)."""
        groups: list[int | None] = list(range(SHARDS)) if self.cluster else [None]

        async def read(group: int | None) -> Any:
            conn = await self._writer(group or 0)
            keys = [lease_key(node_id, group) for node_id in node_ids]
            return await conn.call("MGET", *keys, timeout=COMMAND_TIMEOUT_S)

        replies = await asyncio.gather(*(read(g) for g in groups), return_exceptions=True)
        answered = [reply for reply in replies if not isinstance(reply, BaseException)]
        if len(answered) < len(groups):
            await self._refresh_topology()
        if not answered:
            raise BusError(f"cannot read the leases: {replies[0]}")
        live: dict[str, set[str]] = {node_id: set() for node_id in node_ids}
        for values in answered:
            for node_id, value in zip(node_ids, values, strict=True):
                if value is not None:
                    live[node_id].add(value.decode())
        return live

    # -- reading --

    async def _subscriber(self, shard: int) -> RespConnection:
        """The connection subscribed to channels of `shard`'s server (opened if need be)."""
        return await self._subscribers.get(self._address(shard if self.cluster else None))

    async def _open_subscriber(self, address: tuple[str, int]) -> RespConnection:
        conn = await self._open(address)
        conn.on_push = self._on_push
        conn.on_close = lambda: self._on_subscriber_lost(conn)
        return conn

    def _on_subscriber_lost(self, conn: RespConnection) -> None:
        """Every room subscribed on `conn` catches up (and subscribes again) elsewhere."""
        if self._closing:
            return
        self._ready = False
        lost = [room for room, where in self._subscribed.items() if where is conn]
        if lost:
            log.warning("lost a Redis subscription connection; %d rooms catch up", len(lost))
        for room in lost:
            del self._subscribed[room]
            self._catch_up_soon(room)

    def _catch_up_soon(self, room: str) -> None:
        if room in self._syncs or room not in self._positions:
            return
        self._held.setdefault(room, [])
        self._syncs[room] = asyncio.get_running_loop().create_task(self._catch_up(room))

    async def _catch_up(self, room: str) -> None:
        """Subscribe to the room's channel if need be, read its stream after the last id seen,
        then deliver what was held back meanwhile. Retried until it works or the room goes."""
        backoff = 0.1
        try:
            while room in self._positions and not self._closing:
                try:
                    if room not in self._subscribed:
                        conn = await self._subscriber(shard_of(room))
                        try:
                            await conn.call("SSUBSCRIBE", channel(room), timeout=COMMAND_TIMEOUT_S)
                        except asyncio.CancelledError:  # the room went: Redis may have
                            conn.send("SUNSUBSCRIBE", channel(room))  # subscribed it anyway
                            raise
                        if room not in self._positions:  # unsubscribed meanwhile
                            conn.send("SUNSUBSCRIBE", channel(room))
                            return
                        if conn.closed:  # lost right after its reply: its rooms went before
                            continue
                        self._subscribed[room] = conn
                    await self._read_after(room)
                    if room in self._subscribed:
                        break
                    # The subscription was lost while the stream was read (its loss found this
                    # catch-up running, so it started none): subscribe again, read what came.
                except (BusError, RespError, RespConnectionError) as exc:
                    self._ready = False
                    # Warn once per outage (each hosted room retries), then quietly.
                    report = log.warning if backoff == 0.1 else log.debug
                    report("room %s: cannot catch up (%s); retrying", room, exc)
                    await asyncio.sleep(backoff)
                    # At most CATCH_UP_RETRY_S apart: a promoted replica is used soon after.
                    backoff = min(backoff * 2, CATCH_UP_RETRY_S)
                    await self._refresh_topology()
            self._ready = True
        finally:
            if self._syncs.get(room) is asyncio.current_task():
                del self._syncs[room]
                held = self._held.pop(room, [])
                for entry_id, _, raw in held:  # what came while catching up, in order
                    self._deliver(room, entry_id, raw)

    async def _read_after(self, room: str) -> None:
        """Deliver the room's stream entries after its position, oldest first. If the stream no
        longer holds that position, events this node may not have seen are gone: trimmed past
        it while this node was not reading, or lost by Redis (a failover to a replica that was
        behind keeps the shard's epoch but lacks the last events). The room is then brought up
        to date from a snapshot, and reported by `lost_rooms` so that its hosts merge their
        replicas back: the writes of the lost events are in them."""
        conn = await self._writer(shard_of(room))
        key = log_key(room)
        after = self._positions[room]
        start = "-" if after == "0-0" else after  # inclusive: is `after` still there?
        while room in self._positions:
            entries = await conn.call(
                "XRANGE", key, start, "+", "COUNT", CATCH_UP_COUNT, timeout=COMMAND_TIMEOUT_S
            )
            if start == after:
                if not entries or entries[0][0].decode() != after:
                    self._gaps.add(room)
                    await self._resync(room, after)
                    return
                entries = entries[1:]
            for entry_id, fields in entries:
                raw = fields[1] if len(fields) == 2 and fields[0] == b"e" else b""
                self._deliver(room, entry_id.decode(), raw)
            if len(entries) < CATCH_UP_COUNT - 1 or room not in self._positions:
                return
            start = "(" + self._positions[room]

    async def _resync(self, room: str, after: str) -> None:
        log.warning("room %s: the stream no longer holds %s (trimmed); catching up from a "
                    "snapshot", room, after)  # fmt: skip
        snapshot = await self.snapshot(room)
        if room not in self._positions:
            return
        self._positions[room] = snapshot.position
        self._stored.pop(room, None)  # (the room is reported lost: its replica goes back)
        # The whole stored state, as one delta: merging it is idempotent, and brings every
        # write of the missed events (app messages in the gap are gone: they are ephemeral).
        event = BusEvent(RESYNC_ORIGIN, int(time.time() * 1000), delta=snapshot.state)
        for handler in list(self._handlers.get(room, ())):
            handler(room, snapshot.position, event)

    def _on_push(self, kind: bytes, name: bytes, message: bytes) -> None:
        try:
            room = name.decode().split(":ch:", 1)[1]
            if room not in self._positions:
                return  # unsubscribed (or being unsubscribed)
            if kind == b"sunsubscribe":  # the server dropped the subscription: a slot moved
                if room in self._subscribed:
                    log.warning("room %s: Redis ended its subscription; subscribing again", room)
                    del self._subscribed[room]
                    self._catch_up_soon(room)
                return
            entry_id, prev, raw = message.split(b" ", 2)
            held = self._held.get(room)
            if held is not None:
                held.append((entry_id.decode(), prev.decode(), raw))
                return
            if prev.decode() != self._positions[room]:
                # Not the message after the last one seen: catch up from the stream.
                self._held[room] = [(entry_id.decode(), prev.decode(), raw)]
                self._catch_up_soon(room)
                return
            # The one after the last seen: newer by construction, no duplicate check needed.
            position = entry_id.decode()
            self._advance(room, position)
            self._hand_over(room, position, raw)
        except Exception:  # a handler's bug must not kill the subscription connection
            log.exception("cannot deliver a message of channel %r", name)

    def _deliver(self, room: str, entry_id: str, raw: bytes) -> None:
        position = self._positions.get(room)
        if position is None:
            return  # unsubscribed meanwhile
        if _stream_id(entry_id) <= _stream_id(position):
            return  # already delivered (caught up from the stream, or a duplicate)
        self._advance(room, entry_id)
        self._hand_over(room, entry_id, raw)

    def _hand_over(self, room: str, entry_id: str, raw: bytes) -> None:
        """Give the room's handlers the event at `entry_id` (now the room's position)."""
        if self._own_prefix and raw.startswith(self._own_prefix):
            return  # this node applied and delivered its own events when it made them
        try:
            event = decode_event(raw)
        except (CodecError, KeyError) as exc:
            log.error("room %s: skipping unreadable event %s: %s", room, entry_id, exc)
            return
        for handler in list(self._handlers.get(room, ())):
            handler(room, entry_id, event)


def _stream_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
