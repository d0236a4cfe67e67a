"""What the edge node needs of a client's connection, and of the server that writes to it.

The node never touches a socket: the server (roomstate.server) gives it objects that satisfy
`Client`, and one `FanOut` function that writes one frame to many clients (the server builds the
WebSocket frame once, the same bytes for every recipient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = [
    "CLOSE_EJECTED",
    "CLOSE_FENCED",
    "CLOSE_REMOVED",
    "CLOSE_REPLACED",
    "Client",
    "FanOut",
    "send_each",
]

# WebSocket close codes the node closes a client with (4000-4999: the application's own).
CLOSE_REMOVED = 4001  # another node removed its participant from the room
CLOSE_FENCED = 4002  # this node lost its lease
CLOSE_REPLACED = 4003  # the session was resumed on another connection
CLOSE_EJECTED = 4004  # an owner ejected its participant, or its meeting token's time was up


class Client(Protocol):
    """One client's connection, as the node sees it."""

    room: str | None  # the room it joined (None before its join)
    session_id: str | None  # its participant's session id (None before its join)

    def send(self, frame: bytes) -> None:
        """Queue one server frame (JSON bytes) for this client; never blocks."""

    def send_first(self, frame: bytes) -> None:
        """Send `frame` ahead of the frames held back by `hold` (a join's reply)."""

    def hold(self) -> None:
        """Hold back the frames sent from now on until `release` (while a join is stored)."""

    def release(self, replayed: frozenset[str] = frozenset()) -> None:
        """Send what was held back; app messages with ids in `replayed` were replayed already."""

    def close_soon(self, code: int, message: str, flush: bool = False) -> None:
        """Close with a WebSocket close code (after the queued frames if `flush`)."""

    async def flush_and_close(self, code: int, message: str) -> None:
        """Send what is queued, then close."""


FanOut = Callable[[bytes, Sequence[Client]], None]
"""Write one server frame to each of the clients (the node has counted them in its metrics)."""


def send_each(frame: bytes, clients: Sequence[Client]) -> None:
    """The plain `FanOut`: `Client.send` to each, for a node without a WebSocket server."""
    for client in clients:
        client.send(frame)
