"""Ejections: an owner removes a participant from the room, and tokens eject on time.

An eject is a removal stored on the bus with the reason ``"ejected"``, as a leave is: every node
hosting the room tells its participants (``participant-left`` with that reason), and the node
holding the ejected participant's connection closes it with `CLOSE_EJECTED` (`Sessions.let_go`;
here, when it is this node). A removal is final, so the session cannot resume.

Who may eject: a participant whose meeting token made it an owner (``o``), or whose
``permissions.canAdmin`` includes ``participants``. The join keeps both in the participant's
info, so the right holds on whichever node the owner's connection is.

Timed ejects (the token's ``eje``, eject_after_elapsed, and ``ejt``, eject_at_token_exp): the
join stores the time in the participant's info (``eject_at``, Unix ms), and the node that holds
the connection, after a join or a resume, keeps a timer for it. The room logic reads no clock:
the timers are here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from roomstate.crdt import RoomState
from roomstate.edge.hosting import Hosting
from roomstate.edge.sessions import Sessions
from roomstate.errors import BusError, RequestError
from roomstate.room import Room

__all__ = ["EJECTED", "Ejections", "may_eject"]

log = logging.getLogger(__name__)

EJECTED: Final = "ejected"  # the reason of an eject's removal, as `participant-left` shows it


def may_eject(info: dict[str, Any]) -> bool:
    """Whether a participant with this info may eject others: an owner, or canAdmin with
    ``participants``."""
    admin = info.get("can_admin")
    return info.get("owner") is True or (isinstance(admin, list) and "participants" in admin)


class Ejections:
    """Ejects on request, and the timers of timed ejects for the connections held here."""

    def __init__(self, hosting: Hosting, sessions: Sessions, now_ms: Callable[[], int]) -> None:
        self.hosting = hosting
        self.sessions = sessions
        self.now_ms = now_ms
        self._timers: dict[str, asyncio.TimerHandle] = {}  # sid -> its timed eject

    async def eject(self, room: Room, by: str, target: str) -> None:
        """`by` (a local participant) ejects `target`, wherever its connection is; raises
        `RequestError` if `by` may not, or `target` is not in the room."""
        if not may_eject(_info(room, by)):
            raise RequestError(
                "forbidden",
                "ejecting a participant needs an owner's meeting token (is_owner) or one whose"
                " permissions.canAdmin includes 'participants'",
            )
        if target == by:
            raise RequestError("bad-request", "a participant cannot eject itself; send 'leave'")
        if not _present(room, target):
            raise RequestError("bad-request", f"no participant {target[:64]!r} is in the room")
        log.info("room %s: %s ejects %s", room.name, by, target)
        await self._remove(room, target)

    async def _remove(self, room: Room, target: str) -> None:
        """Store the removal with the reason "ejected"; a connection held here is closed."""
        self.forget(target)
        out = room.leave(target, EJECTED, self.now_ms())
        self.sessions.let_go(room, RoomState(removed={target}), EJECTED)
        await self.hosting.run(room, out)

    # -- timed ejects --

    def watch(self, room: Room, sid: str) -> None:
        """Arm the timed eject of `sid`, whose connection is now on this node (a join or a
        resume), if its token set one."""
        self.forget(sid)
        eject_at = _info(room, sid).get("eject_at")
        if not isinstance(eject_at, int) or isinstance(eject_at, bool):
            return
        delay = max(0.0, (eject_at - self.now_ms()) / 1000)
        name = room.name
        self._timers[sid] = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._due(name, sid))
        )

    def forget(self, sid: str) -> None:
        """Drop the timer of `sid` (it left, or was ejected)."""
        handle = self._timers.pop(sid, None)
        if handle is not None:
            handle.cancel()

    async def _due(self, room_name: str, sid: str) -> None:
        """A timed eject is due: ejected, if this node still holds the session (it may have
        resumed on another node, which has a timer of its own, or left)."""
        self._timers.pop(sid, None)
        room = self.hosting.rooms.get(room_name)
        conn = self.sessions.clients.get(sid)
        held = (conn is not None and conn.room == room_name) or self.sessions.is_away(sid)
        if room is None or not held or not _present(room, sid):
            return
        log.info("room %s: %s is ejected: its meeting token's time is up", room_name, sid)
        try:
            await self._remove(room, sid)
        except BusError as exc:  # the replica, with the removal, is merged back once it can be
            log.warning("room %s: could not store the eject of %s: %s", room_name, sid, exc)


def _info(room: Room, sid: str) -> dict[str, Any]:
    participant = room.state.participants.get(sid)
    info = participant.info.value if participant is not None and participant.info else None
    return info if isinstance(info, dict) else {}


def _present(room: Room, sid: str) -> bool:
    participant = room.state.participants.get(sid)
    return participant is not None and participant.present
