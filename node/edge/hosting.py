"""Hosting: the rooms this node has local participants in, and running their outputs.

For each hosted room the node keeps a `Room` (the sans-I/O logic over this node's replica),
subscribes to the room on the bus, and runs the room's timer. Every step of the room logic
returns an `Output`: `run` hands its frames to the clients (`deliver`: through the `FanOut`, one
frame to many) and publishes its events. Events from the bus come in through `_on_event`.

A room whose events could not be published is kept aside (`unsynced`, even once closed) and
merged back whole into the store by `merge_back`, which the upkeep runs once the bus is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from roomstate.bus import Bus, Snapshot
from roomstate.crdt import HybridLogicalClock, RoomState
from roomstate.edge.clients import Client, FanOut
from roomstate.edge.identity import Identity
from roomstate.errors import BusError
from roomstate.metrics import Metrics
from roomstate.room import Output, Room, RoomConfig
from roomstate.wire.events import AppMessage, BusEvent
from roomstate.wire.protocol import frame_type

__all__ = ["Hosting"]

log = logging.getLogger(__name__)


class Hosting:
    """The hosted rooms: opening and closing them, bus events in, outputs out, timers."""

    def __init__(
        self,
        bus: Bus,
        identity: Identity,
        hlc: HybridLogicalClock,
        config: RoomConfig,
        clients: dict[str, Client],
        fan_out: FanOut,
        metrics: Metrics,
        now_ms: Callable[[], int],
        max_drift_ms: int,
        on_delta: Callable[[Room, RoomState, str | None], None],
    ) -> None:
        self.bus = bus
        self.identity = identity
        self.hlc = hlc  # the node's clock, shared by its rooms
        self.config = config
        self.clients = clients  # the node's clients by session id (read here, kept by sessions)
        self.fan_out = fan_out  # writes one frame to many clients
        self.metrics = metrics
        self.now_ms = now_ms
        self.max_drift_ms = max_drift_ms  # a delivered stamp further ahead is counted as drift
        # Called after a state change from elsewhere is applied to a hosted room, to let go of
        # the sessions it moved or removed (the sessions' concern, not the rooms'), with the
        # event's reason (an eject's connection is closed with a code of its own).
        self.on_delta = on_delta
        self.rooms: dict[str, Room] = {}
        self._opening: dict[str, asyncio.Future[Room]] = {}  # rooms being snapshotted
        self._timers: dict[str, tuple[int, asyncio.TimerHandle]] = {}  # room -> (deadline, handle)
        # rooms with writes the bus may not have stored, by name: merged back whole by the
        # upkeep (the replica is kept here if the room is closed meanwhile, say by a leave)
        self._unsynced: dict[str, list[Room]] = {}

    # -- opening and closing --

    async def open(self, room_name: str) -> Room:
        """The hosted room, snapshotting and subscribing to it first if needed."""
        room = self.rooms.get(room_name)
        if room is not None:
            return room
        pending = self._opening.get(room_name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Room] = asyncio.get_running_loop().create_future()
        self._opening[room_name] = future
        try:
            snapshot = await self.bus.snapshot(room_name)
            room = self.replica(room_name, snapshot)
            self.rooms[room_name] = room
            self.bus.subscribe(room_name, snapshot.position, self._on_event)
            self.metrics.rooms.set(len(self.rooms))
            future.set_result(room)
            return room
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        finally:
            del self._opening[room_name]

    def close(self, room_name: str) -> None:
        """Stop hosting a room that has no local participants left."""
        self.rooms.pop(room_name, None)
        self.bus.unsubscribe(room_name, self._on_event)
        timer = self._timers.pop(room_name, None)
        if timer is not None:
            timer[1].cancel()
        self.metrics.rooms.set(len(self.rooms))

    def close_all(self) -> None:
        """Close every room and forget the replicas left to merge back (a fence: they are the
        old incarnation's, never to be stored under the next one)."""
        for name in list(self.rooms):
            self.close(name)
        self._unsynced.clear()

    def replica(self, room_name: str, snapshot: Snapshot, origin: str | None = None) -> Room:
        """A room built from a bus snapshot. The clock observes the snapshot's stamps first, so
        that a write this node stamps for the room is newer than everything stored in it."""
        for stamp in snapshot.state.stamps():
            self.hlc.observe(stamp)
        origin = origin or self.identity.origin
        return Room(room_name, snapshot.state, self.hlc, origin, self.config)

    async def view(self, room_name: str) -> Room:
        """The hosted room, or a throwaway replica of it from a bus snapshot."""
        room = self.rooms.get(room_name)
        if room is not None:
            return room
        # Its events carry an origin of their own: if this node comes to host the room while
        # the write is stored, the hosted replica takes it from the bus (its own it would skip).
        snapshot = await self.bus.snapshot(room_name)
        return self.replica(room_name, snapshot, self.identity.unhosted_origin)

    # -- events in --

    def _on_event(self, room_name: str, position: str, event: BusEvent) -> None:
        room = self.rooms.get(room_name)
        if room is None or event.origin == self.identity.origin:
            return
        now = self.now_ms()
        self.metrics.delivery_latency.observe(max(0, now - event.sent_ms) / 1000)
        if event.delta is not None:
            ahead = max((s.wall_ms for s in event.delta.stamps()), default=0) - now
            if ahead > self.max_drift_ms:
                self.metrics.clock_drift.inc()
                log.warning("room %s: a delivered stamp is %d ms ahead", room_name, ahead)
        out = room.receive(event, now, position)
        if event.delta is None:  # an app message: its delivery changes no timer
            self._fan_out(out)
            return
        self.deliver(room, out)
        self.on_delta(room, event.delta, event.reason)

    # -- outputs out --

    async def run(self, room: Room, out: Output) -> None:
        """Deliver an output's frames, then publish its events (raising `BusError`). A room
        whose events could not be published is merged back whole once the bus is back."""
        self.deliver(room, out)
        try:
            for event in out.publish:
                await self.bus.publish(room.name, event)
        except BusError:
            # A replica of an incarnation this node has fenced away stays lost: merged back
            # under the current one, its writes would pass the store's lease check.
            if room.origin in (self.identity.origin, self.identity.unhosted_origin):
                pending = self._unsynced.setdefault(room.name, [])
                if all(r is not room for r in pending):
                    pending.append(room)
            raise

    def deliver(self, room: Room, out: Output) -> None:
        """Send an output's frames to the local recipients, and set the room's timer."""
        self._fan_out(out)
        self._schedule(room)

    def flush(self, room_name: str | None) -> None:
        """Send a hosted room's participant events waiting for their batch, at once."""
        room = self.rooms.get(room_name or "")
        if room is not None:
            self.deliver(room, room.flush_now())

    def _fan_out(self, out: Output) -> None:
        # The hot path: one list of clients per frame (looked up at C speed: a recipient whose
        # connection is gone is rare), handed to the fan-out, which builds the frame once.
        get = self.clients.get
        for recipients, frame in out.sends:
            found = list(map(get, recipients))
            if None in found:
                found = [client for client in found if client is not None]
            if found:
                self.fan_out(frame, cast("list[Client]", found))
                self.metrics.frames_sent(frame_type(frame), len(found))

    async def send_app_message(
        self, room: Room, from_id: str, data: Any, to: str | tuple[str, ...]
    ) -> None:
        """Store an app message, then deliver it to local recipients with its position (an app
        message changes no timer: no `_schedule`)."""
        event = room.app_message(from_id, data, to, self.now_ms())
        position = await self.bus.publish(room.name, event)
        assert event.message is not None and position is not None
        self._fan_out(room.deliver_app_message(event.message, position))

    async def publish_unhosted_app_message(
        self, room_name: str, data: Any, to: str | tuple[str, ...]
    ) -> None:
        """Store an app message from the API for a room not hosted here (an origin of its own,
        as for `view`'s replica)."""
        message = AppMessage(data, "API", to)
        event = BusEvent(self.identity.unhosted_origin, self.now_ms(), message=message)
        await self.bus.publish(room_name, event)

    # -- timers --

    def _schedule(self, room: Room) -> None:
        if self.rooms.get(room.name) is not room:
            return  # a throwaway replica, or a room closed since: the timers are the hosted one's
        deadline = room.next_deadline()
        current = self._timers.get(room.name)
        if current is not None and current[0] == deadline:
            return
        if current is not None:
            current[1].cancel()
            del self._timers[room.name]
        if deadline is None:
            return
        delay = max(0.0, (deadline - self.now_ms()) / 1000)
        handle = asyncio.get_running_loop().call_later(delay, self._on_timer, room.name)
        self._timers[room.name] = (deadline, handle)

    def _on_timer(self, room_name: str) -> None:
        self._timers.pop(room_name, None)
        room = self.rooms.get(room_name)
        if room is not None:
            self.deliver(room, room.poll(self.now_ms()))

    # -- merging back --

    @property
    def unsynced(self) -> list[str]:
        """The rooms with a replica waiting to be merged back (`merge_back`)."""
        return list(self._unsynced)

    async def merge_back(self, lost: set[str]) -> None:
        """Anti-entropy: merge this node's replica back into the store for each room in `lost`
        (rooms the store lost), and each room with a write the store may not have taken."""
        # The hosted replica of each, and those whose write failed in a room closed since. All
        # are listed first: the bus reports a lost room once, so if a merge-back fails (the
        # store refuses writes until this node's lease, lost with the data, is registered
        # again), every one not yet merged stays in `_unsynced` for the next round.
        for name in sorted(lost | self._unsynced.keys()):
            hosted = self.rooms.get(name)
            pending = [r for r in self._unsynced.get(name, []) if r is not hosted]
            self._unsynced[name] = [hosted, *pending] if hosted is not None else pending
        for name in sorted(self._unsynced):
            hosted = self.rooms.get(name)
            replicas = self._unsynced.get(name)
            while replicas:
                room = replicas[0]
                log.warning("room %s: merging this node's replica back into the store", name)
                # (another replica's events carry another origin: the hosted one takes them)
                identity = self.identity
                origin = identity.origin if room is hosted else identity.unhosted_origin
                event = BusEvent(origin, self.now_ms(), delta=room.state.copy())
                await self.bus.publish(name, event)
                if self._unsynced.get(name) is not replicas:
                    return  # fenced meanwhile: the rest were the old incarnation's
                replicas.pop(0)
            self._unsynced.pop(name, None)
