"""The Python asyncio client SDK: daily-js's call object, in Python naming.

Example::

    async with CallClient() as call:
        call.on("app-message", lambda event: print(event["fromId"], event["data"]))
        joined = await call.join("http://127.0.0.1:8080/rooms/demo", user_name="ada")
        print(joined["sessionId"], list(call.participants()))
        await call.set_user_data({"hand": "raised"})  # participants()["local"] changes at once
        await call.set_meeting_session_data({"topic": "crdts"}, merge_strategy="shallow-merge")
        print(call.meeting_session_state()["data"])  # the write, before the server's batch
        await call.send_app_message({"hello": "world"}, to="*")
        update = await call.next_event("meeting-session-state-updated")  # tests: no sleeps
    # leaving the block sends `leave` and closes the socket and the HTTP session

Local state changes at once and is kept by rebasing: the last converged state the server sent,
plus the writes it acknowledged since, plus the writes still waiting for a reply. A write the
server refuses is rolled back; one whose reply never comes (timeout, lost socket) is kept, as
daily-js does, until the server's next state says otherwise.

Exceptions::

    ClientError                 the root; every one has `code` and `message`
    ├── ServerError             the node replied `error`; one subclass per wire code:
    │   BadJson, BadRequest, UnknownType, NotJoined, AlreadyJoined, TooLarge,
    │   Unauthorized, Forbidden, RateLimited, Unavailable, Internal
    ├── ConnectionClosed        the socket closed before the reply; `close_code`
    ├── RequestTimeout          no reply in time (also a `TimeoutError`)
    └── RestError               a REST call answered >= 400; `status`, `error`, `info`
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

__all__ = [
    "EVENTS",
    "AlreadyJoined",
    "BadJson",
    "BadRequest",
    "CallClient",
    "ClientError",
    "ConnectionClosed",
    "Forbidden",
    "Internal",
    "NotJoined",
    "RateLimited",
    "RequestTimeout",
    "RestClient",
    "RestError",
    "ServerError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownType",
    "room_ws_url",
]

logger = logging.getLogger(__name__)

Json = Any
Event = dict[str, Any]
Handler = Callable[[Event], object]  # a plain function, or one returning an awaitable
SessionWrite = tuple[dict[str, Json], str, list[str]]  # (data, mergeStrategy, keysToDelete)

EVENTS: Final = frozenset(
    {
        "joined-meeting",
        "participant-joined",
        "participant-updated",
        "participant-left",
        "app-message",
        "meeting-session-state-updated",
        "error",
        "nonfatal-error",
        "left-meeting",
    }
)
_ROOM: Final = r"[A-Za-z0-9._-]{1,64}"
_REPLIES: Final = frozenset({"ack", "pong", "joined", "error"})


class ClientError(Exception):
    """Root of every error the SDK raises on purpose."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message  # for a server error: the rule broken, as the node worded it


class ServerError(ClientError):
    """The node answered a request with `error`; `code` is the wire code."""


class BadJson(ServerError): ...


class BadRequest(ServerError): ...


class UnknownType(ServerError): ...


class NotJoined(ServerError): ...


class AlreadyJoined(ServerError): ...


class TooLarge(ServerError): ...


class Unauthorized(ServerError): ...


class Forbidden(ServerError): ...


class RateLimited(ServerError): ...


class Unavailable(ServerError): ...


class Internal(ServerError): ...


_ERRORS: Final[dict[str, type[ServerError]]] = {
    "bad-json": BadJson,
    "bad-request": BadRequest,
    "unknown-type": UnknownType,
    "not-joined": NotJoined,
    "already-joined": AlreadyJoined,
    "too-large": TooLarge,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "rate-limited": RateLimited,
    "unavailable": Unavailable,
    "internal": Internal,
}


class ConnectionClosed(ClientError):
    """The WebSocket closed while a request waited for its reply (or before it was sent)."""

    def __init__(self, close_code: int | None) -> None:
        super().__init__("connection-closed", f"the connection closed (code {close_code})")
        self.close_code = close_code  # the WebSocket close code; 1006 when the socket was lost


class RequestTimeout(ClientError, TimeoutError):
    """No reply to a request within the client's timeout."""


class RestError(ClientError):
    """A REST call answered with an error status; `error` and `info` are the body's fields."""

    def __init__(self, status: int, error: str, info: Json) -> None:
        super().__init__(error, f"HTTP {status}: {info}")
        self.status = status
        self.error = error
        self.info = info


def room_ws_url(url: str) -> str:
    """The WebSocket endpoint of a room URL: ``http://H/rooms/R`` -> ``ws://H/v1/rooms/R/ws``.

    A path prefix before ``/rooms/`` is kept (a node behind a proxy path); an endpoint URL
    (``ws://H/v1/rooms/R/ws``) is returned as it is.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"a room URL is http(s)://HOST:PORT/rooms/ROOM, not {url!r}")
    if re.fullmatch(rf"(.*)/v1/rooms/{_ROOM}/ws", parts.path):
        return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
    match = re.fullmatch(rf"(.*)/rooms/({_ROOM})/?", parts.path)
    if match is None:
        raise ValueError(f"a room URL's path is /rooms/ROOM (1-64 of A-Za-z0-9._-), not {url!r}")
    path = f"{match[1]}/v1/rooms/{match[2]}/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _after(a: str, b: str) -> bool:
    """Whether log position `a` ("N", or a Redis stream id "MS-N") comes after `b`. A node can
    deliver two app messages out of log order (its own after another node's), and a resume
    replays what follows the position quoted."""

    def key(position: str) -> tuple[int, ...]:
        return tuple(int(part) for part in position.split("-") if part.isdigit())

    return key(a) > key(b)


def _canonical(value: Json) -> bytes:
    """JSON with object keys sorted, as the node encodes state (key order does not count)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _apply_write(base: dict[str, Json], write: SessionWrite) -> dict[str, Json]:
    """A session-data write applied to a local copy, as the node applies it to the replica."""
    data, strategy, keys_to_delete = write
    if strategy == "replace":
        return dict(data)
    merged = {**base, **data}
    for key in keys_to_delete:
        merged.pop(key, None)
    return merged


class CallClient:
    """One participant's connection to one room at a time, like daily-js's call object.

    A background reader task owns every change that comes from the node; the public methods
    change local state at once and then wait for the node's reply. With `record_events` (the
    default) every event is also kept for `events` and `next_event`; a long-running client that
    sends many messages (a benchmark) turns it off to keep memory flat.
    """

    def __init__(
        self, timeout: float = 10.0, record_events: bool = True, max_frame_bytes: int = 131072
    ) -> None:
        self.timeout = timeout  # seconds to wait for the reply to each request
        # the node's frame limit (ROOMSTATE_FRAME_BYTES): a bigger request is refused here with
        # TooLarge, as the node would close the connection for it
        self.max_frame_bytes = max_frame_bytes
        self.record_events = record_events
        self.session_id: str | None = None  # set by the `joined` reply
        self.resume_token: str | None = None  # the `joined` reply's, if the node sent one
        self.last_seq: str | None = None  # position of the last app message received
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse[Literal[True]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Json]]] = {}  # request id -> reply
        self._leaving = False  # a close is expected: not an `error` event
        self._left = True  # `left-meeting` was emitted for the current connection
        self._local: dict[str, Json] | None = None
        self._others: dict[str, dict[str, Json]] = {}  # session id -> participant
        self._session_base: dict[str, Json] = {}  # the node's last state + writes acked since
        self._session_pending: dict[int, SessionWrite] = {}  # request id -> write not yet acked
        # userData as the node has it as far as known (joined, or the last write answered), and
        # the writes not answered yet
        self._user_data_base: Json = None
        self._user_data_pending: dict[int, Json] = {}
        self._session_view: dict[str, Json] = {}  # base with the pending writes applied
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()  # running coroutine handlers
        self._history: dict[str, list[Event]] = {}  # event name -> every event so far
        self._cursor: dict[str, int] = {}  # event name -> index of the next for next_event
        self._arrived = asyncio.Event()  # set, then replaced, whenever an event is recorded

    async def __aenter__(self) -> CallClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.leave()

    # -- requests --

    async def join(
        self,
        url: str,
        token: str | None = None,
        user_name: str | None = None,
        user_data: Json = None,
        resume: str | None = None,
    ) -> dict[str, Json]:
        """Connect to the room at `url` and join it; returns the `joined` frame's content.

        On any failure (refused, timed out, no route) the connection is closed before the
        exception propagates, so the client can join again.
        """
        if self._ws is not None:
            raise AlreadyJoined("already-joined", "this client is connected; call leave() first")
        ws_url = room_ws_url(url)
        self._http = aiohttp.ClientSession()
        # (`left-meeting` and a lost connection's `error` only once joined: `_on_joined`)
        self._leaving, self._left, self.session_id = False, True, None
        fields = {"token": token, "userName": user_name, "userData": user_data, "resume": resume}
        if resume is not None:
            fields["resumeAfter"] = self.last_seq  # replay the app messages after this one
        else:  # (a resume keeps the last state known: what changed meanwhile becomes events)
            self._others.clear()
            self._forget_session()
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            try:
                async with asyncio.timeout_at(deadline):  # connecting and the reply, together
                    self._ws = await self._http.ws_connect(ws_url)
                    self._reader = asyncio.create_task(
                        self._read(self._ws), name=f"roomstate {ws_url}"
                    )
                    present = {key: value for key, value in fields.items() if value is not None}
                    joined = await self._request(next(self._ids), "join", **present)
            except TimeoutError as exc:
                if isinstance(exc, RequestTimeout):
                    raise
                raise RequestTimeout(
                    "timeout", f"could not join at {ws_url} within {self.timeout} s"
                ) from None
        except BaseException:
            self._left = True
            # A node that did not answer in time is not waited for again to close.
            await self._shutdown(close_wait=max(0.0, deadline - asyncio.get_running_loop().time()))
            raise
        return {key: value for key, value in joined.items() if key not in ("type", "id")}

    async def send_app_message(self, data: Json, to: str | list[str] = "*") -> None:
        """Send `data` to every other participant (``"*"``), one session id, or a list."""
        await self._request(next(self._ids), "send-app-message", data=data, to=to)

    async def set_user_data(self, data: Json) -> None:
        """Replace the local participant's userData: locally at once, then on the node."""
        self._check_connected()
        if self._local is None:
            raise NotJoined("not-joined", "join() has not finished")
        rid = next(self._ids)
        self._user_data_pending[rid] = data
        self._local["userData"] = data
        await self._request(rid, "set-user-data", data=data)

    async def set_meeting_session_data(
        self,
        data: dict[str, Json],
        merge_strategy: str = "replace",
        keys_to_delete: list[str] | None = None,
    ) -> None:
        """Write the room's session data (`replace` or `shallow-merge`); local state at once."""
        if not isinstance(data, dict):
            raise TypeError(f"meeting session data must be a dict, not {type(data).__name__}")
        if isinstance(keys_to_delete, str | bytes):
            raise TypeError("keys_to_delete must be a list of keys, not one string")
        rid = next(self._ids)
        self._check_connected()
        keys = list(keys_to_delete or [])
        self._session_pending[rid] = (data, merge_strategy, keys)
        self._refresh_session()
        fields: dict[str, Json] = {"data": data, "mergeStrategy": merge_strategy}
        if keys:
            fields["keysToDelete"] = keys
        await self._request(rid, "set-meeting-session-data", **fields)

    async def ping(self) -> float:
        """Round trip to the node, in seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._request(next(self._ids), "ping")
        return loop.time() - start

    async def leave(self) -> None:
        """Leave the room and close everything; safe to call at any time, more than once.

        Best effort: a node that does not answer or a socket already lost is logged, not
        raised, since the client is gone either way. Emits `left-meeting` once.
        """
        self._leaving = True
        reader = self._reader
        try:
            if self.session_id is not None and self._ws is not None and not self._ws.closed:
                await self._request(next(self._ids), "leave")
                if reader is not None:  # the node closes with 1000 after the ack
                    await asyncio.wait({reader}, timeout=self.timeout)
        except ClientError as exc:
            logger.debug("leave: %s", exc)
        finally:
            await self._shutdown()
            self._others.clear()
            self._forget_session()  # meeting_session_state() is the room's only while in it
        self._emit_left({"reason": "left"})

    async def close(self) -> None:
        """Drop the connection without leaving: the others see ``participant-left`` with reason
        ``disconnected``, as if the network had gone. Safe to call after `leave`. The last
        state known is kept: a `join(url, resume=...)` then emits what changed meanwhile."""
        await self._shutdown()
        self._emit_left({"reason": "closed"})

    # -- local state --

    def participants(self) -> dict[str, dict[str, Json]]:
        """``{"local": the local participant, session id: participant, ...}`` (copies)."""
        result = {sid: dict(p) for sid, p in self._others.items()}
        if self._local is not None:
            result["local"] = dict(self._local)
        return result

    def meeting_session_state(self) -> dict[str, Json]:
        """``{"data": ...}``: the node's converged state with this client's writes applied."""
        return {"data": dict(self._session_view)}

    # -- events --

    def on(self, event: str, handler: Handler) -> None:
        """Call `handler(event)` for each event named `event`; a coroutine runs as a task."""
        self._handlers.setdefault(_check_event(event), []).append(handler)

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove `handler` from `event`, or every handler of `event`."""
        handlers = self._handlers.get(_check_event(event), [])
        if handler is None:
            handlers.clear()
        elif handler in handlers:
            handlers.remove(handler)

    def events(self, event: str) -> list[Event]:
        """Every event named `event` received so far, oldest first."""
        return list(self._history.get(_check_event(event), []))

    async def next_event(
        self,
        event: str,
        timeout: float = 5.0,
        predicate: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The next event named `event` (matching `predicate`) not yet returned by this method.

        Events are buffered from the start, so one that arrived before the call is returned
        at once; events skipped by `predicate` are consumed. Raises `TimeoutError`.
        """
        if not self.record_events:
            raise RuntimeError("next_event needs CallClient(record_events=True)")
        history = self._history.setdefault(_check_event(event), [])
        try:
            async with asyncio.timeout(timeout):
                while True:
                    index = self._cursor.get(event, 0)
                    while index < len(history):
                        found, index = history[index], index + 1
                        if predicate is None or predicate(found):
                            self._cursor[event] = index
                            return found
                    self._cursor[event] = index
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(f"no {event!r} event within {timeout} s") from None

    # -- internals --

    def _check_connected(self) -> None:
        if self._ws is None:
            raise NotJoined("not-joined", "this client is not connected; call join() first")
        if self._ws.closed:
            raise ConnectionClosed(self._ws.close_code)

    async def _request(self, rid: int, frame_type: str, **fields: Json) -> dict[str, Json]:
        """Send one request and wait for the reply with its id. A write that was not sent
        (not JSON, over the frame limit, no socket) is rolled back; one sent but not answered
        (timed out, or the caller cancelled) is kept until the node's next state says otherwise."""
        try:
            self._check_connected()
            assert self._ws is not None
            frame = orjson.dumps({"type": frame_type, "id": rid, **fields})  # TypeError: not JSON
            if len(frame) > self.max_frame_bytes:  # the node would close the connection (1009)
                raise TooLarge(
                    "too-large",
                    f"the {frame_type} frame is {len(frame)} bytes; the frame limit is "
                    f"{self.max_frame_bytes}",
                )
            future: asyncio.Future[dict[str, Json]] = asyncio.get_running_loop().create_future()
            self._pending[rid] = future
            try:
                await self._ws.send_str(frame.decode())
            except (ConnectionError, aiohttp.ClientError):
                raise ConnectionClosed(self._ws.close_code) from None
        except asyncio.CancelledError:  # while sending: maybe sent
            self._settle(rid, ok=True)
            self._pending.pop(rid, None)
            raise
        except BaseException:
            self._settle(rid, ok=False)  # never sent: roll the local write back
            self._pending.pop(rid, None)
            raise
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            self._settle(rid, ok=True)  # maybe applied: keep it until the node says otherwise
            raise RequestTimeout(
                "timeout", f"no reply to {frame_type} within {self.timeout} s"
            ) from None
        except asyncio.CancelledError:
            self._settle(rid, ok=True)  # the caller stopped waiting: as after a timeout
            raise
        finally:
            self._pending.pop(rid, None)

    def _settle(self, rid: int, ok: bool) -> None:
        """A write answered (`ok`: stored, or maybe: no reply) is folded into the base; one
        refused, or never sent, is dropped."""
        if rid in self._user_data_pending:
            # The local userData is the newest write not answered yet, else the last the node
            # took (a refused write is undone even when an earlier one, refused too, is pending).
            data = self._user_data_pending.pop(rid)
            if ok:
                self._user_data_base = data
            if self._local is not None:
                pending = list(self._user_data_pending.values())
                self._local["userData"] = pending[-1] if pending else self._user_data_base
            return
        write = self._session_pending.pop(rid, None)
        if write is not None:
            if ok:
                self._session_base = _apply_write(self._session_base, write)
            self._refresh_session()

    def _forget_session(self) -> None:
        """Drop the room's session data and the writes still waiting (leaving, joining anew)."""
        self._session_base = {}
        self._session_pending.clear()
        self._user_data_pending.clear()
        self._refresh_session()

    def _refresh_session(self) -> None:
        view = self._session_base
        for write in self._session_pending.values():
            view = _apply_write(view, write)
        self._session_view = dict(view)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[Literal[True]]) -> None:
        """The reader task: dispatch every frame until the socket closes."""
        try:
            while True:
                message = await ws.receive()
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    try:
                        self._dispatch(orjson.loads(message.data))
                    except Exception:
                        logger.exception("could not handle the frame %.200r", message.data)
                else:  # CLOSE, CLOSING, CLOSED or ERROR (pings are answered inside aiohttp)
                    break
        finally:
            closed = ConnectionClosed(ws.close_code)
            for rid, future in list(self._pending.items()):
                self._settle(rid, ok=True)
                if not future.done():
                    future.set_exception(closed)
        if not self._leaving and not self._left:  # (a join that failed raises instead)
            logger.warning("connection lost (close code %s)", ws.close_code)
            self._emit("error", {"errorMsg": closed.message, "closeCode": ws.close_code})
            self._emit_left({"reason": "connection-closed", "closeCode": ws.close_code})

    def _dispatch(self, frame: dict[str, Json]) -> None:
        """Apply one server frame to local state, answer its request, emit its event."""
        kind = frame.get("type")
        content = {key: value for key, value in frame.items() if key != "type"}
        future = self._pending.get(frame["id"]) if "id" in frame else None
        if kind in _REPLIES and future is not None:
            # A caller that stopped waiting (cancelled, timed out) has a done future.
            if kind == "error":
                self._settle(frame["id"], ok=False)
                error = _ERRORS.get(frame.get("code", ""), ServerError)
                if not future.done():
                    future.set_exception(error(frame.get("code", ""), frame.get("message", "")))
                return
            self._settle(frame["id"], ok=True)
            if not future.done():
                future.set_result(frame)
            if kind == "joined":
                self._on_joined(frame)
        elif kind == "error":  # not the reply to a waiting request
            self._emit("nonfatal-error", content)
        elif kind in ("participant-joined", "participant-updated", "participant-left"):
            self._on_participant(kind, frame["participant"])
            self._emit(kind, content)
        elif kind == "meeting-session-state-updated":
            self._session_base = dict(frame["meetingSessionState"]["data"])
            self._refresh_session()
            self._emit(kind, content)
        elif kind == "app-message":
            seq = content.pop("seq", None)
            if isinstance(seq, str) and (self.last_seq is None or _after(seq, self.last_seq)):
                self.last_seq = seq  # the latest: two can come out of log order
            self._emit(kind, content)
        elif kind == "nonfatal-error":
            self._emit(kind, content)
        elif kind not in _REPLIES:
            logger.debug("ignoring a frame of type %r", kind)

    def _on_joined(self, frame: dict[str, Json]) -> None:
        """A `joined` reply: a first join, a resumed session, or a fresh join after a refused
        resume. After a resume attempt, what changed while away is emitted as events."""
        resume = "resumed" in frame  # the node answers a resume attempt with `resumed`
        before_others, before_session = dict(self._others), dict(self._session_view)
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
        self._user_data_base = self._local.get("userData")
        self._user_data_pending.clear()
        self._others = participants
        self._session_base = dict(frame["meetingSessionState"]["data"])
        self._session_pending.clear()
        self._refresh_session()
        self._left = False
        self._emit("joined-meeting", {"participants": self.participants()})
        if resume:
            self._emit_changes(before_others, before_session)
            if frame.get("resumed") is not True:
                message = "the session could not be resumed; joined again as a new session"
                self._emit(
                    "nonfatal-error", {"type": "resume", "code": "session-lost", "message": message}
                )
            elif frame.get("replayed") is False and asked_replay:
                message = "app messages sent while disconnected could not be replayed"
                self._emit(
                    "nonfatal-error",
                    {"type": "resume", "code": "messages-lost", "message": message},
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
        if _canonical(before_session) != _canonical(self._session_view):
            state = {"data": dict(self._session_view)}
            self._emit("meeting-session-state-updated", {"meetingSessionState": state})

    def _on_participant(self, kind: str, participant: dict[str, Json]) -> None:
        sid = participant["session_id"]
        if sid == self.session_id:
            return  # the node never echoes our own changes; the local record is ours
        if kind == "participant-left":
            self._others.pop(sid, None)
        else:
            self._others[sid] = participant

    def _emit(self, event: str, payload: Event) -> None:
        """Record an event and run its handlers; a failing handler is logged, never raised."""
        if self.record_events:
            self._history.setdefault(event, []).append(payload)
            self._arrived.set()
            self._arrived = asyncio.Event()
        for handler in list(self._handlers.get(event, [])):
            try:
                result = handler(payload)
            except Exception:
                logger.exception("the %r handler %r failed", event, handler)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("an event handler failed", exc_info=task.exception())

    def _emit_left(self, payload: Event) -> None:
        if not self._left:
            self._left = True
            self._emit("left-meeting", payload)

    async def _shutdown(self, close_wait: float | None = None) -> None:
        """Close the socket, stop the reader and close the HTTP session. `close_wait`: seconds
        to wait for the node's answer to the close (None: aiohttp's 10 s), then drop it."""
        self._leaving = True
        ws, reader, http = self._ws, self._reader, self._http
        self._ws, self._reader, self._http = None, None, None
        if ws is not None:
            with contextlib.suppress(TimeoutError):  # (aiohttp drops the connection then)
                async with asyncio.timeout(close_wait):
                    await ws.close()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if http is not None:
            await http.close()


def _check_event(event: str) -> str:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; the events are {', '.join(sorted(EVENTS))}")
    return event


class RestClient:
    """The node's server-side REST API (`Authorization: Bearer <api key>`)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")  # http(s)://HOST:PORT
        self.api_key = api_key
        self.timeout = timeout  # seconds for each call
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send_app_message(
        self, room: str, data: Json, recipient: str | list[str] = "*"
    ) -> Json:
        """Send an app message from ``"API"`` to the room's participants (or one of them)."""
        body = {"data": data, "recipient": recipient}
        return await self._call("POST", f"/v1/rooms/{_room(room)}/send-app-message", body)

    async def presence(self, room: str) -> Json:
        """The node's answer listing the room's participants."""
        return await self._call("GET", f"/v1/rooms/{_room(room)}/presence")

    async def get_session_data(self, room: str) -> Json:
        """``{"data": ...}``: the room's meeting session data."""
        return await self._call("GET", f"/v1/rooms/{_room(room)}/session-data")

    async def set_session_data(
        self,
        room: str,
        data: dict[str, Json],
        merge_strategy: str = "replace",
        keys_to_delete: list[str] | None = None,
    ) -> Json:
        """Write the room's meeting session data, as a participant's write would."""
        body: dict[str, Json] = {"data": data, "mergeStrategy": merge_strategy}
        if keys_to_delete:
            body["keysToDelete"] = keys_to_delete
        return await self._call("POST", f"/v1/rooms/{_room(room)}/session-data", body)

    async def create_meeting_token(
        self,
        room_name: str,
        user_name: str | None = None,
        user_id: str | None = None,
        is_owner: bool | None = None,
        exp: int | None = None,
    ) -> str:
        """A meeting token (JWT) for `room_name`; `exp` is a Unix time in seconds."""
        given = {"user_name": user_name, "user_id": user_id, "is_owner": is_owner, "exp": exp}
        properties = {"room_name": room_name, **{k: v for k, v in given.items() if v is not None}}
        answer = await self._call("POST", "/v1/meeting-tokens", {"properties": properties})
        return str(answer["token"])

    async def _call(self, method: str, path: str, body: Json = None) -> Json:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else orjson.dumps(body)
        async with self._http.request(
            method, self.base_url + path, data=data, headers=headers
        ) as response:
            raw = await response.read()
            status = response.status
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:  # aiohttp's own answers (404, 405, 413) are plain text
            text = raw[:200].decode(errors="replace")
            raise RestError(
                status, f"http-{status}" if status >= 400 else "bad-response", text
            ) from None
        if status >= 400:
            error = answer if isinstance(answer, dict) else {}
            raise RestError(status, str(error.get("error", f"http-{status}")), error.get("info"))
        return answer


def _room(room: str) -> str:
    if not re.fullmatch(_ROOM, room):
        raise ValueError(f"a room name is 1-64 characters of A-Z a-z 0-9 . _ -, not {room!r}")
    return room
