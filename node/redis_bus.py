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

Writing: events go out as ``EVALSHA`` of the PUBLISH script on one pipelining connection per
Redis server (node/resp.py), so publishes made together share one write and one read, and each
costs one round trip at most.

Reading: a standalone Redis gets one ``XREAD BLOCK`` over every hosted room and the node's wake-up
stream; a Cluster one per shard (a command's keys must share a slot), each to the shard's master.
Subscribing adds the room and appends to the wake-up stream so the read is re-issued with it. So
a node holds 1 (or `SHARDS`) blocking reads whatever its number of rooms, reads only the streams
of the rooms it hosts, and under load each read returns many events.
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
from redis.crc import key_slot
from redis.exceptions import RedisError

from crdt import CodecError, Entry, LWWRegister, Participant, RoomState, Stamp
from node.bus import Bus, EventHandler, LeaseState, Snapshot
from node.errors import BusError
from node.events import BusEvent, decode_event, encode_event
from node.redis_scripts import PUBLISH, RENEW_LEASE, SNAPSHOT
from node.resp import RespConnection, RespConnectionError, RespError
from node.settings import Settings

__all__ = ["RedisBus"]

log = logging.getLogger(__name__)

SHARDS = 16  # shards (hash tags) rooms are spread over: the number of blocking reads per node
STREAM_MAXLEN = 1000  # approximate events kept per room stream
BLOCK_MS = 5000  # longest a blocking read waits before it is re-issued
COMMAND_TIMEOUT_S = 2.0  # a write or read that Redis has not answered by then fails
READ_COUNT = 500  # most entries one read takes per stream
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
        self.client = self._connect(COMMAND_TIMEOUT_S)  # snapshots, leases, Cluster topology
        self.cluster = isinstance(self.client, RedisCluster)
        self._publish_sha = self.client.register_script(PUBLISH).sha
        self._snapshot = self.client.register_script(SNAPSHOT)
        self._renew = self.client.register_script(RENEW_LEASE)
        # The hot path: one pipelining connection per Redis server for publishing.
        self._writers: dict[tuple[str, int], RespConnection] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[RespConnection]] = {}
        self._slots = [key_slot(_tag(shard).encode()) for shard in range(SHARDS)]
        self._refreshing: asyncio.Future[None] | None = None
        self.origin = ""  # set by `start_reading`: names this node's wake-up streams
        self._own_prefix = b""  # set by `start_reading`
        self._handlers: dict[str, list[EventHandler]] = {}
        self._positions: dict[str, str] = {}  # room -> last stream id read
        self._log_keys: dict[str, str] = {}  # room -> its stream's key, for the reads
        self._readers: list[asyncio.Task[None]] = []
        self._reading: dict[int | None, RespConnection] = {}  # reader's shard -> its connection
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
            if isinstance(self.client, RedisCluster):
                await self.client.initialize()  # the slot map the hot path routes by
        except RedisError as exc:
            raise BusError(f"cannot reach Redis: {exc}") from exc
        self._ready = True

    def start_reading(self, origin: str) -> None:
        """Start the readers; `origin` names this node's wake-up streams."""
        self.origin = origin.replace("/", "-")
        # Events this node published start with these bytes: they are skipped undecoded.
        self._own_prefix = b'{"o":' + orjson.dumps(origin)
        loop = asyncio.get_running_loop()
        shards: list[int | None] = list(range(SHARDS)) if self.cluster else [None]
        self._readers = [loop.create_task(self._read(shard)) for shard in shards]

    async def close(self) -> None:
        self._closing = True
        for task in self._readers:
            task.cancel()
        for conn in [*self._reading.values(), *self._writers.values()]:
            conn.close()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
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
                return await RespConnection.open_url(self.settings.redis, timeout=COMMAND_TIMEOUT_S)
            return await RespConnection.open(*address, timeout=COMMAND_TIMEOUT_S)
        except (OSError, TimeoutError, RespError) as exc:
            raise BusError(f"cannot connect to Redis at {address}: {exc}") from exc

    async def _writer(self, shard: int) -> RespConnection:
        address = self._address(shard if self.cluster else None)
        conn = self._writers.get(address)
        if conn is not None and not conn.closed:
            return conn
        opening = self._opening.get(address)
        if opening is None:  # one connection attempt, however many publishers wait for it
            opening = asyncio.ensure_future(self._open(address))
            self._opening[address] = opening
            opening.add_done_callback(lambda _: self._opening.pop(address, None))
        conn = await asyncio.shield(opening)
        self._writers[address] = conn
        return conn

    async def _refresh_topology(self) -> None:
        """Learn the Cluster's slot map again (after MOVED, a failover, a lost connection)."""
        if not isinstance(self.client, RedisCluster):
            return
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self.client.nodes_manager.initialize())
            self._refreshing.add_done_callback(lambda _: setattr(self, "_refreshing", None))
        try:
            await asyncio.shield(self._refreshing)
        except (RedisError, OSError) as exc:
            log.warning("cannot refresh the Cluster's slot map: %s", exc)

    # -- the Bus interface --

    async def publish(
        self, room: str, event: BusEvent, only_if_at: tuple[str, Any] | None = None
    ) -> str | None:
        ops = delta_ops(event.delta) if event.delta is not None else []
        if only_if_at is not None:
            ops += ["c", only_if_at[0], "", _canonical(only_if_at[1])]
        shard = shard_of(room)
        tag = _tag(shard)
        keys = (f"rs:{tag}:log:{room}", f"rs:{tag}:state:{room}")
        try:
            result = await self._evalsha(
                shard, (*keys, encode_event(event), STREAM_MAXLEN, self._grace_ms, *ops)
            )
        except BusError:
            self._ready = False
            raise
        self._ready = True
        return None if result is None else result.decode()

    async def _evalsha(self, shard: int, args: tuple[Any, ...]) -> Any:
        """Run PUBLISH with `args` (its 2 keys, then its arguments) on the shard's server. An
        error reply that means "not run" (script not loaded, slot moved) is retried once."""
        for attempt in (1, 2):
            conn = await self._writer(shard)
            try:
                return await conn.call(
                    "EVALSHA", self._publish_sha, 2, *args, timeout=COMMAND_TIMEOUT_S
                )
            except RespError as exc:
                if attempt == 2 or exc.prefix not in RETRY_AFTER:
                    raise BusError(f"Redis refused the write: {exc}") from exc
                if exc.prefix == "NOSCRIPT":
                    await self._load_script(conn)
                else:
                    await self._refresh_topology()
            except RespConnectionError as exc:
                # Unknown whether it was stored: no retry; the caller reports the failure and
                # the room is merged back whole once the bus is back.
                await self._refresh_topology()
                raise BusError(f"Redis lost the write: {exc}") from exc
        raise AssertionError("unreachable")

    async def _load_script(self, conn: RespConnection) -> None:
        try:
            await conn.call("SCRIPT", "LOAD", PUBLISH, timeout=COMMAND_TIMEOUT_S)
        except (RespError, RespConnectionError) as exc:
            raise BusError(f"cannot load the publish script: {exc}") from exc

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
            self._log_keys[room] = log_key(room)
            asyncio.get_running_loop().create_task(self._wake(shard_of(room)))

    def unsubscribe(self, room: str, handler: EventHandler) -> None:
        handlers = [h for h in self._handlers.get(room, ()) if h != handler]
        if handlers:
            self._handlers[room] = handlers
        else:
            self._handlers.pop(room, None)
            self._positions.pop(room, None)
            self._log_keys.pop(room, None)

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

    def _wake_key(self, shard: int | None) -> str:
        return f"rs:{_tag(shard or 0)}:wake:{self.origin}"

    async def _wake(self, shard: int) -> None:
        """Make the reader of `shard` re-issue its read (its room set changed)."""
        key = self._wake_key(shard if self.cluster else None)
        try:
            await self.client.xadd(key, {"w": "1"}, maxlen=10, approximate=True)
            await self.client.pexpire(key, 60_000)
        except RedisError as exc:
            log.warning("cannot wake shard %d's reader: %s", shard, exc)

    async def _read(self, shard: int | None) -> None:
        """Read the streams of the hosted rooms (of `shard` only, in a Cluster) forever."""
        # From the start of this incarnation's wake-up stream, not "$": a wake-up added while
        # the read is being sent must still end the read.
        wake_key, wake_last = self._wake_key(shard), "0-0"
        wake_bytes = wake_key.encode()
        backoff = 0.1
        conn: RespConnection | None = None
        while not self._closing:
            if shard is None:
                rooms = list(self._log_keys)
            else:
                rooms = [r for r in self._log_keys if shard_of(r) == shard]
            keys = [wake_key, *(self._log_keys[r] for r in rooms)]
            ids = [wake_last, *(self._positions[r] for r in rooms)]
            try:
                if conn is None or conn.closed:
                    conn = await self._open(self._address(shard))
                    self._reading[shard] = conn
                reply = await conn.call(
                    "XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS", *keys, *ids,
                    timeout=BLOCK_MS / 1000 + COMMAND_TIMEOUT_S,
                )  # fmt: skip
            except (BusError, RespError, RespConnectionError) as exc:
                if conn is not None:
                    conn.close()
                if self._closing:
                    return
                self._ready = False
                log.warning("%s read failed (%s); retrying in %.1f s", _shard_name(shard), exc,
                            backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._refresh_topology()
                continue
            backoff = 0.1
            for key, entries in reply or ():
                if key == wake_bytes:
                    wake_last = entries[-1][0].decode()
                    continue
                room = key.decode().split(":log:", 1)[1]
                for entry_id, fields in entries:
                    self._deliver(room, entry_id.decode(), fields)

    def _deliver(self, room: str, entry_id: str, fields: list[bytes]) -> None:
        position = self._positions.get(room)
        if position is None:
            return  # unsubscribed meanwhile
        if _stream_id(entry_id) <= _stream_id(position):
            return  # from a read issued before the room was (re)subscribed at a later position
        self._positions[room] = entry_id
        # PUBLISH adds entries with the one field "e"
        raw = fields[1] if len(fields) == 2 and fields[0] == b"e" else None
        if raw is None:
            log.error("room %s: skipping event %s without an 'e' field", room, entry_id)
            return
        if self._own_prefix and raw.startswith(self._own_prefix):
            return  # this node applied and delivered its own events when it made them
        try:
            event = decode_event(raw)
        except (CodecError, KeyError) as exc:
            log.error("room %s: skipping unreadable event %s: %s", room, entry_id, exc)
            return
        for handler in list(self._handlers.get(room, ())):
            handler(room, entry_id, event)


def _shard_name(shard: int | None) -> str:
    return "the" if shard is None else f"shard {shard}'s"


def _stream_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
