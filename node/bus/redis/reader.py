"""The Redis bus's reading side: subscriptions, pushed events, catch-up reads and resyncs.

A node subscribes (``SSUBSCRIBE``, one connection per Redis server) to the channels of the
rooms it hosts, so it gets exactly their events, pushed, whatever the number of rooms — Redis
does the fan-out to nodes. Each message carries its stream id and the id before it; the stream
is the source of truth. Subscribing, a lost subscriber connection or a message that does not
follow the last one seen make the room *catch up*: read the stream after the last id seen
(``XRANGE``) while holding back its messages, then let them through. So nothing published after
the snapshot a room was opened from is missed, even if pub/sub drops messages.

What each event means for its room (its position, held back, a gap) is the feed's answer
(feed.py); this module does the I/O it calls for, and hands events over to the handlers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from roomstate.bus import EventHandler, Snapshot
from roomstate.bus.redis.connections import COMMAND_TIMEOUT_S, Connections, PerServer
from roomstate.bus.redis.feed import Feed, Step
from roomstate.bus.redis.keys import channel, channel_room, log_key, shard_of
from roomstate.bus.redis.resp import RespConnection, RespConnectionError, RespError
from roomstate.crdt import CodecError
from roomstate.errors import BusError
from roomstate.wire.events import BusEvent, decode_event

__all__ = ["RESYNC_ORIGIN", "Reader"]

log = logging.getLogger(__name__)

CATCH_UP_COUNT = 1000  # entries per XRANGE when a room catches up
CATCH_UP_RETRY_S = 0.5  # longest wait between two attempts of a room to catch up
# A subscription connection gets nothing but pushes, so a server gone without a word (its host
# powered off, a black hole) would never be noticed: each one is sent a PING this often, and
# dropped, its rooms catching up elsewhere, if the answer does not come in COMMAND_TIMEOUT_S.
SUBSCRIBER_PING_S = 5.0
RESYNC_ORIGIN = "redis/resync"  # origin of the snapshot delta a room gets after a gap


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback for a call whose outcome nobody awaits (no "never retrieved" warning)."""
    if not future.cancelled():
        future.exception()


class Reader:
    """Delivers the events of subscribed rooms to their handlers, in stream order, once."""

    def __init__(
        self,
        conns: Connections,
        feed: Feed,
        snapshot: Callable[[str], Awaitable[Snapshot]],
    ) -> None:
        self._conns = conns
        self._feed = feed
        self._snapshot = snapshot  # a room's stored state, for a resync
        self._own_prefix = b""  # set by `start`
        self._handlers: dict[str, list[EventHandler]] = {}
        # Subscribing: one connection per Redis server; the rooms subscribed on each.
        self._subscribers = PerServer(self._open_subscriber)
        self._subscribed: dict[str, RespConnection] = {}  # room -> where it is subscribed
        self._syncs: dict[str, asyncio.Task[None]] = {}  # room -> its catch-up
        self._closing = False
        self._pinger: asyncio.TimerHandle | None = None

    # -- lifecycle --

    def start(self, origin: str) -> None:
        """Deliver events from now on; `origin` marks this node's own events."""
        # Events this node published start with these bytes: they are skipped undecoded.
        self._own_prefix = b'{"o":' + orjson.dumps(origin)
        self._schedule_ping()

    async def close(self) -> None:
        self._closing = True
        if self._pinger is not None:
            self._pinger.cancel()
        syncs = list(self._syncs.values())
        for task in syncs:
            task.cancel()
        self._subscribers.close()
        await asyncio.gather(*syncs, return_exceptions=True)

    def _schedule_ping(self) -> None:
        self._pinger = asyncio.get_running_loop().call_later(
            SUBSCRIBER_PING_S, self._ping_subscribers
        )

    def _ping_subscribers(self) -> None:
        for conn in list(self._subscribers.conns.values()):
            if not conn.closed:  # no answer in time: the connection fails, its rooms catch up
                conn.call("PING", timeout=COMMAND_TIMEOUT_S).add_done_callback(_retrieved)
        self._schedule_ping()

    # -- rooms --

    def subscribe(self, room: str, after: str, handler: EventHandler) -> None:
        self._handlers.setdefault(room, []).append(handler)
        if self._feed.follow(room, after):
            self._catch_up_soon(room)

    def unsubscribe(self, room: str, handler: EventHandler) -> None:
        handlers = [h for h in self._handlers.get(room, ()) if h != handler]
        if handlers:
            self._handlers[room] = handlers
            return
        self._handlers.pop(room, None)
        self._feed.drop(room)
        sync = self._syncs.pop(room, None)
        if sync is not None:
            sync.cancel()
        conn = self._subscribed.pop(room, None)
        if conn is not None:
            conn.send("SUNSUBSCRIBE", channel(room))

    @property
    def reconnects(self) -> int:
        """Subscription connections opened in place of a lost one."""
        return self._subscribers.reopened

    def subscription(self, room: str) -> RespConnection | None:
        """The connection the room's channel is subscribed on (None: not subscribed now)."""
        return self._subscribed.get(room)

    def catching_up(self, room: str) -> bool:
        """Whether the room is catching up from its stream now."""
        return room in self._syncs

    # -- subscription connections --

    async def _open_subscriber(self, address: tuple[str, int]) -> RespConnection:
        conn = await self._conns.open(address)
        conn.on_push = self.on_push
        conn.on_close = lambda: self._on_subscriber_lost(conn)
        return conn

    def _on_subscriber_lost(self, conn: RespConnection) -> None:
        """Every room subscribed on `conn` catches up (and subscribes again) elsewhere."""
        if self._closing:
            return
        self._conns.ready = False
        lost = [room for room, where in self._subscribed.items() if where is conn]
        if lost:
            log.warning("lost a Redis subscription connection; %d rooms catch up", len(lost))
        for room in lost:
            del self._subscribed[room]
            self._catch_up_soon(room)

    def on_push(self, kind: bytes, name: bytes, message: bytes) -> None:
        """A push on a subscription connection: a room's event, or the end of a subscription."""
        try:
            room = channel_room(name)
            if not self._feed.follows(room):
                return  # unsubscribed (or being unsubscribed)
            if kind == b"sunsubscribe":  # the server dropped the subscription: a slot moved
                if room in self._subscribed:
                    log.warning("room %s: Redis ended its subscription; subscribing again", room)
                    del self._subscribed[room]
                    self._catch_up_soon(room)
                return
            entry_id, prev, raw = message.split(b" ", 2)
            position = entry_id.decode()
            step = self._feed.push(room, position, prev.decode(), raw)
            if step is Step.CATCH_UP:
                self._catch_up_soon(room)
            else:
                self._take(room, step, position, raw)
        except Exception:  # a handler's bug must not kill the subscription connection
            log.exception("cannot deliver a message of channel %r", name)

    # -- catching up --

    def _catch_up_soon(self, room: str) -> None:
        if room in self._syncs or not self._feed.follows(room):
            return
        self._feed.hold(room)
        self._syncs[room] = asyncio.get_running_loop().create_task(self._catch_up(room))

    async def _catch_up(self, room: str) -> None:
        """Subscribe to the room's channel if need be, read its stream after the last id seen,
        then deliver what was held back meanwhile. Retried until it works or the room goes."""
        backoff = 0.1
        try:
            while self._feed.follows(room) and not self._closing:
                try:
                    if room not in self._subscribed:
                        conn = await self._subscribers.get(self._conns.address(shard_of(room)))
                        try:
                            await conn.call("SSUBSCRIBE", channel(room), timeout=COMMAND_TIMEOUT_S)
                        except asyncio.CancelledError:  # the room went: Redis may have
                            conn.send("SUNSUBSCRIBE", channel(room))  # subscribed it anyway
                            raise
                        if not self._feed.follows(room):  # unsubscribed meanwhile
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
                    self._conns.ready = False
                    # Warn once per outage (each hosted room retries), then quietly.
                    report = log.warning if backoff == 0.1 else log.debug
                    report("room %s: cannot catch up (%s); retrying", room, exc)
                    await asyncio.sleep(backoff)
                    # At most CATCH_UP_RETRY_S apart: a promoted replica is used soon after.
                    backoff = min(backoff * 2, CATCH_UP_RETRY_S)
                    await self._conns.refresh_topology()
            self._conns.ready = True
        finally:
            if self._syncs.get(room) is asyncio.current_task():
                del self._syncs[room]
                for entry_id, raw in self._feed.release(room):  # what came meanwhile, in order
                    self._deliver(room, entry_id, raw)

    async def _read_after(self, room: str) -> None:
        """Deliver the room's stream entries after its position, oldest first. If the stream no
        longer holds that position, events this node may not have seen are gone: trimmed past
        it while this node was not reading, or lost by Redis (a failover to a replica that was
        behind keeps the shard's epoch but lacks the last events). The room is then brought up
        to date from a snapshot, and reported by `lost_rooms` so that its hosts merge their
        replicas back: the writes of the lost events are in them."""
        conn = await self._conns.writer(shard_of(room))
        key = log_key(room)
        after = self._feed.position(room)
        if after is None:
            return  # unsubscribed meanwhile
        start = "-" if after == "0-0" else after  # inclusive: is `after` still there?
        while self._feed.follows(room):
            entries = await conn.call(
                "XRANGE", key, start, "+", "COUNT", CATCH_UP_COUNT, timeout=COMMAND_TIMEOUT_S
            )
            if start == after:
                first = entries[0][0].decode() if entries else None
                if not self._feed.still_holds(room, after, first):
                    await self._resync(room, after)
                    return
                entries = entries[1:]
            for entry_id, fields in entries:
                raw = fields[1] if len(fields) == 2 and fields[0] == b"e" else b""
                self._deliver(room, entry_id.decode(), raw)
            position = self._feed.position(room)
            if len(entries) < CATCH_UP_COUNT - 1 or position is None:
                return
            start = "(" + position

    async def _resync(self, room: str, after: str) -> None:
        log.warning("room %s: the stream no longer holds %s (trimmed); catching up from a "
                    "snapshot", room, after)  # fmt: skip
        snapshot = await self._snapshot(room)
        if not self._feed.resync(room, snapshot.position):
            return
        # The whole stored state, as one delta: merging it is idempotent, and brings every
        # write of the missed events (app messages in the gap are gone: they are ephemeral).
        event = BusEvent(RESYNC_ORIGIN, int(time.time() * 1000), delta=snapshot.state)
        for handler in list(self._handlers.get(room, ())):
            handler(room, snapshot.position, event)

    # -- handing over --

    def _deliver(self, room: str, entry_id: str, raw: bytes) -> None:
        """An event read from the stream, or held back while the room caught up."""
        self._take(room, self._feed.read(room, entry_id), entry_id, raw)

    def _take(self, room: str, step: Step, entry_id: str, raw: bytes) -> None:
        if step is Step.NEXT_PAST_WRITE:  # reported by lost_rooms: the node merges it back
            log.warning("room %s: the stream lacks a write this node stored", room)
        elif step is not Step.NEXT:
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
