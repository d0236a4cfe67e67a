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

This module owns the transport: the aiohttp WebSocket and its reader task, connecting and
closing, each request's reply future and timeout. What the call knows of the room (participants,
userData, session data, optimistic writes and their rollback, the resume position) is
`roomstate.sdk.state.CallState`, which needs no socket; `roomstate.sdk.events.Emitter` runs the
handlers and keeps the history. The exceptions (`roomstate.sdk.errors`) and `RestClient` are
re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from types import TracebackType
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from roomstate.crdt import Json
from roomstate.sdk.errors import (
    AlreadyJoined,
    BadJson,
    BadRequest,
    ClientError,
    ConnectionClosed,
    Forbidden,
    Internal,
    NotJoined,
    RateLimited,
    RequestTimeout,
    RestError,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownType,
)
from roomstate.sdk.events import CallEvents, Emitter
from roomstate.sdk.rest import RestClient
from roomstate.sdk.state import EVENTS, CallState, Event, Outgoing
from roomstate.wire.protocol import ROOM_NAME

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

# The largest frame the client takes from the node. The node does not bound its `joined` reply:
# it lists every present participant, each up to the userData limit (4 KiB by default) plus a
# few hundred bytes of name and ids, so a large room's `joined` outgrows aiohttp's default 4 MiB
# and would be refused here. 256 MiB is about 60,000 present participants at the userData limit:
# far past any room the node serves, while a broken peer still cannot grow one message unbounded.
MAX_RECEIVE_BYTES: Final = 256 * 1024 * 1024


def room_ws_url(url: str) -> str:
    """The WebSocket endpoint of a room URL: ``http://H/rooms/R`` -> ``ws://H/v1/rooms/R/ws``.

    A path prefix before ``/rooms/`` is kept (a node behind a proxy path); an endpoint URL
    (``ws://H/v1/rooms/R/ws``) is returned as it is. The room name follows the wire's rule.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"a room URL is http(s)://HOST:PORT/rooms/ROOM, not {url!r}")
    endpoint = re.fullmatch(r"(.*)/v1/rooms/([^/]*)/ws", parts.path)
    if endpoint is not None and ROOM_NAME.match(endpoint[2]):
        return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
    match = re.fullmatch(r"(.*)/rooms/([^/]*)/?", parts.path)
    if match is None or not ROOM_NAME.match(match[2]):
        raise ValueError(f"a room URL's path is /rooms/ROOM (1-64 of A-Za-z0-9._-), not {url!r}")
    path = f"{match[1]}/v1/rooms/{match[2]}/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def join_error(exc: ClientError) -> Event:
    """The `error` event of a join that failed, in daily-js's shape (`code`: roomstate's)."""
    kind = "not-allowed" if isinstance(exc, Unauthorized | Forbidden) else "connection-error"
    error = {"type": kind, "msg": exc.message, "details": {"on": "join"}}
    return {"errorMsg": exc.message, "error": error, "code": exc.code}


class CallClient(CallEvents):
    """One participant's connection to one room at a time, like daily-js's call object.

    A background reader task feeds every frame from the node to the call's `CallState`; the
    public methods change local state at once and then wait for the node's reply. With
    `record_events` (the default) every event is also kept for `events` and `next_event`; a
    long-running client that sends many messages (a benchmark) turns it off to keep memory flat.
    """

    def __init__(
        self, timeout: float = 10.0, record_events: bool = True, max_frame_bytes: int = 131072
    ) -> None:
        self.timeout = timeout  # seconds to wait for the reply to each request
        self._state = CallState(max_frame_bytes)
        self._emitter = Emitter(record_events)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse[Literal[True]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Json]]] = {}  # request id -> reply
        self._leaving = False  # a close is expected: not an `error` event
        self._destroyed = False  # destroy() was called: no more joins

    @property
    def record_events(self) -> bool:
        """Keep every event for `events` and `next_event` (the default); a long-running client
        that receives many (a benchmark) turns it off to keep memory flat."""
        return self._emitter.record

    @record_events.setter
    def record_events(self, value: bool) -> None:
        self._emitter.record = value

    @property
    def max_frame_bytes(self) -> int:
        """The node's frame limit (ROOMSTATE_FRAME_BYTES): a bigger request is refused here
        with TooLarge, as the node would close the connection for it."""
        return self._state.max_frame_bytes

    @max_frame_bytes.setter
    def max_frame_bytes(self, value: int) -> None:
        self._state.max_frame_bytes = value

    @property
    def session_id(self) -> str | None:
        """The session id of the last `joined` reply."""
        return self._state.session_id

    @property
    def resume_token(self) -> str | None:
        """The last `joined` reply's resume token, if the node sent one."""
        return self._state.resume_token

    @property
    def last_seq(self) -> str | None:
        """Position of the latest app message received: a resume replays what follows it."""
        return self._state.last_seq

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

        With `resume` (an earlier session's `resume_token`) the last state known is kept: what
        changed meanwhile becomes events. On any failure (refused, timed out, no route) the
        connection is closed before the exception propagates, so the client can join again.
        """
        if self._destroyed:
            raise ClientError("destroyed", "this client was destroyed; make another CallClient")
        if self._ws is not None:
            raise AlreadyJoined("already-joined", "this client is connected; call leave() first")
        ws_url = room_ws_url(url)
        self._http = aiohttp.ClientSession()
        self._leaving = False
        request = self._state.join(token, user_name, user_data, resume)
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            try:
                async with asyncio.timeout_at(deadline):  # connecting and the reply, together
                    self._emitter.emit([("loading", {})])
                    self._ws = await self._http.ws_connect(ws_url, max_msg_size=MAX_RECEIVE_BYTES)
                    self._reader = asyncio.create_task(
                        self._read(self._ws), name=f"roomstate {ws_url}"
                    )
                    self._emitter.emit([("loaded", {}), ("joining-meeting", {})])
                    joined = await self._send(request)
            except TimeoutError as exc:
                if isinstance(exc, RequestTimeout):
                    raise
                raise RequestTimeout(
                    "timeout", f"could not join at {ws_url} within {self.timeout} s"
                ) from None
        except BaseException as exc:
            self._state.join_failed()
            if isinstance(exc, ClientError):  # as daily-js: `error`, meeting_state() "error"
                self._emitter.emit([("error", join_error(exc))])
            # A node that did not answer in time is not waited for again to close.
            await self._shutdown(close_wait=max(0.0, deadline - asyncio.get_running_loop().time()))
            raise
        return {key: value for key, value in joined.items() if key not in ("type", "id")}

    async def send_app_message(self, data: Json, to: str | list[str] = "*") -> CallClient:
        """Send `data` to every other participant (``"*"``), one session id, or a list; returns
        the client, as daily-js returns the call object."""
        await self._send(self._state.send_app_message(data, to))
        return self

    async def set_user_data(self, data: Json) -> dict[str, Json]:
        """Replace the local participant's userData: locally at once, then on the node; returns
        ``{"userData": data}`` once the node took it, as daily-js."""
        self._check_connected()
        await self._send(self._state.set_user_data(data))
        return {"userData": data}

    async def set_meeting_session_data(
        self,
        data: dict[str, Json],
        merge_strategy: str = "replace",
        keys_to_delete: list[str] | None = None,
    ) -> None:
        """Write the room's session data (`replace` or `shallow-merge`); local state at once."""
        request = self._state.set_meeting_session_data(data, merge_strategy, keys_to_delete)
        await self._send(request)

    async def update_participant(self, session_id: str, updates: dict[str, Json]) -> None:
        """daily-js's updateParticipant: ``update_participant(sid, {"eject": True})`` ejects
        that participant (it gets `error` and `left-meeting`; the others `participant-left`
        with reason "ejected"). Needs an owner's meeting token or one with canAdmin for
        participants; the node refuses others with `Forbidden`."""
        await self._send(self._state.update_participant(session_id, updates))

    async def ping(self) -> float:
        """Round trip to the node, in seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._send(self._state.ping())
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
                await self._send(self._state.leave())
                if reader is not None:  # the node closes with 1000 after the ack
                    await asyncio.wait({reader}, timeout=self.timeout)
        except ClientError as exc:
            logger.debug("leave: %s", exc)
        finally:
            await self._shutdown()
            self._state.forget_room()  # meeting_session_state() is the room's only while in it
        self._state.end_meeting("left")
        self._emit_events()

    async def destroy(self) -> None:
        """Leave, then refuse any further join (daily-js's destroy());
        ``call-instance-destroyed``."""
        if not self._destroyed:
            await self.leave()
            self._destroyed = True
            self._emitter.emit([("call-instance-destroyed", {})])

    def is_destroyed(self) -> bool:
        return self._destroyed

    async def close(self) -> None:
        """Drop the connection without leaving: the others see ``participant-left`` with reason
        ``disconnected``, as if the network had gone. Safe to call after `leave`. The last
        state known is kept: a `join(url, resume=...)` then emits what changed meanwhile."""
        await self._shutdown()
        self._state.end_meeting("closed")
        self._emit_events()

    # -- local state --

    def participants(self) -> dict[str, dict[str, Json]]:
        """``{"local": the local participant, session id: participant, ...}`` (copies)."""
        return self._state.participants()

    def meeting_session_state(self) -> dict[str, Json]:
        """``{"data": ...}``: the node's converged state with this client's writes applied."""
        return self._state.meeting_session_state()

    def participant_counts(self) -> dict[str, Json]:
        """``{"present": P, "hidden": H}``, this participant included (daily-js's
        participantCounts()); hidden participants are never in `participants()` but "local"."""
        return self._state.participant_counts()

    # -- events: on, once, off, meeting_state, events, next_event (CallEvents) --

    # -- internals --

    def _check_connected(self) -> None:
        if self._ws is None:
            raise NotJoined("not-joined", "this client is not connected; call join() first")
        if self._ws.closed:
            raise ConnectionClosed(self._ws.close_code)

    async def _send(self, request: Outgoing) -> dict[str, Json]:
        """Send one request and wait for its reply. A write that was not sent (no socket, not
        JSON, over the frame limit) is rolled back; one sent but not answered (timed out, or the
        caller cancelled) is kept until the node's next state says otherwise."""
        rid = request.id
        try:
            self._check_connected()
            assert self._ws is not None
            frame = self._state.encode(request)  # TypeError: not JSON; TooLarge
            future: asyncio.Future[dict[str, Json]] = asyncio.get_running_loop().create_future()
            self._pending[rid] = future
            try:
                await self._ws.send_str(frame.decode())
            except (ConnectionError, aiohttp.ClientError):
                raise ConnectionClosed(self._ws.close_code) from None
        except asyncio.CancelledError:  # while sending: maybe sent
            self._state.abandon(rid, sent=True)
            self._pending.pop(rid, None)
            raise
        except BaseException:
            self._state.abandon(rid, sent=False)  # never sent: roll the local write back
            self._pending.pop(rid, None)
            raise
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            self._state.abandon(rid, sent=True)  # maybe applied: kept
            raise RequestTimeout(
                "timeout", f"no reply to {request.type} within {self.timeout} s"
            ) from None
        except asyncio.CancelledError:
            self._state.abandon(rid, sent=True)  # the caller stopped waiting: as after a timeout
            raise
        finally:
            self._pending.pop(rid, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[Literal[True]]) -> None:
        """The reader task: feed every frame to the state until the socket closes."""
        try:
            while True:
                message = await ws.receive()
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    try:
                        self._receive(orjson.loads(message.data))
                    except Exception:
                        logger.exception("could not handle the frame %.200r", message.data)
                else:  # CLOSE, CLOSING, CLOSED or ERROR (pings are answered inside aiohttp)
                    break
        finally:
            lost = self._state.connection_lost(ws.close_code, expected=self._leaving)
            closed = ConnectionClosed(ws.close_code)
            for future in list(self._pending.values()):
                if not future.done():
                    future.set_exception(closed)
        if lost:  # (a join that failed raises instead)
            logger.warning("connection lost (close code %s)", ws.close_code)
        self._emit_events()

    def _receive(self, frame: dict[str, Json]) -> None:
        """One frame: its events, and its reply to the waiting request."""
        try:
            reply = self._state.receive_frame(frame)
        finally:
            self._emit_events()  # (also those of a frame the state could not read through)
        # A caller that stopped waiting (cancelled, timed out) has a done future, or none.
        future = self._pending.get(reply.id) if reply is not None else None
        if reply is not None and future is not None and not future.done():
            if reply.error is not None:
                future.set_exception(reply.error)
            else:
                future.set_result(reply.frame)

    def _emit_events(self) -> None:
        self._emitter.emit(self._state.events_received())

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
