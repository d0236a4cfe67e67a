"""The Redis Streams bus, for a standalone Redis or a Redis Cluster. The only module that
imports `redis`.

Layout (see docs/architecture.md). A room belongs to one of `SHARDS` shards (crc32 of its name);
every key of a shard carries the hash tag ``{rs<shard>}``, so in a Cluster a room's stream and
state share a slot and one Lua script can merge a delta into the state and append the event
atomically:

    rs:{rs<k>}:log:<room>      stream of the room's events (MAXLEN ~ `STREAM_MAXLEN`)
    rs:{rs<k>}:state:<room>    hash: the merged room state (node/redis_scripts.py)
    rs:{rs<k>}:wake:<origin>   per-node wake-up stream of shard k
    rs:{rs<k>}:epoch           shard k's epoch: changes when its Redis loses its data
    rs:lease:<node id>         the node's lease: its incarnation, with a TTL

Reading: one task per shard holds one ``XREAD BLOCK`` over the node's rooms in that shard and its
wake-up stream; subscribing adds the room and appends to the wake-up stream so the read is
re-issued with it. So a node holds `SHARDS` blocking reads whatever its number of rooms, and reads
only the streams of the rooms it hosts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import zlib
from collections.abc import Awaitable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from crdt import CodecError, Entry, LWWRegister, Participant, RoomState, Stamp
from node.bus import Bus, EventHandler, LeaseState, Snapshot
from node.errors import BusError
from node.events import BusEvent, decode_event, encode_event
from node.redis_scripts import PUBLISH, RENEW_LEASE, SNAPSHOT
from node.settings import Settings

__all__ = ["RedisBus"]

log = logging.getLogger(__name__)

SHARDS = 16  # shards (hash tags) rooms are spread over: the number of blocking reads per node
STREAM_MAXLEN = 1000  # approximate events kept per room stream
BLOCK_MS = 5000  # longest a blocking read waits before it is re-issued
COMMAND_TIMEOUT_S = 2.0  # a write or read that Redis has not answered by then fails


def shard_of(room: str) -> int:
    return zlib.crc32(room.encode()) % SHARDS


def _tag(shard: int) -> str:
    return "{rs" + str(shard) + "}"


def log_key(room: str) -> str:
    return f"rs:{_tag(shard_of(room))}:log:{room}"


def state_key(room: str) -> str:
    return f"rs:{_tag(shard_of(room))}:state:{room}"


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
            continue  # "n": the presence count
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


class RedisBus(Bus):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = self._connect(COMMAND_TIMEOUT_S)  # writes, snapshots, leases
        self.reader = self._connect(BLOCK_MS / 1000 + COMMAND_TIMEOUT_S)  # blocking reads
        self._publish = self.client.register_script(PUBLISH)
        self._snapshot = self.client.register_script(SNAPSHOT)
        self._renew = self.client.register_script(RENEW_LEASE)
        self.origin = ""  # set by `start_reading`: names this node's wake-up streams
        self._own_prefix = b""  # set by `start_reading`
        self._handlers: dict[str, list[EventHandler]] = {}
        self._positions: dict[str, str] = {}  # room -> last stream id read
        self._readers: list[asyncio.Task[None]] = []
        self._ready = False
        self._closing = False
        self._epochs: dict[int, str] = {}  # shard -> its epoch key's value when last seen
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
            if isinstance(self.reader, RedisCluster):
                # Before the shard readers start at once: redis-py's cluster client loses
                # connections when many tasks make it discover the cluster concurrently.
                await self.reader.initialize()
        except RedisError as exc:
            raise BusError(f"cannot reach Redis: {exc}") from exc
        self._ready = True

    def start_reading(self, origin: str) -> None:
        """Start the shard readers; `origin` names this node's wake-up streams."""
        self.origin = origin.replace("/", "-")
        # Events this node published start with these bytes: they are skipped undecoded.
        self._own_prefix = b'{"o":' + orjson.dumps(origin)
        loop = asyncio.get_running_loop()
        self._readers = [loop.create_task(self._read_shard(k)) for k in range(SHARDS)]

    async def close(self) -> None:
        # redis-py may turn the cancellation of a blocked read into a connection error, so the
        # readers also stop on `_closing`, and closing the reader client ends reads in flight.
        self._closing = True
        for task in self._readers:
            task.cancel()
        await self.reader.aclose()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
        await self.client.aclose()

    @property
    def ready(self) -> bool:
        return self._ready

    # -- the Bus interface --

    async def publish(
        self, room: str, event: BusEvent, only_if_at: tuple[str, Any] | None = None
    ) -> str | None:
        ops = delta_ops(event.delta) if event.delta is not None else []
        if only_if_at is not None:
            ops += ["c", only_if_at[0], "", _canonical(only_if_at[1])]
        args: list[bytes | str | int] = [encode_event(event), STREAM_MAXLEN, self._grace_ms, *ops]
        try:
            result = await self._publish(keys=[log_key(room), state_key(room)], args=args)
        except RedisError as exc:
            self._ready = False
            raise BusError(f"Redis refused or lost the write: {exc}") from exc
        self._ready = True
        return None if result is None else result.decode()

    async def snapshot(self, room: str) -> Snapshot:
        try:
            keys = [log_key(room), state_key(room), epoch_key(shard_of(room))]
            flat, position, epoch = await self._snapshot(keys=keys, args=[uuid.uuid4().hex])
        except RedisError as exc:
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
            first: Any = await self.client.xrange(key, "-", "+", count=1)
            if after != "0-0" and (not first or _stream_id(first[0][0]) > _stream_id(after)):
                return None  # trimmed past `after`, or the stream is new (Redis lost it)
            entries: Any = await self.client.xrange(key, "(" + after, "+")
        except RedisError as exc:
            raise BusError(f"cannot read the room's stream: {exc}") from exc
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
            asyncio.get_running_loop().create_task(self._wake(shard_of(room)))

    def unsubscribe(self, room: str, handler: EventHandler) -> None:
        handlers = [h for h in self._handlers.get(room, ()) if h != handler]
        if handlers:
            self._handlers[room] = handlers
        else:
            self._handlers.pop(room, None)
            self._positions.pop(room, None)

    # -- leases --

    async def renew_lease(
        self, node_id: str, incarnation: str, ttl_ms: int, register: bool
    ) -> LeaseState:
        mode = "register" if register else "renew"
        try:
            result = await self._renew(
                keys=[f"rs:lease:{node_id}"], args=[incarnation, ttl_ms, mode]
            )
        except RedisError as exc:
            self._ready = False
            raise BusError(f"cannot renew the lease: {exc}") from exc
        self._ready = True
        return "held" if result == 1 else "taken" if result == 0 else "missing"

    async def lost_rooms(self, rooms: list[str]) -> list[str]:
        """Rooms in shards whose epoch key changed or vanished: that shard's Redis lost its
        data (a restart without persistence, or a failover to a replica that was behind)."""
        shards = sorted({shard_of(room) for room in rooms})
        lost: set[int] = set()
        try:
            for shard in shards:
                key = epoch_key(shard)
                fresh = uuid.uuid4().hex
                await self.client.set(key, fresh, nx=True)
                value = await self.client.get(key)
                current = value.decode() if isinstance(value, bytes) else str(value)
                known = self._epochs.get(shard)
                if known is not None and known != current:
                    lost.add(shard)
                self._epochs[shard] = current
        except RedisError as exc:
            raise BusError(f"cannot check the shard epochs: {exc}") from exc
        return [room for room in rooms if shard_of(room) in lost]

    async def live_incarnations(self, node_ids: list[str]) -> dict[str, str | None]:
        """The current incarnation of each node whose lease is alive (None: expired)."""
        keys = [f"rs:lease:{node_id}" for node_id in node_ids]
        if isinstance(self.client, RedisCluster):
            values = await self.client.mget_nonatomic(keys)
        else:
            values = await self.client.mget(keys)
        return {
            node_id: None if value is None else value.decode()
            for node_id, value in zip(node_ids, values, strict=True)
        }

    # -- reading --

    def _wake_key(self, shard: int) -> str:
        return f"rs:{_tag(shard)}:wake:{self.origin}"

    async def _wake(self, shard: int) -> None:
        """Make shard `shard`'s reader re-issue its read (its room set changed)."""
        key = self._wake_key(shard)
        try:
            await self.client.xadd(key, {"w": "1"}, maxlen=10, approximate=True)
            await self.client.pexpire(key, 60_000)
        except RedisError as exc:
            log.warning("cannot wake shard %d's reader: %s", shard, exc)

    async def _read_shard(self, shard: int) -> None:
        # From the start of this incarnation's wake-up stream, not "$": a wake-up added while
        # the read is being sent must still end the read.
        wake_key, wake_last = self._wake_key(shard), "0-0"
        backoff = 0.1
        while not self._closing:
            rooms = [r for r in self._positions if shard_of(r) == shard]
            streams: dict[Any, Any] = {wake_key: wake_last}
            streams.update((log_key(room), self._positions[room]) for room in rooms)
            try:
                reply = await self.reader.xread(streams, block=BLOCK_MS, count=500)
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                if self._closing:
                    return
                self._ready = False
                log.warning("shard %d read failed (%s); retrying in %.1f s", shard, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            for key, entries in _stream_entries(reply):
                if key == wake_key:
                    wake_last = entries[-1][0]
                    continue
                room = key.split(":log:", 1)[1]
                for entry_id, fields in entries:
                    self._deliver(room, entry_id, fields)

    def _deliver(self, room: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        position = self._positions.get(room)
        if position is None:
            return  # unsubscribed meanwhile
        if _stream_id(entry_id) <= _stream_id(position):
            return  # from a read issued before the room was (re)subscribed at a later position
        self._positions[room] = entry_id
        raw = fields.get(b"e", b"")
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


def _stream_entries(reply: Any) -> list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]]:
    """XREAD's reply (a list of [key, entries], or a dict with RESP3) with str keys and ids."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    result = []
    for key, entries in pairs:
        result.append((key.decode(), [(entry_id.decode(), fields) for entry_id, fields in entries]))
    return result
