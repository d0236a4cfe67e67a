"""The WebSocket endpoint (wire protocol v1): one connection's loop, and each frame it reads.

    GET /v1/rooms/{room}/ws

Each text frame is rate-limited, parsed and handed to the node; an error goes back to the client
as an ``error`` frame naming the request (a `RequestError`'s code, ``unavailable`` when the
store did not take a write, ``internal`` otherwise). A binary frame closes the connection (1003).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from roomstate import logs
from roomstate.edge.node import Node
from roomstate.errors import BusError, RequestError
from roomstate.server.connection import CLOSE_POLICY, Connection, TokenBucket
from roomstate.server.fastpath import WriteBatch, release_heartbeat_callback
from roomstate.server.rest import NODE_KEY, rest_error, room_name
from roomstate.wire.protocol import WIRE_TYPES, encode_error, parse, request_id_of

__all__ = ["BATCH_KEY", "websocket"]

log = logging.getLogger(__name__)

BATCH_KEY = web.AppKey("write_batch", WriteBatch)  # the app's one batch of socket writes
CLOSE_UNSUPPORTED = 1003  # RFC 6455: a binary frame where text is expected


async def websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    settings = node.settings
    name = room_name(request)
    logs.ROOM.set(name)  # in this connection's task's lines
    origin = request.headers.get("Origin")
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        raise rest_error(403, "forbidden", f"origin {origin!r} is not allowed")
    ws = web.WebSocketResponse(
        max_msg_size=settings.frame_bytes,
        heartbeat=settings.heartbeat_s,
        compress=False,
        decode_text=False,
    )
    await ws.prepare(request)
    bucket = TokenBucket(settings.rate_per_s, settings.rate_burst, time.monotonic())
    batch = request.app[BATCH_KEY]
    conn = Connection(ws, request.transport, node.metrics, settings.send_queue_bytes, bucket, batch)
    node.metrics.connections.inc()
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await _handle_frame(node, conn, message.data, name)
            elif message.type == WSMsgType.BINARY:
                # the replies to frames before it go first, as for every close the node starts
                await conn.flush_and_close(CLOSE_UNSUPPORTED, "frames must be JSON text")
    finally:
        release_heartbeat_callback(request.protocol)  # first: the awaits below can be cancelled
        node.metrics.connections.dec()
        await node.disconnect(conn, "disconnected")
        await conn.stop()
    return ws


async def _handle_frame(node: Node, conn: Connection, frame: bytes, room: str) -> None:
    request_id = None
    try:
        if not conn.bucket.allow(time.monotonic()):
            if conn.bucket.refused > conn.bucket.burst:
                conn.close_soon(CLOSE_POLICY, "rate limit exceeded for too long", flush=True)
                return
            raise RequestError(
                "rate-limited",
                f"over {conn.bucket.rate:g} requests/s (burst {conn.bucket.burst}); slow down",
                request_id_of(frame),  # so the client can fail that request at once
            )
        request = parse(frame, node.limits)
        request_id = request.id
        node.metrics.frame_in(WIRE_TYPES[type(request)])
        await node.handle(conn, request, room)
    except RequestError as exc:
        request_id = request_id if request_id is not None else exc.request_id
        _send_error(node, conn, request_id, exc.code, exc.message, exc.retry_after_ms)
    except BusError as exc:
        _send_error(node, conn, request_id, "unavailable", f"the write was not stored: {exc}")
    except Exception:
        log.exception("internal error handling a frame")
        _send_error(node, conn, request_id, "internal", "internal error; the request was not done")


def _send_error(
    node: Node,
    conn: Connection,
    request_id: Any,
    code: str,
    message: str,
    retry_after_ms: int | None = None,
) -> None:
    node.metrics.errors.labels(code).inc()
    conn.send(encode_error(request_id, code, message, retry_after_ms))
