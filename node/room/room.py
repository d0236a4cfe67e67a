"""The `Room`: one node's replica of a room and who receives what. Sans-I/O.

A `Room` takes local requests (join, leave, app message, userData and session-data writes) and
remote bus events, and returns an `Output`: frames for local connections and events to publish.
Time is passed in (``now_ms``); the caller runs `poll` when `next_deadline` comes.

Every write is applied to the replica and published at once, so the writer's own state changes
at once and the bus stores every acknowledged write. What is paced is the *events* to the
other participants, per node (pacing.py):

- ``participant-updated``: at most one per participant per `user_data_interval_ms`: the first
  change goes out at once, later ones are coalesced into one carrying the latest value;
- ``meeting-session-state-updated``: at most one per room per `session_data_interval_ms`, the same
  way, always carrying the converged state, to every local participant, the writer included;
- ``participant-counts-updated``: at most one per room per `counts_interval_ms`, the same way,
  after the turn's participant events, and with the open batch of them if one is open;
- participant events (joined, updated, left) that follow another in the same loop turn wait for
  the end of the turn (`next_deadline` is then now) and go out together; any other frame of the
  room sends them first, so that nothing overtakes them.

Hidden participants (roster.py) are never listed or announced; owners get their userData updates.
"""

from __future__ import annotations

from typing import Any

import orjson

from roomstate.crdt import HybridLogicalClock, RoomState
from roomstate.room.joined import JoinReply, members
from roomstate.room.outputs import Output, RoomConfig, Snapshot
from roomstate.room.pacing import CountsPacer, EventBatch, Throttle
from roomstate.room.roster import Roster, paginate
from roomstate.room.routing import recipients
from roomstate.room.writes import Locations, session_data_delta
from roomstate.wire.events import AppMessage, BusEvent
from roomstate.wire.protocol import SetMeetingSessionData, encode, encode_state

__all__ = ["Room"]


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
        self.roster = Roster(state)  # who is listed, hidden, counted; their encodings
        # session ids connected to this node -> when they became local (an `EventBatch` tick),
        # in that order
        self.local: dict[str, int] = {}
        self._owners: dict[str, None] = {}  # the local participants that are owners
        # participant events waiting for the end of the turn (or of the window, in a storm)
        self._batch = EventBatch(config.membership_batch_ms)
        self._user_data: Throttle[str] = Throttle(config.user_data_interval_ms)
        self._session: Throttle[None] = Throttle(config.session_data_interval_ms)
        self._counts = CountsPacer(config.counts_interval_ms)
        self._locations = Locations()  # who is where, kept until the membership changes

    # -- reads --

    def participant(self, session_id: str) -> dict[str, Any]:
        """A participant as the wire protocol shows it."""
        return self.roster.participant(session_id)

    def participants(self) -> dict[str, dict[str, Any]]:
        """The listed participants: present and not hidden."""
        return self.roster.listed()

    def participant_counts(self) -> dict[str, int]:
        """``{"hidden": H, "present": P}``, from this replica."""
        return self.roster.counts()

    def session_data(self) -> dict[str, Any]:
        return self.state.session_data.value()

    def snapshot(self, session_id: str | None = None) -> Snapshot:
        """The participants and the session data as they are now, as `session_id` sees them
        (a hidden participant sees itself too)."""
        participants = self.participants()
        if session_id is not None and self.roster.hidden(session_id):
            participants[session_id] = self.participant(session_id)
        return Snapshot(participants, self.session_data(), self.participant_counts())

    def joined_frames(
        self,
        request_id: str | int | None,
        session_id: str,
        resume_token: str | None = None,
        seq: str | None = None,
        *,
        snapshot: Snapshot | None = None,
        resumed: bool | None = None,
        replayed: bool | None = None,
    ) -> list[bytes]:
        """The reply to a join, with `snapshot` (default: the state now). `seq` is the room's
        log position the snapshot stands at (what a client quotes as `resumeAfter` if no app
        message came since); `resumed` and `replayed` answer a resume attempt (None: left out).
        Without a snapshot the participants come from the roster's kept encodings. A roster over
        `roster_page_bytes`: `joined` has the first page and ``"paged": true``, and
        ``participants-page`` frames follow, the last with ``"last": true``."""
        limit = self.config.roster_page_bytes
        if snapshot is None:
            pages = self.roster.pages(session_id, limit)
            data, counts = self.session_data(), self.participant_counts()
            self._counts.seen[session_id] = counts
        else:
            participants, data, kept = snapshot
            counts = kept if kept is not None else self.participant_counts()
            pages = paginate(members(participants), limit)
        reply = JoinReply(request_id, session_id, resume_token, seq, resumed, replayed)
        return reply.frames(pages, counts, data)

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
        version = self.state.membership_version
        delta = self.state.join(session_id, info, location, user_data, stamp)
        self.roster.track(version, [session_id], [])
        out = self._publish(delta, now_ms)
        self._announce(out, "participant-joined", session_id, now_ms)
        self._counts.changed(now_ms)
        self.attach(session_id)
        return out

    def leave(self, session_id: str, reason: str, now_ms: int) -> Output:
        """A local participant is gone (left, disconnected): tell everyone."""
        self.detach(session_id)
        if session_id not in self.state.participants:
            return Output()
        return self._remove(session_id, reason, now_ms, publish=True)

    def remove_lost(self, session_id: str, reason: str, now_ms: int = 0) -> Output:
        """Apply a removal this node already stored on the bus (a participant of a lost node)."""
        participant = self.state.participants.get(session_id)
        if participant is None or not participant.present:
            version = self.state.membership_version
            self.state.remove([session_id])
            self.roster.track(version, [], [session_id])
            return Output()
        return self._remove(session_id, reason, now_ms, publish=False)

    def locations(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """The present participants by the (node, incarnation) holding their connection
        (`Locations.of`: kept until the membership changes; read it, do not change it)."""
        return self._locations.of(self.state)

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
        self._emit(out, recipients(message, self.local), frame)
        return out

    def replay_app_message(self, message: AppMessage, seq: str, session_id: str) -> bytes | None:
        """The frame of a stored app message for `session_id` if it is a recipient (a resume
        replaying what it missed); nothing else is sent."""
        if session_id not in recipients(message, self.local):
            return None
        return encode("app-message", data=message.data, fromId=message.from_id, seq=seq)

    def move(self, session_id: str, location: dict[str, Any], now_ms: int) -> RoomState:
        """The delta that moves a participant's connection to `location`, *not* applied to
        this replica: a resume stores it first, on condition that the participant is still
        where it was, and merges it only once stored."""
        return RoomState().move(session_id, location, self.clock.tick(now_ms))

    def attach(self, session_id: str) -> None:
        """A present participant's connection is (again) on this node: it receives the
        participant events that come after this (the earlier ones are in its `joined`)."""
        self.local.pop(session_id, None)
        self.local[session_id] = self._batch.tick()
        p = self.state.participants.get(session_id)
        if p is not None and p.info is not None and p.info.value.get("owner") is True:
            self._owners[session_id] = None

    def detach(self, session_id: str) -> None:
        """A participant's connection dropped; it stays present while it may resume."""
        self.local.pop(session_id, None)
        self._owners.pop(session_id, None)
        self._counts.seen.pop(session_id, None)

    def set_user_data(self, session_id: str, data: Any, now_ms: int) -> Output:
        delta = self.state.set_user_data(session_id, data, self.clock.tick(now_ms))
        self.roster.touched(session_id)
        out = self._publish(delta, now_ms)
        self._user_data_changed(session_id, now_ms, out)
        return out

    def set_session_data(self, write: SetMeetingSessionData, now_ms: int) -> Output:
        """Apply a session-data write, refusing one whose result is over the size limit."""
        limit = self.config.limits.session_data_bytes
        delta = session_data_delta(self.state, write, self.clock.tick(now_ms), limit)
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
            if sid in self.state.participants
            and self.state.participants[sid].present
            and not self.roster.hidden(sid)
        }
        version = self.state.membership_version
        changes = self.state.merge(event.delta)
        self.roster.track(version, changes.joined, changes.left)
        for sid in changes.joined:
            self._announce(out, "participant-joined", sid, now_ms)
        for sid in changes.updated:
            self.roster.touched(sid)
            self._user_data_changed(sid, now_ms, out)
        for sid in changes.left:
            self.detach(sid)
            self._forget(sid)
            if sid in left_frames:
                self._event(out, sid, left_frames[sid], False, now_ms)
        if changes.joined or changes.left:
            self._counts.changed(now_ms)
        if changes.session_data:
            self._session_changed(now_ms, out)
        return out

    def flush_now(self) -> Output:
        """The participant events waiting for their batch, at once (a shutdown closes the
        connections before the batch's window ends)."""
        out = Output()
        self._flush(out)
        return out

    # -- timers --

    def next_deadline(self) -> int | None:
        """When `poll` next has something to send, if ever: the end of the open batch of
        participant events (the next loop turn, or the end of its window), or a coalesced
        event."""
        times = [self._batch.closes_at(), self._counts_due(), self._session.next_deadline()]
        if self._user_data.due:
            times.append(self._user_data.next_deadline())
        return min((t for t in times if t is not None), default=None)

    def poll(self, now_ms: int) -> Output:
        """Send what is due: the turn's participant events, then the coalesced events."""
        out = Output()
        for sid in self._user_data.take_due(now_ms):
            self._send_user_data(sid, now_ms, out)
        counts_due = self._counts_due()  # before the batch closes (and opens the next)
        closes_at = self._batch.closes_at()
        if closes_at is not None and closes_at <= now_ms:
            self._batch.close(now_ms, len(self.local), len(self._owners))
            self._flush(out)
        if self._session.take_due(now_ms):
            self._send_session_data(out)
        if counts_due is not None and counts_due <= now_ms:
            counts, recipients = self._counts.take(now_ms, self.participant_counts, self.local)
            if counts is not None:
                frame = encode_state("participant-counts-updated", participantCounts=counts)
                self._emit(out, recipients, frame)
        return out

    def _counts_due(self) -> int | None:
        """When the counts go out: when due, or with the open batch of participant events if
        one is open then (a recipient's two frames go out in one write)."""
        due, closes_at = self._counts.due, self._batch.closes_at()
        return due if due is None or closes_at is None else max(due, closes_at)

    # -- internals --

    def _publish(self, delta: RoomState, now_ms: int, reason: str | None = None) -> Output:
        return Output(publish=[BusEvent(self.origin, now_ms, delta=delta, reason=reason)])

    def _participant_frame(self, kind: str, session_id: str, reason: str | None = None) -> bytes:
        participant = orjson.Fragment(self.roster.encoded(session_id))
        if reason is None:
            return encode_state(kind, participant=participant)
        return encode_state(kind, participant=participant, reason=reason)

    def _remove(self, session_id: str, reason: str, now_ms: int, publish: bool) -> Output:
        """Remove a participant from the replica, publishing the removal or not (stored
        already), and tell everyone unless it was hidden."""
        frame = self._participant_frame("participant-left", session_id, reason)
        hidden = self.roster.hidden(session_id)
        version = self.state.membership_version
        self.detach(session_id)
        self._forget(session_id)
        delta = self.state.remove([session_id])
        out = self._publish(delta, now_ms, reason) if publish else Output()
        self.roster.track(version, [], [session_id])
        if not hidden:
            self._event(out, session_id, frame, False, now_ms)
        self._counts.changed(now_ms)
        return out

    def _forget(self, session_id: str) -> None:
        self._user_data.forget(session_id)

    def _emit(self, out: Output, recipients: list[str], frame: bytes) -> None:
        """Send a frame that is not a participant event: the pending ones go first."""
        self._flush(out)
        out.send(recipients, frame)

    def _flush(self, out: Output) -> None:
        self._batch.flush(self.local, self._owners, out)

    def _event(
        self, out: Output, subject: str, frame: bytes, owners_only: bool, now_ms: int
    ) -> None:
        """A participant event: at once if it is the turn's first, else at the end of it (or
        of the window, in a storm)."""
        if self._batch.over(now_ms):  # its poll has not run yet
            self._batch.close(now_ms, len(self.local), len(self._owners))
        self._batch.add(subject, frame, owners_only)
        if self._batch.since is None:
            self._batch.open(now_ms, len(self.local), len(self._owners))
            self._flush(out)

    def _announce(self, out: Output, kind: str, session_id: str, now_ms: int) -> None:
        """A participant joined: announced unless hidden."""
        if not self.roster.hidden(session_id):
            self._event(out, session_id, self._participant_frame(kind, session_id), False, now_ms)

    def _user_data_changed(self, session_id: str, now_ms: int, out: Output) -> None:
        if self._user_data.changed(session_id, now_ms):
            self._send_user_data(session_id, now_ms, out)

    def _send_user_data(self, session_id: str, now_ms: int, out: Output) -> None:
        participant = self.state.participants.get(session_id)
        if participant is None or not participant.present:
            return
        frame = self._participant_frame("participant-updated", session_id)
        # A hidden participant's userData goes to the owners only (a raised hand).
        self._event(out, session_id, frame, self.roster.hidden(session_id), now_ms)

    def _session_changed(self, now_ms: int, out: Output) -> None:
        if self._session.changed(None, now_ms):
            self._send_session_data(out)

    def _send_session_data(self, out: Output) -> None:
        frame = encode_state(
            "meeting-session-state-updated", meetingSessionState={"data": self.session_data()}
        )
        self._emit(out, list(self.local), frame)
