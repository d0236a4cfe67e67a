"""The edge node: asyncio glue between clients, the room logic and the bus.

`Node` wires its parts, each owning one concern, and is what the server talks to:

- `Identity` (identity.py): the node's id and current incarnation;
- `Admission` (admission.py): what a write must pass now (lease, clock, shutting down);
- `Hosting` (hosting.py): the hosted rooms, bus events in, outputs out, timers;
- `Sessions` (sessions.py): joins and resumes, disconnects and the grace of dropped ones;
- `Membership` (membership.py): the lease, the upkeep, fencing.

`Node` itself carries out client requests (`handle`) and REST requests, and starts and stops.
It never touches a socket: a client is a `roomstate.edge.clients.Client`, and one frame goes to
many through the `FanOut` it is given (the server's builds the WebSocket frame once).

A write is acknowledged only after its events are stored on the bus (`joined` goes out at once;
if the join's event cannot be stored, the client gets an `unavailable` error after it, and the
node merges its replica back into the store once it can).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from roomstate import logs
from roomstate.bus import Bus
from roomstate.crdt import HybridLogicalClock
from roomstate.edge.admission import Admission
from roomstate.edge.clients import Client, FanOut, send_each
from roomstate.edge.ejection import Ejections
from roomstate.edge.hosting import Hosting
from roomstate.edge.identity import Identity
from roomstate.edge.membership import Membership
from roomstate.edge.sessions import Sessions
from roomstate.errors import RequestError
from roomstate.metrics import Metrics
from roomstate.room import Room, RoomConfig
from roomstate.settings import Settings
from roomstate.wire.protocol import (
    Join,
    Leave,
    Limits,
    Ping,
    Request,
    SendAppMessage,
    SetMeetingSessionData,
    SetUserData,
    UpdateParticipant,
    encode,
)

__all__ = ["Node", "wall_ms"]

CLOSE_LEFT = 1000  # RFC 6455: normal closure, after a `leave`
CLOSE_RESTART = 1012  # RFC 6455: service restart, at shutdown


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Node:
    """One edge node: its parts, wired; the requests of clients and of the REST API."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        metrics: Metrics | None = None,
        clock: Callable[[], int] = wall_ms,
        fan_out: FanOut = send_each,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.metrics = metrics or Metrics()
        self.metrics.watch_bus(bus.metrics)
        offset = settings.clock_offset_ms
        # wall clock in ms; tests may inject another, or skew it (ROOMSTATE_CLOCK_OFFSET_MS)
        self.now_ms = clock if not offset else lambda: clock() + offset
        self.identity = Identity(settings.node_id)
        logs.set_node(self.identity.node_id)  # one node per served process: its log lines
        self.hlc = HybridLogicalClock(self.identity.node_id, settings.max_drift_ms)
        self.limits = Limits(
            app_message_bytes=settings.app_message_bytes,
            user_data_bytes=settings.user_data_bytes,
            session_data_bytes=settings.session_data_bytes,
            max_depth=settings.max_depth,
        )
        room_config = RoomConfig(
            limits=self.limits,
            user_data_interval_ms=settings.user_data_interval_ms,
            session_data_interval_ms=settings.session_data_interval_ms,
            counts_interval_ms=settings.counts_interval_ms,
            membership_batch_ms=settings.membership_batch_ms,
            roster_page_bytes=settings.roster_page_bytes,
        )
        self.connections: dict[str, Client] = {}  # joined clients by session id (see sessions)
        self.admission = Admission(
            bus,
            self.identity,
            settings.max_drift_ms,
            self.now_ms,
            max_loop_lag_ms=settings.max_loop_lag_ms,
            max_joins_in_flight=settings.max_joins_in_flight,
            metrics=self.metrics,
        )
        self.hosting = Hosting(
            bus,
            self.identity,
            self.hlc,
            room_config,
            self.connections,
            fan_out,
            self.metrics,
            self.now_ms,
            settings.max_drift_ms,
            on_delta=lambda room, delta, reason: self.sessions.let_go(room, delta, reason),
        )
        self.sessions = Sessions(
            settings,
            bus,
            self.identity,
            self.admission,
            self.hosting,
            self.connections,
            self.now_ms,
        )
        self.ejections = Ejections(self.hosting, self.sessions, self.now_ms)
        self.membership = Membership(
            bus,
            self.identity,
            self.admission,
            self.hosting,
            self.sessions,
            self.now_ms,
            loop_stuck_s=settings.loop_stuck_s,
            keep_ms=int(settings.tombstone_keep_s * 1000),
        )

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def incarnation(self) -> str:
        """This node's current incarnation (new at every start and fence)."""
        return self.identity.incarnation

    @property
    def rooms(self) -> dict[str, Room]:
        """The hosted rooms, by name."""
        return self.hosting.rooms

    @property
    def draining(self) -> bool:
        """Shutting down: no joins, and /readyz says no."""
        return self.admission.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.admission.draining = value

    # -- client requests --

    async def handle(self, conn: Client, request: Request, room_name: str) -> None:
        """Carry out one parsed request; raise `RequestError` for the client to see."""
        if isinstance(request, Ping):
            conn.send(encode("pong", id=request.id))
            return
        if not isinstance(request, Leave):
            stamped = not isinstance(request, SendAppMessage)
            self.admission.admit(conn.room or room_name, stamped)
        if isinstance(request, Join):
            await self.sessions.join(conn, request, room_name)
            joined = self.hosting.rooms.get(conn.room or "")
            if conn.session_id is not None and joined is not None:
                self.ejections.watch(joined, conn.session_id)  # a token's timed eject
            return
        room = self.hosting.rooms.get(conn.room or "")
        if conn.session_id is None or room is None:
            raise RequestError("not-joined", "send 'join' first")
        sid = conn.session_id
        if isinstance(request, SendAppMessage):
            await self.hosting.send_app_message(room, sid, request.data, request.to)
            conn.send(encode("ack", id=request.id))
            return
        if isinstance(request, UpdateParticipant):
            await self.ejections.eject(room, sid, request.session_id)
            conn.send(encode("ack", id=request.id))
            return
        now = self.now_ms()
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
                await self.hosting.run(room, out)
                conn.send_first(encode("ack", id=request.id))
            finally:
                conn.release()
            return
        else:
            assert isinstance(request, Leave)
            self.ejections.forget(sid)
            await self.sessions.disconnect(conn, "left")
            conn.send(encode("ack", id=request.id))
            await conn.flush_and_close(CLOSE_LEFT, "left")
            return
        await self.hosting.run(room, out)
        conn.send(encode("ack", id=request.id))

    async def disconnect(self, conn: Client, reason: str) -> None:
        """The connection's participant leaves its room (idempotent). A dropped connection
        ("disconnected") keeps the participant for `resume_grace_s`, so that it can resume."""
        await self.sessions.disconnect(conn, reason)

    # -- server-side (REST) requests --

    async def rest_send_app_message(
        self, room_name: str, data: Any, to: str | tuple[str, ...]
    ) -> None:
        self.admission.admit(room_name, stamped=False)  # as from a client (paused: no writes)
        room = self.hosting.rooms.get(room_name)
        if room is not None:
            await self.hosting.send_app_message(room, "API", data, to)
        else:
            await self.hosting.publish_unhosted_app_message(room_name, data, to)

    async def presence(self, room_name: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The listed participants (hidden ones are not) and the counts of both."""
        room = await self.hosting.view(room_name)
        return list(room.participants().values()), room.participant_counts()

    async def session_data(self, room_name: str) -> dict[str, Any]:
        return (await self.hosting.view(room_name)).session_data()

    async def rest_set_session_data(
        self, room_name: str, write: SetMeetingSessionData
    ) -> dict[str, Any]:
        self.admission.admit(room_name, stamped=True)
        room = await self.hosting.view(room_name)
        self.admission.admit(room_name, stamped=True)  # again: the snapshot may have waited
        await self.hosting.run(room, room.set_session_data(write, self.now_ms()))
        return room.session_data()

    # -- lifecycle --

    async def start(self) -> None:
        """Register this node's lease and start delivering bus events."""
        await self.membership.register()
        await self.admission.check_clock()
        self.bus.start_reading(self.identity.origin)
        self.membership.start()

    @property
    def ready(self) -> bool:
        """Whether the load balancer should send new clients here."""
        admission = self.admission
        return self.bus.ready and not admission.draining and admission.clock_in_bound

    async def shutdown(self) -> None:
        """Graceful stop: every local participant leaves, every client gets close code 1012."""
        self.admission.draining = True
        self.membership.stop_upkeep()
        # The lease is kept renewed (never fenced) until the leaves are out: the store refuses
        # a write whose incarnation no longer holds it, and a node with thousands of
        # participants can take longer to publish their leaves than a lease lasts.
        try:
            clients = await self.sessions.leave_all("node-shutdown")
        finally:
            self.membership.stop()
        await asyncio.gather(
            *(conn.flush_and_close(CLOSE_RESTART, "node shutting down") for conn in clients),
            return_exceptions=True,
        )
