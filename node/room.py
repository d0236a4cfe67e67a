"""Room logic: one node's replica of a room and who receives what. Sans-I/O.

A `Room` takes local requests (join, leave, app message, userData and session-data writes) and
remote bus events, and returns an `Output`: frames for local connections and events to publish.
Time is passed in (``now_ms``); the caller runs `poll` when `next_deadline` comes.

Every write is applied to the replica and published at once, so the writer's own state changes
at once and the bus stores every acknowledged write. What is throttled is the *events* to the
other participants, per node:

- ``participant-updated``: at most one per participant per `user_data_interval_ms`: the first
  change goes out at once, later ones are coalesced into one carrying the latest value;
- ``meeting-session-state-updated``: at most one per room per `session_data_interval_ms`, the same
  way, always carrying the converged state, to every local participant, the writer included.

Joins and leaves are never delayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from roomstate.crdt import HybridLogicalClock, RoomState
from roomstate.errors import RequestError
from roomstate.wire.events import AppMessage, BusEvent
from roomstate.wire.protocol import (
    Limits,
    SetMeetingSessionData,
    compact_size,
    encode,
    encode_state,
)

__all__ = ["Output", "Room", "RoomConfig", "Snapshot"]


@dataclass(frozen=True)
class RoomConfig:
    limits: Limits = field(default_factory=Limits)
    user_data_interval_ms: int = 100  # at most one participant-updated per participant per this
    session_data_interval_ms: int = 1000  # at most one session-state event per room per this


@dataclass
class Output:
    """What a step of the room logic asks the node to do."""

    sends: list[tuple[list[str], bytes]] = field(default_factory=list)  # (local sids, frame)
    publish: list[BusEvent] = field(default_factory=list)

    def send(self, recipients: list[str], frame: bytes) -> None:
        if recipients:
            self.sends.append((recipients, frame))


class Snapshot(NamedTuple):
    """A room's state as a `joined` frame shows it, taken at one moment."""

    participants: dict[str, dict[str, Any]]
    session_data: dict[str, Any]


class Room:
    """One room as seen by one node: the replica, the local participants, the event timers."""

    def __init__(
        self,
        name: str,
        state: RoomState,
        clock: HybridLogicalClock,
        origin: str,
        config: RoomConfig,
    ) -> None:
        self.name = name
        self.state = state  # this node's replica
        self.clock = clock  # the node's clock (shared by its rooms)
        self.origin = origin  # "{node}/{incarnation}": this node, as bus events name it
        self.config = config
        self.local: dict[str, None] = {}  # session ids connected to this node, in join order
        self._user_data_sent: dict[str, int] = {}  # sid -> when its last update went out
        self._user_data_due: dict[str, int] = {}  # sid -> when its coalesced update goes out
        self._session_sent: int | None = None  # when the last session-state event went out
        self._session_due: int | None = None  # when the coalesced session-state event goes out
        self._locations: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # see locations
        self._locations_state: RoomState | None = None  # the replica `_locations` is of
        self._locations_version = -1  # and its membership_version then

    # -- reads --

    def participant(self, session_id: str) -> dict[str, Any]:
        """A participant as the wire protocol shows it."""
        p = self.state.participants[session_id]
        info = p.info.value if p.info is not None else {}
        return {
            "session_id": session_id,
            "user_id": info.get("user_id", session_id),
            "user_name": info.get("user_name", ""),
            "userData": p.user_data.value if p.user_data is not None else None,
            "joined_at": info.get("joined_at"),
            "owner": bool(info.get("owner", False)),
        }

    def participants(self) -> dict[str, dict[str, Any]]:
        return {sid: self.participant(sid) for sid in self.state.present()}

    def session_data(self) -> dict[str, Any]:
        return self.state.session_data.value()

    def snapshot(self) -> Snapshot:
        """The participants and the session data as they are now."""
        return Snapshot(self.participants(), self.session_data())

    def joined_frame(
        self,
        request_id: str | int | None,
        session_id: str,
        resume_token: str | None = None,
        seq: str | None = None,
        *,
        snapshot: Snapshot | None = None,
        resumed: bool | None = None,
        replayed: bool | None = None,
    ) -> bytes:
        """The reply to a join, with `snapshot` (default: the state now). `seq` is the room's
        log position the snapshot stands at (what a client quotes as `resumeAfter` if no app
        message came since); `resumed` and `replayed` answer a resume attempt (None: left out)."""
        participants, data = snapshot if snapshot is not None else self.snapshot()
        flags = {"resumed": resumed, "replayed": replayed}
        return encode_state(
            "joined",
            id=request_id,
            sessionId=session_id,
            participants=participants,
            meetingSessionState={"data": data},
            resumeToken=resume_token,
            seq=seq,
            **{name: value for name, value in flags.items() if value is not None},
        )

    # -- local requests --

    def join(
        self,
        session_id: str,
        info: dict[str, Any],
        location: dict[str, Any],
        user_data: Any,
        now_ms: int,
    ) -> Output:
        stamp = self.clock.tick(now_ms)
        info = {**info, "joined_at": stamp.wall_ms}
        delta = self.state.join(session_id, info, location, user_data, stamp)
        out = self._publish(delta, now_ms)
        out.send(
            self._others(session_id), self._participant_frame("participant-joined", session_id)
        )
        self.local[session_id] = None
        return out

    def leave(self, session_id: str, reason: str, now_ms: int) -> Output:
        """A local participant is gone (left, disconnected): tell everyone."""
        self.local.pop(session_id, None)
        if session_id not in self.state.participants:
            return Output()
        frame = self._participant_frame("participant-left", session_id, reason)
        self._forget(session_id)
        out = self._publish(self.state.remove([session_id]), now_ms, reason)
        out.send(list(self.local), frame)
        return out

    def remove_lost(self, session_id: str, reason: str) -> Output:
        """Apply a removal this node already stored on the bus (a participant of a lost node)."""
        out = Output()
        participant = self.state.participants.get(session_id)
        if participant is None or not participant.present:
            self.state.remove([session_id])
            return out
        frame = self._participant_frame("participant-left", session_id, reason)
        self.local.pop(session_id, None)
        self._forget(session_id)
        self.state.remove([session_id])
        out.send(list(self.local), frame)
        return out

    def locations(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """The present participants by the (node, incarnation) holding their connection, each
        with its location as the replica has it; local ones too. The node's upkeep asks every
        room for this every second, so it is kept until a merge adds, removes or moves a
        participant (`RoomState.membership_version`): a round then costs a lookup per room, not
        a walk over every participant (at 1,000 rooms × 10 that walk took 2.4 ms of the event
        loop each second, and set the p99 latency: docs/performance.md). The answer is shared
        with later calls: read it, do not change it. A location that is not {"node",
        "incarnation"} with string values (no node writes one) is left out."""
        version = self.state.membership_version
        if self._locations_state is not self.state or self._locations_version != version:
            found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
            for sid, p in self.state.participants.items():
                location = p.location.value if p.present and p.location is not None else None
                if not isinstance(location, dict):
                    continue
                node, incarnation = location.get("node"), location.get("incarnation")
                if isinstance(node, str) and isinstance(incarnation, str):
                    found.setdefault((node, incarnation), {})[sid] = location
            self._locations, self._locations_version = found, version
            self._locations_state = self.state
        return self._locations

    def app_message(
        self, from_id: str, data: Any, to: str | tuple[str, ...], now_ms: int
    ) -> BusEvent:
        """The event to publish for an app message; it is delivered locally once stored."""
        return BusEvent(self.origin, now_ms, message=AppMessage(data, from_id, to))

    def deliver_app_message(self, message: AppMessage, seq: str) -> Output:
        """Deliver a stored app message to its local recipients; `seq` is its log position,
        which a client quotes when it resumes to have what it missed replayed."""
        out = Output()
        frame = encode("app-message", data=message.data, fromId=message.from_id, seq=seq)
        out.send(self._recipients(message), frame)
        return out

    def move(self, session_id: str, location: dict[str, Any], now_ms: int) -> RoomState:
        """The delta that moves a participant's connection to `location`, *not* applied to
        this replica: a resume stores it first, on condition that the participant is still
        where it was, and merges it only once stored."""
        return RoomState().move(session_id, location, self.clock.tick(now_ms))

    def attach(self, session_id: str) -> None:
        """A present participant's connection is (again) on this node."""
        self.local[session_id] = None

    def detach(self, session_id: str) -> None:
        """A participant's connection dropped; it stays present while it may resume."""
        self.local.pop(session_id, None)

    def resume_digest(self, session_id: str) -> str | None:
        """The digest of the participant's resume secret, if it is present and has one."""
        participant = self.state.participants.get(session_id)
        if participant is None or participant.info is None:
            return None
        digest = participant.info.value.get("resume")
        return digest if isinstance(digest, str) else None

    def set_user_data(self, session_id: str, data: Any, now_ms: int) -> Output:
        delta = self.state.set_user_data(session_id, data, self.clock.tick(now_ms))
        out = self._publish(delta, now_ms)
        self._user_data_changed(session_id, now_ms, out)
        return out

    def set_session_data(self, write: SetMeetingSessionData, now_ms: int) -> Output:
        """Apply a session-data write, refusing one whose result is over the size limit."""
        stamp = self.clock.tick(now_ms)
        candidate = self.state.session_data.copy()
        if write.merge_strategy == "replace":
            delta = candidate.replace(write.data, stamp)
        else:
            # A tombstone only for a key the room has: deleting a key it does not have changes
            # nothing, and storing one for every name a client makes up would grow without bound.
            entries = candidate.entries
            deleting = tuple(
                key for key in write.keys_to_delete if key in entries and not entries[key].deleted
            )
            delta = candidate.shallow_merge(write.data, stamp, deleting)
        # Deleted keys count as keys of null: each is kept as a tombstone until the next
        # replace, in every replica and in the store.
        stored = {key: None if e.deleted else e.value for key, e in candidate.entries.items()}
        size, limit = compact_size(stored), self.config.limits.session_data_bytes
        if size > limit:
            deleted = sum(1 for e in candidate.entries.values() if e.deleted)
            counted = (
                f", with {deleted} deleted keys, kept until the next replace," if deleted else ""
            )
            raise RequestError(
                "too-large",
                f"meeting session data would be {size} bytes{counted}; the limit is {limit}",
            )
        self.state.session_data.merge(delta)
        out = self._publish(RoomState(session_data=delta), now_ms)
        self._session_changed(now_ms, out)
        return out

    # -- remote events --

    def receive(self, event: BusEvent, now_ms: int, position: str) -> Output:
        """Apply an event read from the bus at `position` (skipping this node's own)."""
        if event.origin == self.origin:
            return Output()
        if event.message is not None:
            return self.deliver_app_message(event.message, position)
        out = Output()
        if event.delta is None:
            return out
        for stamp in event.delta.stamps():
            self.clock.observe(stamp)  # already history: never refused here
        left_frames = {
            sid: self._participant_frame("participant-left", sid, event.reason or "left")
            for sid in event.delta.removed
            if sid in self.state.participants and self.state.participants[sid].present
        }
        changes = self.state.merge(event.delta)
        for sid in changes.joined:
            out.send(self._others(sid), self._participant_frame("participant-joined", sid))
        for sid in changes.updated:
            self._user_data_changed(sid, now_ms, out)
        for sid in changes.left:
            self.local.pop(sid, None)
            self._forget(sid)
            out.send(list(self.local), left_frames[sid])
        if changes.session_data:
            self._session_changed(now_ms, out)
        return out

    # -- timers --

    def next_deadline(self) -> int | None:
        """When `poll` next has something to send, if ever."""
        if not self._user_data_due:  # the common case, checked after every app message
            return self._session_due
        times = list(self._user_data_due.values())
        if self._session_due is not None:
            times.append(self._session_due)
        return min(times, default=None)

    def poll(self, now_ms: int) -> Output:
        """Send the coalesced events that are due."""
        out = Output()
        for sid, due in list(self._user_data_due.items()):
            if due <= now_ms:
                del self._user_data_due[sid]
                self._send_user_data(sid, now_ms, out)
        if self._session_due is not None and self._session_due <= now_ms:
            self._session_due = None
            self._send_session_data(now_ms, out)
        return out

    # -- internals --

    def _publish(self, delta: RoomState, now_ms: int, reason: str | None = None) -> Output:
        return Output(publish=[BusEvent(self.origin, now_ms, delta=delta, reason=reason)])

    def _others(self, session_id: str) -> list[str]:
        return [sid for sid in self.local if sid != session_id]

    def _recipients(self, message: AppMessage) -> list[str]:
        if message.to == "*":
            return self._others(message.from_id)
        wanted = (message.to,) if isinstance(message.to, str) else message.to
        return [
            sid for sid in dict.fromkeys(wanted) if sid in self.local and sid != message.from_id
        ]

    def _participant_frame(self, kind: str, session_id: str, reason: str | None = None) -> bytes:
        if reason is None:
            return encode_state(kind, participant=self.participant(session_id))
        return encode_state(kind, participant=self.participant(session_id), reason=reason)

    def _forget(self, session_id: str) -> None:
        self._user_data_sent.pop(session_id, None)
        self._user_data_due.pop(session_id, None)

    def _user_data_changed(self, session_id: str, now_ms: int, out: Output) -> None:
        if session_id in self._user_data_due:
            return  # an update is already scheduled; it will carry the latest value
        sent = self._user_data_sent.get(session_id)
        if sent is None or now_ms - sent >= self.config.user_data_interval_ms:
            self._send_user_data(session_id, now_ms, out)
        else:
            self._user_data_due[session_id] = sent + self.config.user_data_interval_ms

    def _send_user_data(self, session_id: str, now_ms: int, out: Output) -> None:
        participant = self.state.participants.get(session_id)
        if participant is None or not participant.present:
            return
        self._user_data_sent[session_id] = now_ms
        frame = self._participant_frame("participant-updated", session_id)
        out.send(self._others(session_id), frame)

    def _session_changed(self, now_ms: int, out: Output) -> None:
        if self._session_due is not None:
            return
        sent = self._session_sent
        if sent is None or now_ms - sent >= self.config.session_data_interval_ms:
            self._send_session_data(now_ms, out)
        else:
            self._session_due = sent + self.config.session_data_interval_ms

    def _send_session_data(self, now_ms: int, out: Output) -> None:
        self._session_sent = now_ms
        frame = encode_state(
            "meeting-session-state-updated", meetingSessionState={"data": self.session_data()}
        )
        out.send(list(self.local), frame)
