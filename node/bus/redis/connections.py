"""The Redis bus's connections: the redis-py client, one pipelining connection per server for
the hot path, the Cluster's slot map, and script calls over them.

redis-py is the client for snapshots, leases and the Cluster's topology; events go out as
``EVALSHA`` on one pipelining connection per Redis server (resp.py), so publishes made together
share one write and one read, and each costs one round trip at most. The reader and the leases
use those connections too. Whether Redis is reachable now (`ready`) is kept here: every part
that talks to Redis sets it. Where Redis is, TLS and credentials are access.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from roomstate.bus.redis.access import MASTER, Access, Address
from roomstate.bus.redis.keys import SHARDS, hash_tag
from roomstate.bus.redis.resp import RespConnection, RespConnectionError, RespError
from roomstate.errors import BusError, FencedError
from roomstate.settings import Settings

__all__ = ["COMMAND_TIMEOUT_S", "REDIS_ERRORS", "Connections", "PerServer", "Script"]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 2.0  # a command that Redis has not answered by then fails
# A client's write is acknowledged or refused within 2 s: its publish (connecting included) gets
# an error once WRITE_TIMEOUT_S have passed without Redis's answer.
WRITE_TIMEOUT_S = 1.5
CONNECT_TIMEOUT_S = 1.0  # for the hot path's connections
REFRESH_INTERVAL_S = 0.5  # the Cluster's slot map is read again at most this often
# A caller waits at most this long for a refresh of the slot map (it goes on in the background):
# the seeds' connect timeouts add up when the whole Cluster is out of reach. A write waits as
# long as its own deadline allows.
REFRESH_WAIT_S = 0.5
# Behind Sentinel, how often the Sentinels are asked whether the master changed: writes sent to
# a master that was just replaced are lost when it becomes a replica.
MASTER_CHECK_S = 0.5
# What redis-py raises when Redis cannot be reached or refuses: its errors, and, from the Cluster
# client, RedisClusterException (not a RedisError) when no node of the Cluster answers.
REDIS_ERRORS = (RedisError, RedisClusterException)
# Error replies after which a command was not run and may be sent again (after a Cluster
# failover or resharding: to the new owner of the slot; READONLY: a master demoted by Sentinel,
# to the new master).
RETRY_AFTER = frozenset({"NOSCRIPT", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY"})


class Script(NamedTuple):
    source: str
    sha: str
    numkeys: int


class PerServer:
    """One connection per Redis server, opened once however many callers wait for it."""

    def __init__(self, open_: Callable[[Address], Awaitable[RespConnection]]) -> None:
        self._open = open_
        self.conns: dict[Address, RespConnection] = {}
        self._opening: dict[Address, asyncio.Future[RespConnection]] = {}
        self.reopened = 0  # connections opened in place of a lost one (a metric)

    async def get(self, address: Address) -> RespConnection:
        conn = self.conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.ensure_future(self._open(address))
            self._opening[address] = opening
            opening.add_done_callback(lambda _: self._opening.pop(address, None))
        conn = await asyncio.shield(opening)
        previous = self.conns.get(address)
        if previous is not conn:  # (each caller that waited for it gets here)
            self.reopened += previous is not None
            self.conns[address] = conn
        return conn

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


class Connections:
    """How the bus reaches the Redis server of a shard, standalone or in a Cluster."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.access = Access(settings)  # where Redis is; TLS, credentials
        self.client = self.access.client(COMMAND_TIMEOUT_S, COMMAND_TIMEOUT_S)  # snapshots...
        self.cluster = isinstance(self.client, RedisCluster)
        self.ready = False  # whether Redis answered the last call (the bus takes writes)
        self._writers = PerServer(self.open)  # the hot path: publishing, reads, leases
        self._slots = [key_slot(hash_tag(shard).encode()) for shard in range(SHARDS)]
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = -math.inf
        self._opened: weakref.WeakSet[RespConnection] = weakref.WeakSet()  # to the master
        self._follower: asyncio.Task[None] | None = None  # behind Sentinel: `_follow_master`

    @property
    def reconnects(self) -> int:
        """Hot-path connections opened in place of a lost one."""
        return self._writers.reopened

    def script(self, source: str, numkeys: int) -> Script:
        """`source`, to run with `evalsha` (loaded on the server that first lacks it)."""
        return Script(source, self.client.register_script(source).sha, numkeys)

    async def start(self) -> None:
        if self.access.sentinels and self._follower is None:  # (the keeper goes on after a
            self._follower = asyncio.ensure_future(self._follow_master())  # failed start)
        try:
            await cast(Awaitable[Any], self.client.ping())
            if isinstance(self.client, RedisCluster):
                await self.client.initialize()  # the slot map the hot path routes by
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot reach Redis: {exc}") from exc
        self.ready = True

    async def _follow_master(self) -> None:
        """Behind Sentinel: once the Sentinels name another master, close every hot-path
        connection to the old one. Writes go to the new master from then on; subscribed rooms
        catch up there, and find the events the old master had and the new one lacks (their
        writes are merged back: `lost_rooms`)."""
        while True:
            await asyncio.sleep(MASTER_CHECK_S)
            try:
                master = await self.access.master_address(COMMAND_TIMEOUT_S)
            except (OSError, TimeoutError, RespError) as exc:
                log.debug("cannot ask the Sentinels for the master: %s", exc)
                continue
            if self.access.connected_master not in (None, master):
                log.warning("the Sentinels name a new master, %s:%d: reconnecting", *master)
                self.access.connected_master = None
                for conn in list(self._opened):
                    conn.close()

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        self._writers.close()
        await self.client.aclose()
        await self.access.close()

    # -- servers --

    def address(self, shard: int) -> Address:
        """The Redis server that holds `shard` (`MASTER` but in a Cluster)."""
        if not isinstance(self.client, RedisCluster):
            return MASTER
        node = self.client.nodes_manager.get_node_from_slot(self._slots[shard])
        return (node.host, int(node.port))

    async def open(self, address: Address) -> RespConnection:
        """A new connection to the server at `address`."""
        try:
            conn = await self.access.open(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, RespError) as exc:
            raise BusError(f"cannot connect to Redis at {address}: {exc}") from exc
        if address == MASTER:
            self._opened.add(conn)
        return conn

    async def writer(self, shard: int) -> RespConnection:
        """The hot path's connection to `shard`'s server."""
        return await self._writers.get(self.address(shard))

    async def refresh_topology(self, wait: float = REFRESH_WAIT_S) -> None:
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

    # -- scripts --

    async def evalsha(self, shard: int, script: Script, args: tuple[Any, ...]) -> Any:
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
                conn = await self.writer(shard)
            except BusError:  # a failed master: its replica may own it now
                await self.refresh_topology(left())
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
                elif exc.prefix == "READONLY":  # a replica now: the next connection asks anew
                    conn.close()
                else:  # the retry goes where the new slot map says
                    await self.refresh_topology(left())
            except RespConnectionError as exc:
                # Unknown whether it was stored: no retry; the caller reports the failure and
                # the room is merged back whole once the bus is back.
                await self.refresh_topology(left())
                raise BusError(f"Redis lost the write: {exc}") from exc
        raise AssertionError("unreachable")

    async def _load_script(self, conn: RespConnection, source: str) -> None:
        try:
            await conn.call("SCRIPT", "LOAD", source, timeout=COMMAND_TIMEOUT_S)
        except (RespError, RespConnectionError) as exc:
            raise BusError(f"cannot load a script: {exc}") from exc
