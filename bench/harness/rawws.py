"""A lean WebSocket client for load generators: picows (callbacks, Cython framing) behind the
few calls a generator makes.

Why not aiohttp's client here: a large-room run has each generator process hold thousands of
connections that each receive every broadcast. With aiohttp every message wakes the reading task
of its connection (a future and a task step per message); picows parses a read of the socket and
calls the listener in the same callback, so the generators cost far less than the nodes they
measure (bench/studies/floor_libs.py measured the same library as a server).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import picows

__all__ = ["RawWebSocket", "connect"]


class RawWebSocket(picows.WSListener):
    """One connection: each text frame's bytes go to `on_text` as they are parsed."""

    def __init__(self, on_text: Callable[[bytes], object]) -> None:
        super().__init__()
        self.on_text = on_text  # replaced by the owner once joined
        self.transport: picows.WSTransport | None = None
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == picows.WSMsgType.TEXT:
            self.on_text(frame.get_payload_as_bytes())
        elif kind == picows.WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def send_text(self, text: str | bytes) -> None:
        if self.transport is not None and not self.closed.done():
            payload = text.encode() if isinstance(text, str) else text
            self.transport.send(picows.WSMsgType.TEXT, payload)

    def close(self, code: int = 1000) -> None:
        """Send a close frame and drop the connection (the bench does not wait for the echo)."""
        if self.transport is not None and not self.closed.done():
            self.transport.send_close(picows.WSCloseCode(code))
            self.transport.disconnect()


async def connect(url: str, on_text: Callable[[bytes], object]) -> RawWebSocket:
    """Open a WebSocket to `url` and return it once upgraded (`OSError` if it cannot be)."""
    try:
        _, ws = await picows.ws_connect(lambda: RawWebSocket(on_text), url, max_frame_size=1 << 28)
    except picows.WSError as exc:  # an upgrade refused: like a connection refused to the caller
        raise ConnectionError(str(exc)) from exc
    assert isinstance(ws, RawWebSocket)
    return ws
