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


def _apply_write(base: dict[str, Json], write: SessionWrite) -> dict[str, Json]:
    """A session-data write applied to a local copy, as the node applies it to the replica."""
    data, strategy, keys_to_delete = write
    if strategy == "replace":
        return dict(data)
    merged = {**base, **data}
    for key in keys_to_delete:
        merged.pop(key, None)
    return merged
