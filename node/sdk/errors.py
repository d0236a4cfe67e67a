"""The Python SDK's exceptions: one root, a class per wire error code, and the client's own.

Exception tree::

    ClientError                 the root; every one has `code` and `message`
    ├── ServerError             the node replied `error`; one subclass per wire code:
    │   ├── BadJson             bad-json
    │   ├── BadRequest          bad-request
    │   ├── UnknownType         unknown-type
    │   ├── NotJoined           not-joined (also raised here: no connection, join unfinished)
    │   ├── AlreadyJoined       already-joined (also raised here: join while connected)
    │   ├── TooLarge            too-large (also raised here: a frame over the node's limit)
    │   ├── Unauthorized        unauthorized
    │   ├── Forbidden           forbidden
    │   ├── RateLimited         rate-limited
    │   ├── Unavailable         unavailable; `retry_after`: seconds the node asks to wait, or None
    │   └── Internal            internal
    ├── ConnectionClosed        the socket closed before the reply; `close_code`
    ├── RequestTimeout          no reply in time (also a `TimeoutError`)
    └── RestError               a REST call answered >= 400; `status`, `error`, `info`

The wire codes are the node's closed list, `roomstate.errors.ERROR_CODES`; `SERVER_ERRORS` maps
each of them to its class (a class is named after its code: ``bad-json`` -> `BadJson`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from roomstate.crdt import Json
from roomstate.errors import ERROR_CODES

__all__ = [
    "SERVER_ERRORS",
    "AlreadyJoined",
    "BadJson",
    "BadRequest",
    "ClientError",
    "ConnectionClosed",
    "Forbidden",
    "Internal",
    "NotJoined",
    "RateLimited",
    "RequestTimeout",
    "RestError",
    "ServerError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownType",
    "server_error",
]


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


class Unavailable(ServerError):
    """The node cannot take the request now (busy, shedding joins, its store unreachable): a
    retryable refusal. `retry_after` is how long it asks the client to wait first, in seconds
    (the frame's `retryAfter`, in ms), or None when it named no delay."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class Internal(ServerError): ...


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


_BY_NAME: Final = {
    cls.__name__: cls
    for cls in (
        BadJson,
        BadRequest,
        UnknownType,
        NotJoined,
        AlreadyJoined,
        TooLarge,
        Unauthorized,
        Forbidden,
        RateLimited,
        Unavailable,
        Internal,
    )
}


def _class_name(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("-"))


# Built from the wire's list, so the SDK knows exactly the codes the node can send; a code with
# no class here yet (one just added to the wire) still raises, as a plain ServerError.
SERVER_ERRORS: Final[Mapping[str, type[ServerError]]] = MappingProxyType(
    {code: _BY_NAME.get(_class_name(code), ServerError) for code in sorted(ERROR_CODES)}
)


def server_error(code: str, message: str, retry_after_ms: Json = None) -> ServerError:
    """The exception for an `error` frame: its code's class (`ServerError` for a code the wire
    does not list). `retry_after_ms`: the frame's `retryAfter`, kept by `Unavailable` in seconds
    (a value that is no non-negative number counts as none)."""
    cls = SERVER_ERRORS.get(code, ServerError)
    if issubclass(cls, Unavailable):
        valid = isinstance(retry_after_ms, int | float) and not isinstance(retry_after_ms, bool)
        seconds = retry_after_ms / 1000 if valid and retry_after_ms >= 0 else None
        return cls(code, message, seconds)
    return cls(code, message)
