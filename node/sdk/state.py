"""What a call knows of its room, sans-I/O: server frames in, daily-js-style events out.

`CallState` is the part of `CallClient` that needs no socket, kept apart from the transport as
websockets keeps its `Protocol` apart from the asyncio connection: no asyncio, no network, no
clock. A test drives it with frames and reads the events and replies it gives back.

Theory of operation:

- Requests. Each request method (`join`, `set_user_data`, ...) returns an `Outgoing` with a fresh
  id, and applies its local write at once. `encode(request)` gives the frame to send, checked
  against the node's frame limit; from then on a frame with that id is the request's reply. The
  transport reports a request it gave up on with `abandon(id, sent)`.
- Frames in. `receive_frame(frame)` applies one server frame and returns the `Reply` it carries
  when it answers an awaited request; the events it causes wait in `events_received()`.
- Large rooms. A hidden participant (Daily's ``hasPresence: false``: its object carries
  ``permissions.hasPresence: false``) is never in `participants()` but the local one; an owner
  still gets `participant-updated` about hidden ones (raised hands), emitted and not kept.
  `participant_counts()` comes from `joined` and each `participant-counts-updated`; a
  `participant-events` frame (one loop turn's membership events, batched) is unpacked into the
  same events, in order. A roster too large for one frame comes as `joined` with ``"paged":
  true`` and ``participants-page`` frames after it: the join's reply is the whole, once the last
  page is in.
- The connection. `connection_lost` (the socket closed), `join_failed` (the join raised),
  `forget_room` and `end_meeting` (leaving, closing) end what the transport ended.

Local state is kept by rebasing (`LocalWrites`): the last converged state the node sent, plus the
writes it acknowledged since, plus the writes still waiting for a reply. A write the node refuses,
or that was never sent, is rolled back; one whose reply never comes (timeout, lost socket) is
kept, as daily-js does, until the node's next state says otherwise.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Final

import orjson

from roomstate.crdt import Json
from roomstate.sdk.errors import ConnectionClosed, NotJoined, ServerError, TooLarge, server_error
from roomstate.sdk.writes import LocalWrites
from roomstate.wire.positions import position_key

__all__ = ["EVENTS", "CallState", "Event", "Outgoing", "Reply"]

logger = logging.getLogger(__name__)

Event = dict[str, Any]  # an event's payload, as daily-js gives it

EVENTS: Final = frozenset(
    {
        "loading",
        "loaded",
        "joining-meeting",
        "call-instance-destroyed",
        "joined-meeting",
        "participant-joined",
        "participant-updated",
        "participant-left",
        "app-message",
        "meeting-session-state-updated",
        "participant-counts-updated",
        "error",
        "nonfatal-error",
        "left-meeting",
    }
)
_REPLIES: Final = frozenset({"ack", "pong", "joined", "error"})
CLOSE_EJECTED: Final = 4004  # the node's close code for an ejected participant
EJECTED_MESSAGE: Final = "You were ejected from the meeting"  # the `error` event's errorMsg
_PARTICIPANT_EVENTS: Final = ("participant-joined", "participant-updated", "participant-left")


@dataclass(frozen=True)
class Outgoing:
    """A request to send: `encode` makes its frame."""

    id: int
    type: str  # the frame's type: "join", "set-user-data", ...
    fields: dict[str, Json]  # the frame's other fields


@dataclass(frozen=True)
class Reply:
    """The node's answer to awaited request `id`: its frame, and for an `error` the exception."""

    id: int
    frame: dict[str, Json]
    error: ServerError | None = None


class CallState:
    """One participant's view of one room: participants, userData, session data, positions."""

    def __init__(self, max_frame_bytes: int = 131072) -> None:
        # the node's frame limit (ROOMSTATE_FRAME_BYTES): a bigger request is refused here with
        # TooLarge, as the node would close the connection for it
        self.max_frame_bytes = max_frame_bytes
        self.session_id: str | None = None  # set by the `joined` reply
        self.resume_token: str | None = None  # the `joined` reply's, if the node sent one
        self.last_seq: str | None = None  # position of the last app message received
        self._ids = itertools.count(1)
        # id -> type of each request sent and not answered, in the order sent
        self._awaiting: dict[int, str] = {}
        self._in_meeting = False  # `joined-meeting` emitted, `left-meeting` not yet
        self._local: dict[str, Json] | None = None
        self._others: dict[str, dict[str, Json]] = {}  # session id -> present participant
        self._counts: dict[str, Json] = {"hidden": 0, "present": 0}  # the node's, latest
        self._writes = LocalWrites()
        self._events: list[tuple[str, Event]] = []  # (name, payload) not yet taken
        self._paged: dict[str, Json] | None = None  # a `joined` waiting for its pages

    @property
    def in_meeting(self) -> bool:
        """Joined: `joined-meeting` was emitted and `left-meeting` not yet."""
        return self._in_meeting

    # -- views --

    def participants(self) -> dict[str, dict[str, Json]]:
        """``{"local": the local participant, session id: participant, ...}``: copies, in
        daily-js's shape (`daily_participant`)."""
        result = {sid: daily_participant(p, False) for sid, p in self._others.items()}
        if self._local is not None:
            result["local"] = daily_participant(self._local, True)
        return result

    def participant_counts(self) -> dict[str, Json]:
        """``{"present": P, "hidden": H}``: the room's participants, this one included, as the
        node last counted them (hidden ones are never in `participants()` but the local one)."""
        return dict(self._counts)

    def meeting_session_state(self) -> dict[str, Json]:
        """``{"data": ...}``: the node's converged state with this client's writes applied."""
        return {"data": dict(self._writes.session_data)}

    def events_received(self) -> list[tuple[str, Event]]:
        """The events caused since the last call, oldest first, as (name, payload)."""
        events, self._events = self._events, []
        return events

    # -- requests --

    def join(
        self,
        token: str | None = None,
        user_name: str | None = None,
        user_data: Json = None,
        resume: str | None = None,
    ) -> Outgoing:
        """A `join`; with `resume` (an earlier session's resumeToken) the last state known is
        kept, so what changed meanwhile becomes events, and the app messages after `last_seq`
        are asked for again."""
        self._in_meeting, self.session_id = False, None
        fields = {"token": token, "userName": user_name, "userData": user_data, "resume": resume}
        if resume is not None:
            fields["resumeAfter"] = self.last_seq
        else:
            self.forget_room()
        present = {key: value for key, value in fields.items() if value is not None}
        return self._request("join", present)

    def send_app_message(self, data: Json, to: str | list[str] = "*") -> Outgoing:
        return self._request("send-app-message", {"data": data, "to": to})

    def set_user_data(self, data: Json) -> Outgoing:
        """Replace the local participant's userData, locally at once."""
        if self._local is None:
            raise NotJoined("not-joined", "join() has not finished")
        request = self._request("set-user-data", {"data": data})
        self._writes.add_user_data(request.id, data)
        self._local["userData"] = data
        return request

    def set_meeting_session_data(
        self,
        data: dict[str, Json],
        merge_strategy: str = "replace",
        keys_to_delete: list[str] | None = None,
    ) -> Outgoing:
        """Write the room's session data (`replace` or `shallow-merge`), locally at once."""
        if not isinstance(data, dict):
            raise TypeError(f"meeting session data must be a dict, not {type(data).__name__}")
        if isinstance(keys_to_delete, str | bytes):
            raise TypeError("keys_to_delete must be a list of keys, not one string")
        keys = list(keys_to_delete or [])
        fields: dict[str, Json] = {"data": data, "mergeStrategy": merge_strategy}
        if keys:
            fields["keysToDelete"] = keys
        request = self._request("set-meeting-session-data", fields)
        self._writes.add_session_write(request.id, (data, merge_strategy, keys))
        return request

    def ping(self) -> Outgoing:
        return self._request("ping", {})

    def update_participant(self, session_id: str, updates: dict[str, Json]) -> Outgoing:
        """daily-js's updateParticipant; the one update is ``{"eject": True}`` (an owner's, or
        a canAdmin token's: the node refuses others with `forbidden`)."""
        if not isinstance(session_id, str) or not session_id:
            raise TypeError("update_participant needs the participant's session id")
        if updates != {"eject": True}:
            raise ValueError('update_participant supports one update: {"eject": True}')
        return self._request("update-participant", {"sessionId": session_id, "eject": True})

    def leave(self) -> Outgoing:
        return self._request("leave", {})

    def encode(self, request: Outgoing) -> bytes:
        """The request's frame; from now on a frame with its id is its reply. A request that
        is not JSON (TypeError) or over the frame limit (TooLarge) is dropped, its write undone."""
        try:
            frame = orjson.dumps({"type": request.type, "id": request.id, **request.fields})
            if len(frame) > self.max_frame_bytes:  # the node would close the connection (1009)
                raise TooLarge(
                    "too-large",
                    f"the {request.type} frame is {len(frame)} bytes; the frame limit is "
                    f"{self.max_frame_bytes}",
                )
        except BaseException:
            self.abandon(request.id, sent=False)
            raise
        self._awaiting[request.id] = request.type
        return frame

    def abandon(self, request_id: int, sent: bool) -> None:
        """The transport gave up on a request: one not `sent` (no socket, the send failed) is
        rolled back; one maybe sent (timed out, cancelled) is kept until the node's next state
        says otherwise. No frame is its reply from now on."""
        self._awaiting.pop(request_id, None)
        self._settle(request_id, ok=sent)

    # -- frames in --

    def receive_frame(self, frame: dict[str, Json]) -> Reply | None:
        """Apply one server frame; returns its reply to an awaited request, if it is one."""
        kind = frame.get("type")
        if kind == "joined" and frame.get("paged") is True:
            self._paged = {k: v for k, v in frame.items() if k != "paged"}
            return None  # its pages follow it at once: the reply is the whole
        if kind == "participants-page" and self._paged is not None:
            have, page = self._paged.get("participants"), frame.get("participants")
            if isinstance(have, dict) and isinstance(page, dict):
                self._paged["participants"] = {**have, **page}
            if frame.get("last") is not True:
                return None
            frame, self._paged = self._paged, None
            kind = "joined"
        content = {key: value for key, value in frame.items() if key != "type"}
        if kind in _REPLIES and "id" in frame and frame["id"] in self._awaiting:
            rid = int(frame["id"])
            del self._awaiting[rid]
            if kind == "error":
                self._settle(rid, ok=False)
                error = server_error(
                    frame.get("code", ""), frame.get("message", ""), frame.get("retryAfter")
                )
                return Reply(rid, frame, error)
            self._settle(rid, ok=True)
            if kind == "joined":
                self._on_joined(frame)
            return Reply(rid, frame)
        if kind == "error":  # not the reply to an awaited request
            message = content.pop("message", "")
            self._emit("nonfatal-error", {**content, "type": "node-error", "errorMsg": message})
        elif kind in _PARTICIPANT_EVENTS:
            self._on_participant(kind, content)
        elif kind == "participant-events":  # one loop turn's, in order; ours are skipped
            for entry in frame["events"]:
                if entry.get("type") in _PARTICIPANT_EVENTS:
                    inner = {key: value for key, value in entry.items() if key != "type"}
                    self._on_participant(entry["type"], inner)
        elif kind == "participant-counts-updated":
            self._counts = dict(frame["participantCounts"])
            self._emit(kind, {"participantCounts": dict(self._counts)})
        elif kind == "meeting-session-state-updated":
            self._writes.rebase_session(frame["meetingSessionState"]["data"])
            self._emit(kind, content)
        elif kind == "app-message":
            seq = content.pop("seq", None)
            if isinstance(seq, str) and self._is_latest(seq):
                self.last_seq = seq  # the latest: two can come out of log order
            self._emit(kind, content)
        elif kind == "nonfatal-error":
            self._emit(kind, content)
        elif kind not in _REPLIES:
            logger.debug("ignoring a frame of type %r", kind)
        return None

    # -- the connection --

    def connection_lost(self, close_code: int | None, expected: bool) -> bool:
        """The socket closed: every request awaiting its reply counts as maybe applied (the
        transport fails it with ConnectionClosed). Unless the close was `expected` (leaving,
        closing, a join given up), a meeting in progress ends with `error` and `left-meeting`;
        returns whether it did."""
        self._paged = None
        for rid in list(self._awaiting):
            self._settle(rid, ok=True)
        self._awaiting.clear()
        if expected or not self._in_meeting:
            return False
        if close_code == CLOSE_EJECTED:  # as daily-js reports an ejection
            error = {"type": "ejected", "msg": EJECTED_MESSAGE}
            self._emit(
                "error", {"errorMsg": EJECTED_MESSAGE, "error": error, "closeCode": close_code}
            )
            self._end({"reason": "ejected", "closeCode": close_code})
            return True
        message = ConnectionClosed(close_code).message
        error = {"type": "connection-error", "msg": message}
        self._emit("error", {"errorMsg": message, "error": error, "closeCode": close_code})
        self._end({"reason": "connection-closed", "closeCode": close_code})
        return True

    def join_failed(self) -> None:
        """The join raised (refused, timed out, cut off): no meeting events for it, even if its
        `joined` came."""
        self._in_meeting = False

    def forget_room(self) -> None:
        """Drop the other participants, the counts, the session data and the writes still
        waiting (after leaving: the room's state is the room's only while in it; before joining
        anew)."""
        self._others.clear()
        self._counts = {"hidden": 0, "present": 0}
        self._writes.forget()

    def end_meeting(self, reason: str) -> None:
        """Emit `left-meeting` with `reason` ("left", "closed"), once per meeting."""
        self._end({"reason": reason})

    # -- internals --

    def _request(self, frame_type: str, fields: dict[str, Json]) -> Outgoing:
        return Outgoing(next(self._ids), frame_type, fields)

    def _emit(self, event: str, payload: Event) -> None:
        if "participant" in payload:  # always someone else's
            payload = {**payload, "participant": daily_participant(payload["participant"], False)}
        self._events.append((event, payload))

    def _end(self, payload: Event) -> None:
        if self._in_meeting:
            self._in_meeting = False
            self._emit("left-meeting", payload)

    def _is_latest(self, seq: str) -> bool:
        """Whether app message position `seq` comes after `last_seq`. A node can deliver two
        out of log order (its own after another node's), and a resume replays what follows
        the position quoted."""
        try:
            key = position_key(seq)
        except ValueError:  # not a position as the node gives them: never quoted back
            return False
        try:
            return self.last_seq is None or key > position_key(self.last_seq)
        except ValueError:  # (a `joined` frame's `seq` that was none)
            return True

    def _settle(self, rid: int, ok: bool) -> None:
        if self._writes.settle(rid, ok) and self._local is not None:
            self._local["userData"] = self._writes.user_data

    def _on_joined(self, frame: dict[str, Json]) -> None:
        """A `joined` reply: a first join, a resumed session, or a fresh join after a refused
        resume. After a resume attempt, what changed while away is emitted as events."""
        resume = "resumed" in frame  # the node answers a resume attempt with `resumed`
        before_others, before_session = dict(self._others), dict(self._writes.session_data)
        asked_replay = self.last_seq is not None
        sid = frame["sessionId"]
        participants: dict[str, dict[str, Json]] = dict(frame.get("participants") or {})
        # Replay from the joined frame's position from now on: what came before it is in its
        # snapshot or replayed right after it. (Kept at an older position, a resume that replayed
        # nothing would make every later resume ask for a position the log may have dropped.)
        seq = frame.get("seq")
        if isinstance(seq, str):
            self.last_seq = seq
        elif frame.get("resumed") is not True:
            self.last_seq = None
        self.session_id, self.resume_token = sid, frame.get("resumeToken")
        mine = participants.pop(sid, None)
        self._local = dict(mine) if mine is not None else {"session_id": sid, "userData": None}
        self._others = {s: p for s, p in participants.items() if not _hidden(p)}
        counts = frame.get("participantCounts")
        if isinstance(counts, dict):
            self._counts = dict(counts)
        else:  # a node from before counts: the listed ones, and this one if hidden
            hidden = int(_hidden(self._local))
            self._counts = {"hidden": hidden, "present": len(self._others) + 1 - hidden}
        self._writes.reset(frame["meetingSessionState"]["data"], self._local.get("userData"))
        self._in_meeting = True
        self._emit("joined-meeting", {"participants": self.participants()})
        if resume:
            self._emit_changes(before_others, before_session)
            if frame.get("resumed") is not True:
                message = "the session could not be resumed; joined again as a new session"
                self._emit(
                    "nonfatal-error",
                    {"type": "resume", "code": "session-lost", "errorMsg": message},
                )
            elif frame.get("replayed") is False and asked_replay:
                message = "app messages sent while disconnected could not be replayed"
                self._emit(
                    "nonfatal-error",
                    {"type": "resume", "code": "messages-lost", "errorMsg": message},
                )

    def _emit_changes(
        self, before_others: dict[str, dict[str, Json]], before_session: dict[str, Json]
    ) -> None:
        """After a resume: the participant and session-data events missed while away."""
        for sid, participant in self._others.items():
            old = before_others.get(sid)
            if old is None:
                self._emit("participant-joined", {"participant": participant})
            elif _canonical(old) != _canonical(participant):
                self._emit("participant-updated", {"participant": participant})
        for sid, participant in before_others.items():
            if sid not in self._others:
                self._emit("participant-left", {"participant": participant})
        if _canonical(before_session) != _canonical(self._writes.session_data):
            state = {"data": dict(self._writes.session_data)}
            self._emit("meeting-session-state-updated", {"meetingSessionState": state})

    def _on_participant(self, kind: str, content: dict[str, Json]) -> None:
        """One participant event (alone, or from a batch), about someone else: applied, then
        emitted. One about a hidden participant (an owner's) is emitted but not kept."""
        participant = content["participant"]
        sid = participant["session_id"]
        if sid == self.session_id:
            return  # never about us (a batch lists ours too); the local record is ours
        if kind == "participant-left" or _hidden(participant):
            self._others.pop(sid, None)
        else:
            self._others[sid] = participant
        self._emit(kind, content)


def daily_participant(participant: dict[str, Json], local: bool) -> dict[str, Json]:
    """A copy of a participant in daily-js's shape: `local`, `owner`, and `permissions` with
    daily-js's defaults under the node's. `joined_at` stays Unix time in milliseconds."""
    given = participant.get("permissions")
    permissions: dict[str, Json] = {
        "hasPresence": True,
        "canSend": True,
        "canReceive": {"base": True},
        "canAdmin": False,
        **(given if isinstance(given, dict) else {}),
    }
    owner = participant.get("owner") is True
    return {**participant, "local": local, "owner": owner, "permissions": permissions}


def _hidden(participant: Json) -> bool:
    """Whether a participant object is a hidden one's (``permissions.hasPresence: false``)."""
    permissions = participant.get("permissions") if isinstance(participant, dict) else None
    return isinstance(permissions, dict) and permissions.get("hasPresence") is False


def _canonical(value: Json) -> bytes:
    """JSON with object keys sorted, as the node encodes state (key order does not count)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
