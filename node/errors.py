"""Exceptions raised by the edge node.

NodeError                 the root of every error the node raises on purpose
├── RequestError          a client request broke a rule; carries the wire error `code`
└── BusError              the bus (in-memory or Redis) could not take or give an event
    └── FencedError       the store refused a write: its incarnation no longer holds the lease

Wire error codes (the closed list of ``error.code`` values a client can see):

| code             | meaning                                                            |
|------------------|--------------------------------------------------------------------|
| `bad-json`       | the frame is not a JSON object                                     |
| `bad-request`    | a field is missing, of the wrong type or out of range              |
| `unknown-type`   | the frame's `type` is not one of the protocol's                    |
| `not-joined`     | the request needs a joined session (send `join` first)             |
| `already-joined` | a second `join` on one connection                                  |
| `too-large`      | a payload or the resulting state is over its size limit            |
| `unauthorized`   | no valid credentials (token or API key)                            |
| `forbidden`      | valid credentials that do not allow this (token for another room;  |
|                  | an eject without an owner's or a canAdmin token)                   |
| `rate-limited`   | too many requests on this connection                               |
| `unavailable`    | the node cannot store writes right now (bus down); retry later     |
|                  | (a join shed for load carries `retryAfter`, ms)                    |
| `internal`       | a bug in the node; the connection stays usable                     |
"""

from __future__ import annotations

from typing import Final

__all__ = ["ERROR_CODES", "BusError", "FencedError", "NodeError", "RequestError"]

ERROR_CODES: Final = frozenset(
    {
        "bad-json",
        "bad-request",
        "unknown-type",
        "not-joined",
        "already-joined",
        "too-large",
        "unauthorized",
        "forbidden",
        "rate-limited",
        "unavailable",
        "internal",
    }
)


class NodeError(Exception):
    """Root of every error the node raises on purpose."""


class RequestError(NodeError):
    """A request broke a protocol rule; `code` is one of `ERROR_CODES`."""

    def __init__(
        self,
        code: str,
        message: str,
        request_id: str | int | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id  # the `id` of the request that failed, for the reply
        self.retry_after_ms = retry_after_ms  # a refusal for load: when to try again (ms)


class BusError(NodeError):
    """The bus could not publish, subscribe or snapshot."""


class FencedError(BusError):
    """The store refused a write because its incarnation no longer holds the node's lease (the
    store answered: it is reachable)."""
