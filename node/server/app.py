"""HTTP and WebSocket server (aiohttp): the routes, and starting and stopping a node.

Routes:
    GET  /v1/rooms/{room}/ws                 WebSocket endpoint (wire protocol v1)
    POST /v1/rooms/{room}/send-app-message   REST, bearer API key
    GET  /v1/rooms/{room}/presence
    GET  /v1/rooms/{room}/session-data
    POST /v1/rooms/{room}/session-data
    POST /v1/meeting-tokens
    GET  /healthz  /readyz  /metrics
    GET  /rooms/{room}                       the demo page
    GET  /sdk/roomstate.js                   the browser SDK
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roomstate.auth import check_api_key, make_token
from roomstate.bus import Bus, MemoryBus
from roomstate.edge.node import Node
from roomstate.errors import BusError, RequestError
from roomstate.server.connection import (
    CLOSE_POLICY,
    Connection,
    TokenBucket,
    release_heartbeat_callback,
)
from roomstate.settings import Settings
from roomstate.wire.protocol import (
    ROOM_NAME,
    WIRE_TYPES,
    depth,
    encode_error,
    parse,
    parse_session_data_write,
    recipients,
    request_id_of,
    too_deep,
)

__all__ = ["build_app", "make_bus", "serve"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"  # the demo page
BROWSER_SDK = Path(__file__).parents[1] / "sdk" / "browser"
NODE_KEY = web.AppKey("node", Node)
CLOSE_UNSUPPORTED = 1003  # RFC 6455: a binary frame where text is expected
CLOSE_RESTART = 1012


def room_name(request: web.Request) -> str:
    name = request.match_info["room"]
    if not ROOM_NAME.match(name):
        raise _rest_error(400, "bad-request", "a room name is 1-64 characters of A-Z a-z 0-9 . _ -")
    return name


def _rest_error(status: int, error: str, info: str) -> web.HTTPException:
    body = orjson.dumps({"error": error, "info": info})
    classes = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        503: web.HTTPServiceUnavailable,
    }
    return classes.get(status, web.HTTPBadRequest)(body=body, content_type="application/json")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# -- WebSocket --


async def websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    settings = node.settings
    name = room_name(request)
    origin = request.headers.get("Origin")
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        raise _rest_error(403, "forbidden", f"origin {origin!r} is not allowed")
    ws = web.WebSocketResponse(
        max_msg_size=settings.frame_bytes,
        heartbeat=settings.heartbeat_s,
        compress=False,
        decode_text=False,
    )
    await ws.prepare(request)
    bucket = TokenBucket(settings.rate_per_s, settings.rate_burst, time.monotonic())
    conn = Connection(
        ws, request.transport, node.metrics, settings.send_queue_bytes, bucket, node.write_batch
    )
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
        _send_error(node, conn, request_id, exc.code, exc.message)
    except BusError as exc:
        _send_error(node, conn, request_id, "unavailable", f"the write was not stored: {exc}")
    except Exception:
        log.exception("internal error handling a frame")
        _send_error(node, conn, request_id, "internal", "internal error; the request was not done")


def _send_error(node: Node, conn: Connection, request_id: Any, code: str, message: str) -> None:
    node.metrics.errors.labels(code).inc()
    conn.send(encode_error(request_id, code, message))


# -- REST --


RestHandler = Callable[[web.Request], Awaitable[web.Response]]


def rest(handler: RestHandler) -> RestHandler:
    """A REST endpoint: it needs the API key (but in development mode), and answers 503 when
    the store cannot take or give the data. (A decorator rather than a middleware: a middleware
    also wraps each WebSocket handler for the connection's whole life, two more coroutines per
    connection for every full garbage collection to walk.)"""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.Response:
        key = request.app[NODE_KEY].settings.api_key
        if key is not None and not check_api_key(key, request.headers.get("Authorization")):
            raise _rest_error(401, "authorization-error", "send 'Authorization: Bearer <API key>'")
        try:
            return await handler(request)
        except BusError as exc:  # retry later: the store could not take or give the data
            raise _rest_error(503, "unavailable", f"the store is unavailable: {exc}") from None

    return checked


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, held to the nesting limit of client frames."""
    max_depth = request.app[NODE_KEY].limits.max_depth
    nesting = f"JSON nesting is deeper than {max_depth} levels"
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        if too_deep(exc):
            raise _rest_error(400, "invalid-request-error", nesting) from None
        raise _rest_error(400, "invalid-request-error", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _rest_error(400, "invalid-request-error", "the body must be a JSON object")
    if depth(body) > max_depth:
        raise _rest_error(400, "invalid-request-error", nesting)
    return body


@rest
async def rest_send_app_message(request: web.Request) -> web.Response:
    node, name, body = request.app[NODE_KEY], room_name(request), await _body(request)
    if "data" not in body:
        raise _rest_error(400, "invalid-request-error", "'data' is required")
    size = len(orjson.dumps(body["data"]))
    if size > node.limits.app_message_bytes:
        info = f"app message data is {size} bytes; the limit is {node.limits.app_message_bytes}"
        raise _rest_error(400, "invalid-request-error", info)
    try:
        recipient = recipients(body.get("recipient", "*"), "recipient")
    except RequestError as exc:
        raise _rest_error(400, "invalid-request-error", exc.message) from None
    try:
        await node.rest_send_app_message(name, body["data"], recipient)
    except RequestError as exc:
        raise _refused(exc) from None
    return _json({"sent": True})


@rest
async def rest_presence(request: web.Request) -> web.Response:
    participants = await request.app[NODE_KEY].presence(room_name(request))
    return _json({"total_count": len(participants), "data": participants})


@rest
async def rest_get_session_data(request: web.Request) -> web.Response:
    return _json({"data": await request.app[NODE_KEY].session_data(room_name(request))})


@rest
async def rest_set_session_data(request: web.Request) -> web.Response:
    node, name, body = request.app[NODE_KEY], room_name(request), await _body(request)
    try:
        write = parse_session_data_write(body, None, node.limits)
        data = await node.rest_set_session_data(name, write)
    except RequestError as exc:
        raise _refused(exc) from None
    return _json({"data": data})


def _refused(exc: RequestError) -> web.HTTPException:
    """A write the node refused: 503 if it may not store now (retry later), else 400."""
    if exc.code == "unavailable":
        return _rest_error(503, "unavailable", exc.message)
    return _rest_error(400, "invalid-request-error", exc.message)


@rest
async def rest_meeting_token(request: web.Request) -> web.Response:
    node, body = request.app[NODE_KEY], await _body(request)
    if node.settings.api_key is None:
        info = "meeting tokens need an API key (ROOMSTATE_API_KEY); development mode has none"
        raise _rest_error(400, "invalid-request-error", info)
    props = body.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("room_name"), str):
        raise _rest_error(400, "invalid-request-error", "'properties.room_name' is required")
    fields = {"user_name": str, "user_id": str, "is_owner": bool, "exp": int, "nbf": int}
    names = {str: "a string", bool: "a boolean", int: "an integer (Unix seconds)"}
    for field, kind in fields.items():
        value = props.get(field)
        if value is not None and type(value) is not kind:  # (True is not an int here)
            raise _rest_error(400, "invalid-request-error", f"'{field}' must be {names[kind]}")
    try:
        token = make_token(
            node.settings.api_key,
            props["room_name"],
            user_name=props.get("user_name"),
            user_id=props.get("user_id"),
            owner=props.get("is_owner") is True,
            exp=props.get("exp"),
            nbf=props.get("nbf"),
        )
    except ValueError as exc:  # a room name or user name a join would refuse
        raise _rest_error(400, "invalid-request-error", str(exc)) from None
    return _json({"token": token})


# -- health, metrics, pages --


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[NODE_KEY].ready
    return _json({"ready": ready}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[NODE_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def demo_page(request: web.Request) -> web.FileResponse:
    room_name(request)
    return web.FileResponse(STATIC / "demo.html")


async def sdk(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        BROWSER_SDK / "roomstate.js", headers={"Content-Type": "text/javascript"}
    )


def build_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=node.settings.frame_bytes * 2)
    app[NODE_KEY] = node
    app.router.add_get("/v1/rooms/{room}/ws", websocket)
    app.router.add_post("/v1/rooms/{room}/send-app-message", rest_send_app_message)
    app.router.add_get("/v1/rooms/{room}/presence", rest_presence)
    app.router.add_get("/v1/rooms/{room}/session-data", rest_get_session_data)
    app.router.add_post("/v1/rooms/{room}/session-data", rest_set_session_data)
    app.router.add_post("/v1/meeting-tokens", rest_meeting_token)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/rooms/{room}", demo_page)
    app.router.add_get("/sdk/roomstate.js", sdk)
    return app


def make_bus(settings: Settings) -> Bus:
    if settings.redis or settings.redis_cluster:
        from roomstate.bus.redis.bus import RedisBus  # the only module that imports redis

        return RedisBus(settings)
    return MemoryBus(room_grace_s=settings.room_grace_s)


async def serve(settings: Settings, started: Callable[[str], None] | None = None) -> None:
    """Run a node until cancelled or sent SIGTERM/SIGINT, then shut down gracefully."""
    if settings.development and settings.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(
            f"refusing to listen on {settings.host} without an API key: development mode"
            " (anonymous joins, open REST) is for loopback only; set ROOMSTATE_API_KEY"
        )
    bus = make_bus(settings)
    await bus.start()
    node = Node(settings, bus)
    await node.start()
    runner = web.AppRunner(
        build_app(node),
        handle_signals=False,
        access_log=None,
        # Half-open handshakes (slowloris): aiohttp's keep-alive timer starts when a connection
        # is accepted and closes it if no whole request (headers included) came by then; it
        # does not touch a connection whose request (a WebSocket) is being handled.
        keepalive_timeout=settings.handshake_timeout_s,
        max_headers=settings.max_headers,  # more header lines: 400 (explicit: older aiohttp
        # releases allowed 32768)
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = runner.addresses[0][1]
    if settings.development:
        log.warning(
            "development mode: no API key, so joins are anonymous and REST is open; "
            "listening on loopback only"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if started is not None:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address
        started(f"http://{host}:{port}")
    try:
        await stop.wait()
    finally:
        log.info("shutting down: participants leave, clients get close code %d", CLOSE_RESTART)
        await node.shutdown()
        await runner.cleanup()
        await bus.close()
