"""`ws_frame` builds the same bytes as aiohttp's own server-side writer (the node writes frames
straight to the socket, bypassing aiohttp, when nothing is queued before them)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from roomstate.server.fastpath import ws_frame


class RecordingTransport:
    """Just enough of a transport for aiohttp's writer: it records what is written."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


class Protocol:
    _paused = False


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
async def test_ws_frame_is_what_aiohttp_writes_for_a_text_frame(size: int) -> None:
    transport = RecordingTransport()
    writer = WebSocketWriter(Protocol(), transport, use_mask=False)  # type: ignore[arg-type]
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert ws_frame(payload) == bytes(transport.written)
