"""Sessions: which client holds which participant, from its join to its leave.

A join opens the room (if this node does not host it yet) and adds a participant, or takes up an
existing one again (a resume: on this node after a dropped connection, or from another node). A
dropped connection keeps its participant for `resume_grace_s` (it is *away*); when the grace is
over, the participant leaves, unless it resumed meanwhile. A participant that moved to another
node, or that another node removed, is let go of here (`let_go`).

A room is closed once it has no local participant, none away and no join under way
(`close_room_if_unused`): who is here is this part's knowledge, the rooms are `Hosting`'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable
from typing import Any

from roomstate import logs
from roomstate.auth import verify_token
from roomstate.bus import Bus
from roomstate.crdt import RoomState
from roomstate.edge.admission import Admission
from roomstate.edge.clients import (
    CLOSE_EJECTED,
    CLOSE_FENCED,
    CLOSE_REMOVED,
    CLOSE_REPLACED,
    Client,
)
from roomstate.edge.hosting import Hosting
from roomstate.edge.identity import LEASE_RENEW_S, Identity
from roomstate.errors import BusError, RequestError
from roomstate.room import Room
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent
from roomstate.wire.protocol import Join

__all__ = ["Sessions"]

log = logging.getLogger(__name__)


def _digest(secret: str) -> str:
    """What the room state keeps of a resume secret (the secret itself stays with the client)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    """Joins, resumes, disconnects and the grace of dropped participants."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        identity: Identity,
        admission: Admission,
        hosting: Hosting,
        clients: dict[str, Client],
        now_ms: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.identity = identity
        self.admission = admission
        self.hosting = hosting
        self.clients = clients  # the joined clients by session id (kept here)
        self.now_ms = now_ms
        self._away: dict[str, tuple[str, asyncio.TimerHandle]] = {}  # dropped sid -> room, timer
        self._joining: dict[str, int] = {}  # room -> joins under way (it stays open meanwhile)

    # -- joins --

    async def join(self, conn: Client, request: Join, room_name: str) -> None:
        if conn.session_id is not None:
            raise RequestError("already-joined", f"this connection already joined {conn.room!r}")
        self.admission.refuse_if_draining()
        if request.resume is None:  # a resume is someone already in: not shed for load
            self.admission.refuse_if_at_capacity()
        info: dict[str, Any] = {"user_name": request.user_name or "", "owner": False}
        has_presence = self.settings.default_has_presence
        if not self.settings.development:
            if request.token is None:
                raise RequestError("unauthorized", "a meeting token is required to join")
            claims = verify_token(self.settings.api_key or "", request.token, room_name)
            info["owner"] = claims.owner
            if claims.user_name is not None:
                info["user_name"] = claims.user_name
            if claims.user_id is not None:
                info["user_id"] = claims.user_id
            has_presence = claims.has_presence
            if claims.can_admin:  # (kept with the owner flag: the right to eject, ejection.py)
                info["can_admin"] = sorted(claims.can_admin)
            eject_at = claims.eject_at_ms(self.now_ms())
            if eject_at is not None:  # a timed eject: the node holding the connection runs it
                info["eject_at"] = eject_at
        if not has_presence:  # (only then: a present participant's info is as it was)
            info["hidden"] = True
        # While this join waits (for the snapshot, for a resume's move to be stored), the room
        # is not closed for having nobody here; if the join fails, it is closed after it.
        self._joining[room_name] = self._joining.get(room_name, 0) + 1
        self.admission.joins_in_flight += 1
        try:
            room = await self.hosting.open(room_name)
            if request.resume is not None and await self._resume(conn, request, room):
                return
            await self._join_fresh(conn, request, room, info)
        finally:
            self.admission.joins_in_flight -= 1
            left = self._joining.pop(room_name) - 1
            if left:
                self._joining[room_name] = left
            self.close_room_if_unused(room_name)

    async def _join_fresh(
        self, conn: Client, request: Join, room: Room, info: dict[str, Any]
    ) -> None:
        room_name = room.name
        self.admission.admit(room_name, stamped=True)  # again: the snapshot may have waited
        self.admission.refuse_if_draining()
        sid, secret = str(uuid.uuid4()), secrets.token_urlsafe(18)
        info.setdefault("user_id", sid)
        info["resume"] = _digest(secret)
        out = room.join(sid, info, self.identity.location(), request.user_data, self.now_ms())
        conn.session_id, conn.room = sid, room_name
        logs.SESSION.set(sid)  # in the lines of this connection's task from now on
        log.debug("room %s: %s joined", room_name, sid, extra={"room": room_name, "session": sid})
        self.clients[sid] = conn
        resumed = False if request.resume is not None else None  # a refused resume says so
        seq = self.bus.position(room_name)
        token = f"{sid}.{secret}"
        for frame in room.joined_frames(request.id, sid, token, seq, resumed=resumed):
            conn.send(frame)
        await self.hosting.run(room, out)

    async def _resume(self, conn: Client, request: Join, room: Room) -> bool:
        """Take up a session again (on this node or from another one). False if it cannot be
        (unknown, removed, or a wrong secret): then the join goes on as a fresh one."""
        sid, _, secret = (request.resume or "").partition(".")
        digest = room.roster.resume_digest(sid)
        if digest is None or not hmac.compare_digest(digest, _digest(secret)):
            return False
        # Store the move first, on condition that the participant is still where it was: if
        # its node was judged lost and it was removed meanwhile (or it resumed elsewhere), the
        # resume fails and the join goes on as a fresh one, instead of answering `resumed`
        # for a session that no longer exists.
        participant = room.state.participants[sid]
        before = participant.location.value if participant.location is not None else None
        now = self.now_ms()
        delta = room.move(sid, self.identity.location(), now)
        event = BusEvent(self.identity.origin, now, delta=delta)
        condition = (sid, before) if before is not None else None
        self.admission.admit(room.name, stamped=True)  # again: the snapshot may have waited
        self.admission.refuse_if_draining()
        # The grace is claimed before the move is stored: its timer must not remove the
        # participant meanwhile (the removal's condition, "still here", would hold).
        away = self._away.pop(sid, None)
        if away is not None:
            away[1].cancel()
        try:
            stored = await self.bus.publish(room.name, event, only_if_at=condition)
        except BaseException:
            if away is not None and sid not in self.clients:  # the grace goes on
                left = away[1].when() - asyncio.get_running_loop().time()
                self._wait_for_resume(away[0], sid, max(0.0, left))
            raise
        if stored is None:
            log.info("room %s: %s cannot resume: removed or moved meanwhile", room.name, sid)
            return False
        again = self._away.pop(sid, None)  # a grace re-armed meanwhile (a failed removal's)
        if again is not None:
            again[1].cancel()
        if self.hosting.rooms.get(room.name) is not room:  # fenced while the move was stored
            conn.close_soon(CLOSE_FENCED, "node lost its lease; reconnect")
            return True
        room.state.merge(delta)
        if sid not in room.state.present():  # it left meanwhile (its old connection's leave)
            log.info("room %s: %s cannot resume: it left meanwhile", room.name, sid)
            return False
        if sid in self.clients:  # the old connection is still open here: replace it
            old = self.clients.pop(sid)
            old.close_soon(CLOSE_REPLACED, "the session was resumed on another connection")
        conn.session_id, conn.room = sid, room.name
        logs.SESSION.set(sid)  # in the lines of this connection's task from now on
        self.clients[sid] = conn
        room.attach(sid)
        await self._replay(conn, request, room, sid)
        return True

    async def _replay(self, conn: Client, request: Join, room: Room, sid: str) -> None:
        """Answer a resume: `joined`, then the app messages it missed, then live events."""
        # Live events wait until the missed ones are replayed. The log is read after the
        # participant is attached, so nothing falls between the two; what both have is sent once.
        # The snapshot stands where the hold starts: a change made while the log is read
        # reaches the client once, as a held event after the snapshot, not in both.
        conn.hold()
        snapshot, seq = room.snapshot(sid), self.bus.position(room.name)
        replayed: set[str] = set()
        missed = None
        try:
            if request.resume_after is not None:
                try:
                    missed = await self.bus.read_range(room.name, request.resume_after)
                except BusError as exc:  # the session has moved here: resume, replaying nothing
                    log.warning("room %s: %s resumes without replay: %s", room.name, sid, exc)
            for frame in room.joined_frames(
                request.id,
                sid,
                request.resume,
                seq,
                snapshot=snapshot,
                resumed=True,
                replayed=missed is not None,
            ):
                conn.send_first(frame)
            for position, event in missed or ():
                if event.message is None:
                    continue
                missed_frame = room.replay_app_message(event.message, position, sid)
                if missed_frame is not None:
                    conn.send_first(missed_frame)
                    replayed.add(position)
        finally:
            conn.release(frozenset(replayed))
        log.info("room %s: %s resumed (%d events read back)", room.name, sid, len(missed or ()))

    # -- disconnects and the grace --

    async def disconnect(self, conn: Client, reason: str) -> None:
        """The connection's participant leaves its room (idempotent). A dropped connection
        ("disconnected") keeps the participant for `resume_grace_s`, so that it can resume."""
        sid, room_name = conn.session_id, conn.room
        if sid is None or room_name is None or self.clients.get(sid) is not conn:
            return
        del self.clients[sid]
        room = self.hosting.rooms.get(room_name)
        if room is None:
            return
        grace = self.settings.resume_grace_s
        if reason == "disconnected" and grace > 0:
            room.detach(sid)
            self._wait_for_resume(room_name, sid, grace)
            return
        out = room.leave(sid, reason, self.now_ms())
        self.close_room_if_unused(room_name)
        try:
            await self.hosting.run(room, out)
        except BusError as exc:
            log.warning("could not publish the leave of %s: %s", sid, exc)

    def is_away(self, sid: str) -> bool:
        """Whether `sid` dropped and this node waits for it to resume."""
        return sid in self._away

    async def grace_over(self, room_name: str, sid: str) -> None:
        """A dropped participant did not resume in time (its timer's entry point): it leaves,
        unless it moved on."""
        if self._away.pop(sid, None) is None or sid in self.clients:
            return
        event = BusEvent(
            self.identity.origin,
            self.now_ms(),
            delta=RoomState(removed={sid}),
            reason="disconnected",
        )
        try:
            # (stored even if the room closed meanwhile: its record names this live node)
            where = (sid, self.identity.location())
            stored = await self.bus.publish(room_name, event, only_if_at=where)
        except BusError as exc:
            # Tried again shortly: the removal is conditional (only if still here), so no
            # replica merge can stand in for it.
            log.warning("could not publish the leave of %s, retrying: %s", sid, exc)
            if sid not in self.clients and not self.admission.draining:
                self._wait_for_resume(room_name, sid, LEASE_RENEW_S)
            return
        room = self.hosting.rooms.get(room_name)
        if stored is not None and room is not None:
            self.hosting.deliver(room, room.remove_lost(sid, "disconnected", self.now_ms()))
        self.close_room_if_unused(room_name)

    def _wait_for_resume(self, room_name: str, sid: str, seconds: float) -> None:
        """Keep a dropped participant for `seconds`, then `grace_over`."""
        handle = asyncio.get_running_loop().call_later(
            seconds, lambda: asyncio.ensure_future(self.grace_over(room_name, sid))
        )
        self._away[sid] = (room_name, handle)

    def close_room_if_unused(self, room_name: str) -> None:
        room = self.hosting.rooms.get(room_name)
        away = any(name == room_name for name, _ in self._away.values())
        if room is not None and not room.local and not away and room_name not in self._joining:
            self.hosting.close(room_name)

    # -- changes made elsewhere --

    def let_go(self, room: Room, delta: RoomState, reason: str | None = None) -> None:
        """After `delta` from another node was applied to `room`: let go of the sessions it
        moved to another node (dropped or still connected) and cut off those it removed
        (`reason` "ejected": with the close code of an eject)."""
        let_go = False
        here = self.identity.location()
        for sid in delta.participants:
            if sid not in room.local and sid not in self._away:
                continue  # not held here
            participant = room.state.participants.get(sid)
            location = participant.location if participant is not None else None
            if location is None or location.value == here or sid in delta.removed:
                continue
            # It resumed on another node: let go of it here, dropped or still connected.
            away = self._away.pop(sid, None)
            if away is not None:
                away[1].cancel()
            conn = self.clients.get(sid)
            if conn is not None and conn.room == room.name:
                del self.clients[sid]
                conn.close_soon(CLOSE_REPLACED, "the session was resumed on another connection")
            room.detach(sid)
            let_go = True
        for sid in delta.removed:
            away = self._away.pop(sid, None) if reason == "ejected" else None
            if away is not None:  # ejected while dropped: nothing left to wait for
                away[1].cancel()
                let_go = True
            conn = self.clients.get(sid)
            if conn is not None and conn.room == room.name:  # removed elsewhere: cut it off
                del self.clients[sid]
                if reason == "ejected":
                    conn.close_soon(CLOSE_EJECTED, "ejected from the room", flush=True)
                else:
                    conn.close_soon(CLOSE_REMOVED, "removed from the room")
                let_go = True
        if let_go:
            self.close_room_if_unused(room.name)

    # -- all at once --

    def drop_all(self) -> list[Client]:
        """Forget every session, connected or away, at once (a fence); returns the clients,
        for the caller to close."""
        clients = list(self.clients.values())
        self.clients.clear()
        for _, handle in self._away.values():
            handle.cancel()
        self._away.clear()
        return clients

    async def leave_all(self, reason: str) -> list[Client]:
        """Every local participant leaves, connected or away (a shutdown); returns the
        clients, for the caller to close once the leaves are out."""
        clients = list(self.clients.values())
        for conn in clients:
            room_name = conn.room
            await self.disconnect(conn, reason)
            # the others hear of this leave before they leave too: no waiting for the batch
            self.hosting.flush(room_name)
        for sid, (room_name, handle) in list(self._away.items()):
            handle.cancel()
            del self._away[sid]
            room = self.hosting.rooms.get(room_name)
            if room is not None:
                try:
                    await self.hosting.run(room, room.leave(sid, reason, self.now_ms()))
                except BusError as exc:
                    log.warning("could not publish the leave of %s: %s", sid, exc)
        return clients
