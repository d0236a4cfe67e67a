"""The server's hot path to the sockets: one WebSocket frame built once, written to many.

An event for many recipients is encoded once by the node; `fan_out` (the `FanOut` the server
gives the node) builds its WebSocket frame once too (`ws_frame`) and hands the same bytes to
each connection. The frames one connection gets in one event-loop iteration go out in one
`write` (`WriteBatch`: under load a burst of events read from Redis at once costs each recipient
one system call, not one per frame). The app owns the batch: one per node, on one loop.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from roomstate.edge.clients import Client

if TYPE_CHECKING:
    from roomstate.server.connection import Connection

__all__ = ["WriteBatch", "fan_out", "release_heartbeat_callback", "ws_frame"]

log = logging.getLogger(__name__)


def ws_frame(payload: bytes) -> bytes:
    """`payload` as a complete WebSocket text frame from a server (FIN, not masked, not
    compressed, RFC 6455 §5.2): the same bytes for every recipient, so built once per event."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def fan_out(frame: bytes, clients: Sequence[Client]) -> None:
    """The server's `roomstate.edge.clients.FanOut`: the WebSocket frame built once, the same
    bytes to each connection (counted by the node already: `deliver`, not `send`)."""
    wire = ws_frame(frame)
    for conn in cast("Sequence[Connection]", clients):  # the server's clients are these
        conn.deliver(frame, wire)


class WriteBatch:
    """The connections that have frames waiting for the end of this event-loop iteration; one
    callback writes each one's frames in one `write`. A node has one (it lives on one loop)."""

    def __init__(self) -> None:
        self._pending: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it was first used on

    def add(self, conn: Connection) -> None:
        """`conn` has its first frame of this iteration waiting (called from the running loop:
        a node, and so its batch, lives on one)."""
        if not self._pending:
            loop = self._loop
            if loop is None or not loop.is_running():
                # once: asyncio.get_running_loop costs a getpid system call
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._write_all)
        self._pending.append(conn)

    def _write_all(self) -> None:
        pending, self._pending = self._pending, []
        for conn in pending:
            try:
                conn.write_batched()
            except Exception:  # one broken socket must not leave the others' frames unwritten
                log.exception("cannot write to a client")


def release_heartbeat_callback(protocol: object) -> None:
    """Stop aiohttp's connection protocol from resetting the WebSocket heartbeat on incoming data.
    Since aiohttp PR #12030 (3.14) a `WebSocketResponse` gives its connection's protocol a
    callback (`RequestHandler._data_received_cb`) that re-arms the heartbeat timer on any data,
    closed or not, and nothing drops it. Two costs, so call this before a close the server
    starts and when the handler ends:

    - a close the server starts cancels the heartbeat, then waits for the peer's close frame;
      that frame re-arms it, and the timer holds the whole response (request, protocol,
      buffers: ~11 KB) for `heartbeat_s` (20 s) after the connection is gone. A node whose
      clients leave with `leave` held 11 MB more per 1,000 of them a few seconds later;
    - the callback makes a cycle (protocol → callback → response → request → protocol) of ~40
      objects per closed connection, which only a full collection frees
      (docs/decisions/0005-gc-thresholds.md).

    Private to aiohttp: if it goes or changes, this does nothing, and
    tests/integration/test_server_memory.py tells whether either cost came back."""
    try:
        if getattr(protocol, "_data_received_cb", None) is not None:
            protocol._data_received_cb = None  # type: ignore[attr-defined]
    except AttributeError:  # read-only in some later aiohttp
        pass
