"""The edge node: asyncio glue between connections, the room logic and the bus.

The node owns the rooms that have local participants. For each it keeps a `Room` (the sans-I/O
logic over this node's replica), subscribes to the room on the bus, and runs the room's timer.
Every step of the room logic returns an `Output`; `_run` hands its frames to the connections'
send queues (encoded once, the same bytes to every recipient) and publishes its events.

A write is acknowledged only after its events are stored on the bus (`joined` goes out at once;
if the join's event cannot be stored, the client gets an `unavailable` error after it, and the
node merges its replica back into the store once it can).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from roomstate.auth import verify_token
from roomstate.bus import Bus, Snapshot
from roomstate.crdt import HybridLogicalClock, LWWRegister, Participant, RoomState
from roomstate.crdt.hlc import clock_skew_ms
from roomstate.errors import BusError, RequestError
from roomstate.metrics import Metrics
from roomstate.room import Output, Room, RoomConfig
from roomstate.server.connection import Connection, WriteBatch, frame_type, ws_frame
from roomstate.settings import Settings
from roomstate.wire.events import AppMessage, BusEvent
from roomstate.wire.protocol import (
    Join,
    Leave,
    Limits,
    Ping,
    Request,
    SendAppMessage,
    SetMeetingSessionData,
    SetUserData,
    encode,
)

__all__ = ["Node"]

log = logging.getLogger(__name__)


LEASE_TTL_MS = 5000  # a node's lease expires this long after its last renewal
LEASE_RENEW_S = 1.0  # how often a node renews its lease and looks for lost nodes
LEASE_RETRY_S = 0.2  # after a failed round: the store may be back, and a pooled connection
# that it closed fails once; waiting a whole period would delay noticing that it lost its data
LEASE_ADMIT_S = LEASE_TTL_MS / 1000 - LEASE_RENEW_S  # lease unconfirmed longer: refuse writes
CLOCK_PROBE = "~clock"  # the stream the clock check writes to (no room can have this name)
CLOSE_FENCED = 4002  # close code: this node lost its lease
CLOSE_REPLACED = 4003  # close code: the session was resumed on another connection


def _digest(secret: str) -> str:
    """What the room state keeps of a resume secret (the secret itself stays with the client)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _position_ms(position: str | None) -> int | None:
    """The store's clock in a log position, if it carries one (a Redis stream id is
    "<Redis ms>-<n>"; the in-memory bus counts, and has no clock of its own)."""
    ms, sep, n = (position or "").partition("-")
    return int(ms) if sep and ms.isdigit() and n.isdigit() else None


class Node:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        metrics: Metrics | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.metrics = metrics or Metrics()
        offset = settings.clock_offset_ms
        # wall clock in ms; tests may inject another, or skew it (ROOMSTATE_CLOCK_OFFSET_MS)
        self.now_ms = clock if not offset else lambda: clock() + offset
        self.node_id = settings.node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.incarnation = uuid.uuid4().hex[:12]  # new at every start
        self.origin = f"{self.node_id}/{self.incarnation}"
        self.hlc = HybridLogicalClock(self.node_id, settings.max_drift_ms)
        self.limits = Limits(
            app_message_bytes=settings.app_message_bytes,
            user_data_bytes=settings.user_data_bytes,
            session_data_bytes=settings.session_data_bytes,
            max_depth=settings.max_depth,
        )
        self.room_config = RoomConfig(
            limits=self.limits,
            user_data_interval_ms=settings.user_data_interval_ms,
            session_data_interval_ms=settings.session_data_interval_ms,
        )
        self.rooms: dict[str, Room] = {}
        self.connections: dict[str, Connection] = {}  # by session id
        self.write_batch = WriteBatch()  # frames to each client, one write per loop iteration
        self._opening: dict[str, asyncio.Future[Room]] = {}  # rooms being snapshotted
        self._timers: dict[str, tuple[int, asyncio.TimerHandle]] = {}  # room -> (deadline, handle)
        self._lease_task: asyncio.Task[None] | None = None
        self._upkeep_task: asyncio.Task[None] | None = None
        self.draining = False  # shutting down: /readyz says no
        # rooms with writes the bus may not have stored, by name: merged back whole by the
        # upkeep (the replica is kept here if the room is closed meanwhile, say by a leave)
        self._unsynced: dict[str, list[Room]] = {}
        self._lease_checked_at = math.inf  # monotonic time of the last lease round
        self._away: dict[str, tuple[str, asyncio.TimerHandle]] = {}  # dropped sid -> room, timer
        self._joining: dict[str, int] = {}  # room -> joins under way (it stays open meanwhile)
        # Since when the lease has been held without a break (inf: it is not held now). Lost
        # nodes are judged only after a whole lease period of it: after an outage of the store,
        # the other nodes must be given the time to renew theirs first.
        self._held_since = math.inf
        self.clock_skew_ms = 0  # this node's clock minus the store's, as far as sure (ms)
        self.clock_in_bound = True  # |clock_skew_ms| <= max_drift_ms: stamped writes allowed

    # -- client requests --

    async def handle(self, conn: Connection, request: Request, room_name: str) -> None:
        """Carry out one parsed request; raise `RequestError` for the client to see."""
        if isinstance(request, Ping):
            conn.send(encode("pong", id=request.id))
            return
        if not isinstance(request, Leave):
            self._admit(conn.room or room_name, stamped=not isinstance(request, SendAppMessage))
        if isinstance(request, Join):
            await self._join(conn, request, room_name)
            return
        room = self.rooms.get(conn.room or "")
        if conn.session_id is None or room is None:
            raise RequestError("not-joined", "send 'join' first")
        sid, now = conn.session_id, self.now_ms()
        if isinstance(request, SendAppMessage):
            await self._send_app_message(room, sid, request.data, request.to)
            conn.send(encode("ack", id=request.id))
            return
        if isinstance(request, SetUserData):
            out = room.set_user_data(sid, request.data, now)
        elif isinstance(request, SetMeetingSessionData):
            out = room.set_session_data(request, now)
            # The writer gets its ack before any update that reflects the write (the SDKs fold
            # an acknowledged write into the last state they got: folded into an update that
            # already has it, and newer writes of others, it would undo those). Frames to the
            # writer are held while the write is stored: the update of this write, or a batched
            # one that falls due meanwhile, follows the ack.
            conn.hold()
            try:
                await self._run(room, out)
                conn.send_first(encode("ack", id=request.id))
            finally:
                conn.release()
            return
        else:
            assert isinstance(request, Leave)
            await self.disconnect(conn, "left")
            conn.send(encode("ack", id=request.id))
            await conn.flush_and_close(1000, "left")
            return
        await self._run(room, out)
        conn.send(encode("ack", id=request.id))

    async def _join(self, conn: Connection, request: Join, room_name: str) -> None:
        if conn.session_id is not None:
            raise RequestError("already-joined", f"this connection already joined {conn.room!r}")
        self._refuse_if_draining()
        info: dict[str, Any] = {"user_name": request.user_name or "", "owner": False}
        if not self.settings.development:
            if request.token is None:
                raise RequestError("unauthorized", "a meeting token is required to join")
            claims = verify_token(self.settings.api_key or "", request.token, room_name)
            info["owner"] = claims.owner
            if claims.user_name is not None:
                info["user_name"] = claims.user_name
            if claims.user_id is not None:
                info["user_id"] = claims.user_id
        # While this join waits (for the snapshot, for a resume's move to be stored), the room
        # is not closed for having nobody here; if the join fails, it is closed after it.
        self._joining[room_name] = self._joining.get(room_name, 0) + 1
        try:
            room = await self._open(room_name)
            if request.resume is not None and await self._resume(conn, request, room):
                return
            await self._join_fresh(conn, request, room, info)
        finally:
            left = self._joining.pop(room_name) - 1
            if left:
                self._joining[room_name] = left
            self._close_room_if_unused(room_name)

    @property
    def unhosted_origin(self) -> str:
        """The origin of events this node stores for a room from outside its hosted replica (a
        REST write to a room it does not host, a closed room's replica merged back): if it
        hosts the room by the time they are read, its replica takes them (its own it skips)."""
        return f"{self.origin}/unhosted"

    def _refuse_if_draining(self) -> None:
        if self.draining:  # shutdown has closed the others: this one would be left open
            raise RequestError("unavailable", "this node is shutting down; join again")

    async def _join_fresh(
        self, conn: Connection, request: Join, room: Room, info: dict[str, Any]
    ) -> None:
        room_name = room.name
        self._admit(room_name, stamped=True)  # again: the snapshot may have waited out a pause
        self._refuse_if_draining()
        sid, secret = str(uuid.uuid4()), secrets.token_urlsafe(18)
        info.setdefault("user_id", sid)
        info["resume"] = _digest(secret)
        location = {"node": self.node_id, "incarnation": self.incarnation}
        out = room.join(sid, info, location, request.user_data, self.now_ms())
        conn.session_id, conn.room = sid, room_name
        self.connections[sid] = conn
        resumed = False if request.resume is not None else None  # a refused resume says so
        seq = self.bus.position(room_name)
        conn.send(room.joined_frame(request.id, sid, f"{sid}.{secret}", seq, resumed=resumed))
        await self._run(room, out)

    async def _resume(self, conn: Connection, request: Join, room: Room) -> bool:
        """Take up a session again (on this node or from another one). False if it cannot be
        (unknown, removed, or a wrong secret): then the join goes on as a fresh one."""
        sid, _, secret = (request.resume or "").partition(".")
        digest = room.resume_digest(sid)
        if digest is None or not hmac.compare_digest(digest, _digest(secret)):
            return False
        # Store the move first, on condition that the participant is still where it was: if
        # its node was judged lost and it was removed meanwhile (or it resumed elsewhere), the
        # resume fails and the join goes on as a fresh one, instead of answering `resumed`
        # for a session that no longer exists.
        participant = room.state.participants[sid]
        before = participant.location.value if participant.location is not None else None
        location = {"node": self.node_id, "incarnation": self.incarnation}
        moved = Participant(location=LWWRegister(location, self.hlc.tick(self.now_ms())))
        delta = RoomState(participants={sid: moved})
        event = BusEvent(self.origin, self.now_ms(), delta=delta)
        condition = (sid, before) if before is not None else None
        self._admit(room.name, stamped=True)  # again: the snapshot may have waited out a pause
        self._refuse_if_draining()
        # The grace is claimed before the move is stored: its timer must not remove the
        # participant meanwhile (the removal's condition, "still here", would hold).
        away = self._away.pop(sid, None)
        if away is not None:
            away[1].cancel()
        try:
            stored = await self.bus.publish(room.name, event, only_if_at=condition)
        except BaseException:
            if away is not None and sid not in self.connections:  # the grace goes on
                left = away[1].when() - asyncio.get_running_loop().time()
                self._wait_for_resume(away[0], sid, max(0.0, left))
            raise
        if stored is None:
            log.info("room %s: %s cannot resume: removed or moved meanwhile", room.name, sid)
            return False
        again = self._away.pop(sid, None)  # a grace re-armed meanwhile (a failed removal's)
        if again is not None:
            again[1].cancel()
        if self.rooms.get(room.name) is not room:  # fenced while the move was stored
            conn.close_soon(CLOSE_FENCED, "node lost its lease; reconnect")
            return True
        room.state.merge(delta)
        if sid not in room.state.present():  # it left meanwhile (its old connection's leave)
            log.info("room %s: %s cannot resume: it left meanwhile", room.name, sid)
            return False
        if sid in self.connections:  # the old connection is still open here: replace it
            old = self.connections.pop(sid)
            old.close_soon(CLOSE_REPLACED, "the session was resumed on another connection")
        conn.session_id, conn.room = sid, room.name
        self.connections[sid] = conn
        room.attach(sid)
        # Live events wait until the missed ones are replayed. The log is read after the
        # participant is attached, so nothing falls between the two; what both have is sent once.
        # The snapshot stands where the hold starts: a change made while the log is read
        # reaches the client once, as a held event after the snapshot, not in both.
        conn.hold()
        snapshot, seq = room.snapshot(), self.bus.position(room.name)
        replayed: set[str] = set()
        missed = None
        try:
            if request.resume_after is not None:
                try:
                    missed = await self.bus.read_range(room.name, request.resume_after)
                except BusError as exc:  # the session has moved here: resume, replaying nothing
                    log.warning("room %s: %s resumes without replay: %s", room.name, sid, exc)
            frame = room.joined_frame(
                request.id,
                sid,
                request.resume,
                seq,
                snapshot=snapshot,
                resumed=True,
                replayed=missed is not None,
            )
            conn.send_first(frame)
            for position, event in missed or ():
                if event.message is None:
                    continue
                for recipients, frame in room.deliver_app_message(event.message, position).sends:
                    if sid in recipients:
                        conn.send_first(frame)
                        replayed.add(position)
        finally:
            conn.release(frozenset(replayed))
        log.info("room %s: %s resumed (%d events read back)", room.name, sid, len(missed or ()))
        return True

    async def disconnect(self, conn: Connection, reason: str) -> None:
        """The connection's participant leaves its room (idempotent). A dropped connection
        ("disconnected") keeps the participant for `resume_grace_s`, so that it can resume."""
        sid, room_name = conn.session_id, conn.room
        if sid is None or room_name is None or self.connections.get(sid) is not conn:
            return
        del self.connections[sid]
        room = self.rooms.get(room_name)
        if room is None:
            return
        grace = self.settings.resume_grace_s
        if reason == "disconnected" and grace > 0:
            room.detach(sid)
            self._wait_for_resume(room_name, sid, grace)
            return
        out = room.leave(sid, reason, self.now_ms())
        self._close_room_if_unused(room_name)
        try:
            await self._run(room, out)
        except BusError as exc:
            log.warning("could not publish the leave of %s: %s", sid, exc)

    async def _grace_over(self, room_name: str, sid: str) -> None:
        """A dropped participant did not resume in time: it leaves, unless it moved on."""
        if self._away.pop(sid, None) is None or sid in self.connections:
            return
        where = {"node": self.node_id, "incarnation": self.incarnation}
        event = BusEvent(
            self.origin, self.now_ms(), delta=RoomState(removed={sid}), reason="disconnected"
        )
        try:
            # (stored even if the room closed meanwhile: its record names this live node)
            stored = await self.bus.publish(room_name, event, only_if_at=(sid, where))
        except BusError as exc:
            # Tried again shortly: the removal is conditional (only if still here), so no
            # replica merge can stand in for it.
            log.warning("could not publish the leave of %s, retrying: %s", sid, exc)
            if sid not in self.connections and not self.draining:
                self._wait_for_resume(room_name, sid, LEASE_RENEW_S)
            return
        room = self.rooms.get(room_name)
        if stored is not None and room is not None:
            self._deliver(room, room.remove_lost(sid, "disconnected"))
        self._close_room_if_unused(room_name)

    def _wait_for_resume(self, room_name: str, sid: str, seconds: float) -> None:
        """Keep a dropped participant for `seconds`, then `_grace_over`."""
        handle = asyncio.get_running_loop().call_later(
            seconds, lambda: asyncio.ensure_future(self._grace_over(room_name, sid))
        )
        self._away[sid] = (room_name, handle)

    def _close_room_if_unused(self, room_name: str) -> None:
        room = self.rooms.get(room_name)
        away = any(name == room_name for name, _ in self._away.values())
        if room is not None and not room.local and not away and room_name not in self._joining:
            self._close_room(room_name)

    # -- server-side (REST) requests --

    async def rest_send_app_message(
        self, room_name: str, data: Any, to: str | tuple[str, ...]
    ) -> None:
        self._admit(room_name, stamped=False)  # as from a client (a paused node stores nothing)
        room = self.rooms.get(room_name)
        if room is not None:
            await self._send_app_message(room, "API", data, to)
        else:  # (an origin of its own, as for `_view`'s replica)
            message = AppMessage(data, "API", to)
            event = BusEvent(self.unhosted_origin, self.now_ms(), message=message)
            await self.bus.publish(room_name, event)

    async def _send_app_message(
        self, room: Room, from_id: str, data: Any, to: str | tuple[str, ...]
    ) -> None:
        """Store an app message, then deliver it to local recipients with its position."""
        event = room.app_message(from_id, data, to, self.now_ms())
        position = await self.bus.publish(room.name, event)
        assert event.message is not None and position is not None
        self._deliver(room, room.deliver_app_message(event.message, position))

    async def presence(self, room_name: str) -> list[dict[str, Any]]:
        room = await self._view(room_name)
        return list(room.participants().values())

    async def session_data(self, room_name: str) -> dict[str, Any]:
        return (await self._view(room_name)).session_data()

    async def rest_set_session_data(
        self, room_name: str, write: SetMeetingSessionData
    ) -> dict[str, Any]:
        self._admit(room_name, stamped=True)
        room = await self._view(room_name)
        self._admit(room_name, stamped=True)  # again: the snapshot may have waited out a pause
        await self._run(room, room.set_session_data(write, self.now_ms()))
        return room.session_data()

    async def _view(self, room_name: str) -> Room:
        """The hosted room, or a throwaway replica of it from a bus snapshot."""
        room = self.rooms.get(room_name)
        if room is not None:
            return room
        # Its events carry an origin of their own: if this node comes to host the room while
        # the write is stored, the hosted replica takes it from the bus (its own it would skip).
        snapshot = await self.bus.snapshot(room_name)
        return self._replica(room_name, snapshot, self.unhosted_origin)

    def _replica(self, room_name: str, snapshot: Snapshot, origin: str | None = None) -> Room:
        """A room built from a bus snapshot. The clock observes the snapshot's stamps first, so
        that a write this node stamps for the room is newer than everything stored in it."""
        for stamp in snapshot.state.stamps():
            self.hlc.observe(stamp)
        return Room(room_name, snapshot.state, self.hlc, origin or self.origin, self.room_config)

    # -- rooms --

    async def _open(self, room_name: str) -> Room:
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
            room = self._replica(room_name, snapshot)
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

    def _close_room(self, room_name: str) -> None:
        """Stop hosting a room that has no local participants left."""
        self.rooms.pop(room_name, None)
        self.bus.unsubscribe(room_name, self._on_event)
        timer = self._timers.pop(room_name, None)
        if timer is not None:
            timer[1].cancel()
        self.metrics.rooms.set(len(self.rooms))

    def _on_event(self, room_name: str, position: str, event: BusEvent) -> None:
        room = self.rooms.get(room_name)
        if room is None or event.origin == self.origin:
            return
        now = self.now_ms()
        self.metrics.delivery_latency.observe(max(0, now - event.sent_ms) / 1000)
        if event.delta is not None:
            ahead = max((s.wall_ms for s in event.delta.stamps()), default=0) - now
            if ahead > self.settings.max_drift_ms:
                self.metrics.clock_drift.inc()
                log.warning("room %s: a delivered stamp is %d ms ahead", room_name, ahead)
        self._deliver(room, room.receive(event, now, position))
        if event.delta is None:
            return
        let_go = False
        here = {"node": self.node_id, "incarnation": self.incarnation}
        for sid in event.delta.participants:
            if sid not in room.local and sid not in self._away:
                continue  # not held here
            participant = room.state.participants.get(sid)
            location = participant.location if participant is not None else None
            if location is None or location.value == here or sid in event.delta.removed:
                continue
            # It resumed on another node: let go of it here, dropped or still connected.
            away = self._away.pop(sid, None)
            if away is not None:
                away[1].cancel()
            conn = self.connections.get(sid)
            if conn is not None and conn.room == room_name:
                del self.connections[sid]
                conn.close_soon(CLOSE_REPLACED, "the session was resumed on another connection")
            room.detach(sid)
            let_go = True
        for sid in event.delta.removed:
            conn = self.connections.get(sid)
            if conn is not None and conn.room == room_name:  # removed elsewhere: cut it off
                del self.connections[sid]
                conn.close_soon(4001, "removed from the room")
                let_go = True
        if let_go:
            self._close_room_if_unused(room_name)

    # -- running outputs --

    async def _run(self, room: Room, out: Output) -> None:
        """Deliver an output's frames, then publish its events (raising `BusError`). A room
        whose events could not be published is merged back whole once the bus is back."""
        self._deliver(room, out)
        try:
            for event in out.publish:
                await self.bus.publish(room.name, event)
        except BusError:
            # A replica of an incarnation this node has fenced away stays lost: merged back
            # under the current one, its writes would pass the store's lease check.
            if room.origin in (self.origin, self.unhosted_origin):
                pending = self._unsynced.setdefault(room.name, [])
                if all(r is not room for r in pending):
                    pending.append(room)
            raise

    def _deliver(self, room: Room, out: Output) -> None:
        connections = self.connections
        for recipients, frame in out.sends:
            wire = None  # the WebSocket frame, built once for all recipients
            count = 0
            for sid in recipients:
                conn = connections.get(sid)
                if conn is not None:
                    if wire is None:
                        wire = ws_frame(frame)
                    conn.deliver(frame, wire)
                    count += 1
            if count:
                self.metrics.frames_sent(frame_type(frame), count)
        self._schedule(room)

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
            self._deliver(room, room.poll(self.now_ms()))

    # -- membership --

    async def start(self) -> None:
        """Register this node's lease and start delivering bus events."""
        await self.bus.renew_lease(self.node_id, self.incarnation, LEASE_TTL_MS, register=True)
        self._held_since = self._lease_checked_at = time.monotonic()
        await self._check_clock()
        self.bus.start_reading(self.origin)
        loop = asyncio.get_running_loop()
        self._lease_task = loop.create_task(self._keep_lease())
        self._upkeep_task = loop.create_task(self._upkeep())

    async def _keep_lease(self) -> None:
        """Renew the lease every second (0.2 s after a failure), fencing if it was lost. On its
        own task, so that no other work can make it late: with 500 ms of latency to Redis, a
        round of the upkeep below takes seconds, and a late renewal would let the lease expire
        and the other nodes remove this node's participants."""
        next_at = time.monotonic() + LEASE_RENEW_S
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                if not await self._renew_lease():
                    if self.draining:  # shutting down: its participants are leaving anyway
                        log.warning("lease lost while shutting down: not fencing")
                    else:
                        await self._fence()
                # Every LEASE_RENEW_S however long a renewal takes (at once if it took longer).
                next_at = max(next_at + LEASE_RENEW_S, time.monotonic())
            except BusError as exc:
                self._held_since = math.inf
                log.warning("lease renewal failed: %s", exc)
                next_at = time.monotonic() + LEASE_RETRY_S
            except Exception:
                log.exception("lease renewal failed")
                next_at = time.monotonic() + LEASE_RETRY_S

    async def _upkeep(self) -> None:
        """Every second while the lease is held (0.2 s after a round that failed): merge
        replicas back into a store that lost them, check the clock, remove the participants of
        nodes whose lease expired."""
        delay = LEASE_RENEW_S
        while True:
            await asyncio.sleep(delay)
            if self._held_since == math.inf:
                delay = LEASE_RETRY_S  # the lease is not held: nothing may be judged now
                continue
            delay = LEASE_RETRY_S  # unless the round succeeds
            try:
                await self._restore_lost_rooms()
                await self._check_clock()
                if time.monotonic() - self._held_since >= LEASE_TTL_MS / 1000:
                    await self._remove_lost_participants()
                delay = LEASE_RENEW_S
            except BusError as exc:
                log.warning("upkeep failed: %s", exc)
            except Exception:
                log.exception("upkeep failed")

    async def _renew_lease(self) -> bool:
        """Whether this incarnation still holds its lease. A lease that vanished while this
        node kept trying to renew it (the store was unreachable or lost its data) is taken
        again: participants that others removed meanwhile are removed here by their events.
        A node that did not even try for a whole lease period (paused) must fence."""
        now = time.monotonic()
        paused = now - self._lease_checked_at > LEASE_TTL_MS / 1000
        self._lease_checked_at = now
        state = await self.bus.renew_lease(self.node_id, self.incarnation, LEASE_TTL_MS, False)
        if state == "missing" and not paused:
            log.warning("the lease vanished while this node kept renewing it: taking it again")
            state = await self.bus.renew_lease(self.node_id, self.incarnation, LEASE_TTL_MS, True)
            self._held_since = now  # the other nodes need a moment to re-register too
        if state == "held":
            self._held_since = min(self._held_since, now)
        return state == "held"

    async def _restore_lost_rooms(self) -> None:
        """Anti-entropy: merge this node's replica back into the store for each room the store
        lost, and each room with a write the store may not have taken."""
        lost = set(await self.bus.lost_rooms(list(self.rooms)))
        # The hosted replica of each, and those whose write failed in a room closed since. All
        # are listed first: `lost_rooms` reports a room once, so if a merge-back fails (the
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
                origin = self.origin if room is hosted else self.unhosted_origin
                event = BusEvent(origin, self.now_ms(), delta=room.state.copy())
                await self.bus.publish(name, event)
                if self._unsynced.get(name) is not replicas:
                    return  # fenced meanwhile: the rest were the old incarnation's
                replicas.pop(0)
            self._unsynced.pop(name, None)

    async def _remove_lost_participants(self) -> None:
        """Remove the participants held by node incarnations that no longer hold a lease. Those
        of this incarnation are its own to remove (connected, or waiting to resume), and so are
        local ones whatever their recorded location; who is local is read after the lease read,
        and a room closed meanwhile is still done (each removal is stored only if the
        participant is still where it was seen, so a late one is harmless)."""
        here = (self.node_id, self.incarnation)
        located = {name: room.locations() for name, room in self.rooms.items()}
        holders = {key for by_holder in located.values() for key in by_holder if key != here}
        if not holders:
            return
        live = await self.bus.live_incarnations(sorted({node for node, _ in holders}))
        gone = {(node, inc) for node, inc in holders if inc not in live.get(node, set())}
        lost = [
            (name, sid, location)
            for name, by_holder in located.items()
            for holder in gone & by_holder.keys()
            for sid, location in by_holder[holder].items()
            if name not in self.rooms or sid not in self.rooms[name].local
        ]
        # All at once: the bus pipelines them (a node holding 200 participants is 200
        # conditional removals, one round trip instead of 200).
        results = await asyncio.gather(
            *(self._remove_lost(name, sid, location) for name, sid, location in lost),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _remove_lost(self, name: str, sid: str, location: dict[str, Any]) -> None:
        """Remove a participant of a lost node, if it is still where that node had it (it may
        have resumed elsewhere, or another node removed it first)."""
        event = BusEvent(
            self.origin, self.now_ms(), delta=RoomState(removed={sid}), reason="node-lost"
        )
        stored = await self.bus.publish(name, event, only_if_at=(sid, location))
        room = self.rooms.get(name)
        if stored is not None and room is not None:
            log.info("room %s: %s left with its node %s", name, sid, location["node"])
            self._deliver(room, room.remove_lost(sid, "node-lost"))

    async def _fence(self) -> None:
        """Our lease was lost (we were paused or cut off too long): others have removed our
        participants. Close every client and come back as a new incarnation."""
        log.warning("lease lost: fencing node %s incarnation %s", self.node_id, self.incarnation)
        self._held_since = math.inf  # no upkeep round until the new incarnation holds the lease
        conns = list(self.connections.values())
        self.connections.clear()
        for _, handle in self._away.values():
            handle.cancel()
        self._away.clear()
        for name in list(self.rooms):
            self._close_room(name)
        self._unsynced.clear()  # this incarnation's: never stored under the next one
        for conn in conns:
            conn.close_soon(CLOSE_FENCED, "node lost its lease; reconnect")
        # Taken before it is registered, so that a failed registration is retried for it by
        # the next lease round; a write in between is refused by the store's lease check.
        self.incarnation = uuid.uuid4().hex[:12]
        self.origin = f"{self.node_id}/{self.incarnation}"
        await self.bus.renew_lease(self.node_id, self.incarnation, LEASE_TTL_MS, register=True)
        self._held_since = self._lease_checked_at = time.monotonic()

    # -- admission: what a write must pass before it is stamped and stored --

    def _admit(self, room_name: str, stamped: bool) -> None:
        """Refuse (`unavailable`) a write this node must not store now:

        - its lease has not been confirmed for `LEASE_ADMIT_S` (in the room's lease group: in
          a Cluster, on the room's master): the node was paused or cut off and may have been
          declared lost, its participants removed; a write it stored now would carry an
          incarnation the others already buried (it fences at its next lease round, and its
          clients reconnect);
        - the write carries a stamp and this node's clock is out of the drift bound (DESIGN:
          a node whose clock is out of bound refuses writes and reports not ready).
        """
        silent = time.monotonic() - self.bus.lease_confirmed_at(room_name)
        if self.bus.shared and silent > LEASE_ADMIT_S:
            raise RequestError(
                "unavailable",
                f"this node has not renewed its lease for {silent:.1f} s (the limit is "
                f"{LEASE_ADMIT_S:g} s); the write was not stored",
            )
        if stamped and not self.clock_in_bound:
            skew, bound = self.clock_skew_ms, self.settings.max_drift_ms
            side = "ahead of" if skew > 0 else "behind"
            raise RequestError(
                "unavailable",
                f"this node's clock is {abs(skew)} ms {side} the store's; the drift bound is "
                f"{bound} ms; the write was not stored",
            )

    async def _check_clock(self) -> None:
        """Measure this node's clock against the store's (with Redis, Redis's clock, read as
        the id of an entry added to the `CLOCK_PROBE` stream) and set `clock_in_bound`."""
        before = self.now_ms()
        position = await self.bus.publish(CLOCK_PROBE, BusEvent(self.origin, before))
        reference = _position_ms(position)
        if reference is None:
            return  # the in-memory bus: this node's clock is the only one
        skew = clock_skew_ms(before, reference, self.now_ms())
        bound = self.settings.max_drift_ms
        in_bound = abs(skew) <= bound
        if not in_bound and (self.clock_in_bound or abs(skew - self.clock_skew_ms) > bound):
            side = "ahead of" if skew > 0 else "behind"
            log.warning(
                "this node's clock is %d ms %s the store's (drift bound %d ms): refusing "
                "writes, not ready",
                abs(skew),
                side,
                bound,
            )
        elif in_bound and not self.clock_in_bound:
            log.warning("this node's clock is back within the drift bound: taking writes")
        self.clock_skew_ms, self.clock_in_bound = skew, in_bound

    # -- lifecycle --

    @property
    def ready(self) -> bool:
        """Whether the load balancer should send new clients here."""
        return self.bus.ready and not self.draining and self.clock_in_bound

    async def shutdown(self) -> None:
        """Graceful stop: every local participant leaves, every client gets close code 1012."""
        self.draining = True
        if self._upkeep_task is not None:
            self._upkeep_task.cancel()
        # The lease is kept renewed (never fenced) until the leaves are out: the store refuses
        # a write whose incarnation no longer holds it, and a node with thousands of
        # participants can take longer to publish their leaves than a lease lasts.
        conns = list(self.connections.values())
        try:
            for conn in conns:
                await self.disconnect(conn, "node-shutdown")
            for sid, (room_name, handle) in list(self._away.items()):
                handle.cancel()
                del self._away[sid]
                room = self.rooms.get(room_name)
                if room is not None:
                    try:
                        await self._run(room, room.leave(sid, "node-shutdown", self.now_ms()))
                    except BusError as exc:
                        log.warning("could not publish the leave of %s: %s", sid, exc)
        finally:
            if self._lease_task is not None:
                self._lease_task.cancel()
        await asyncio.gather(
            *(conn.flush_and_close(1012, "node shutting down") for conn in conns),
            return_exceptions=True,
        )
