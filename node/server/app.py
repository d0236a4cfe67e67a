"""The HTTP and WebSocket server (aiohttp): the app's routes, and running a node behind them.

Routes:
    GET  /v1/rooms/{room}/ws                 WebSocket endpoint (wire protocol v1): websocket.py
    POST /v1/rooms/{room}/send-app-message   REST, bearer API key: rest.py
    GET  /v1/rooms/{room}/presence
    GET  /v1/rooms/{room}/get-session-data
    POST /v1/rooms/{room}/set-session-data
    GET  /v1/rooms/{room}/session-data       (the older session-data path, an alias)
    POST /v1/rooms/{room}/session-data
    POST /v1/meeting-tokens
    GET  /v1/meeting-tokens/{token}
    GET  /v1/openapi.json                    the REST API's OpenAPI document
    GET  /healthz  /readyz  /metrics
    GET  /rooms/{room}                       the demo page
    GET  /sdk/roomstate.js  /sdk/roomstate.d.ts   the browser SDK and its types

The app owns what the node must not know of: the `WriteBatch` its connections share, and the
fan-out that builds each WebSocket frame once (`make_node` gives it to the node).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roomstate.bus import Bus, MemoryBus
from roomstate.edge.node import CLOSE_RESTART, Node
from roomstate.metrics import Metrics, WebhookMetrics
from roomstate.server.fastpath import WriteBatch, fan_out
from roomstate.server.rest import (
    NODE_KEY,
    json_response,
    openapi,
    rest_get_session_data,
    rest_meeting_token,
    rest_presence,
    rest_read_meeting_token,
    rest_send_app_message,
    rest_set_session_data,
    rest_set_session_data_alias,
    room_name,
)
from roomstate.server.webhooks import rest_dead_letters, rest_replay_dead_letter
from roomstate.server.websocket import BATCH_KEY, websocket
from roomstate.settings import Settings
from roomstate.webhooks.delivery import Deliverer

__all__ = ["build_app", "make_bus", "make_node", "serve"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"  # the demo page
BROWSER_SDK = Path(__file__).parents[1] / "sdk" / "browser"


# -- health, metrics, pages --


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[NODE_KEY].ready
    return json_response({"ready": ready}, status=200 if ready else 503)


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


async def sdk_types(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        BROWSER_SDK / "roomstate.d.ts", headers={"Content-Type": "application/typescript"}
    )


def build_app(node: Node) -> web.Application:
    """The app serving `node` (made by `make_node`, so that its frames reach the sockets)."""
    app = web.Application(client_max_size=node.settings.frame_bytes * 2)
    app[NODE_KEY] = node
    app[BATCH_KEY] = WriteBatch()  # frames to each client, one write per loop iteration
    app.router.add_get("/v1/rooms/{room}/ws", websocket)
    app.router.add_post("/v1/rooms/{room}/send-app-message", rest_send_app_message)
    app.router.add_get("/v1/rooms/{room}/presence", rest_presence)
    app.router.add_get("/v1/rooms/{room}/get-session-data", rest_get_session_data)
    app.router.add_post("/v1/rooms/{room}/set-session-data", rest_set_session_data)
    app.router.add_get("/v1/rooms/{room}/session-data", rest_get_session_data)  # older path
    app.router.add_post("/v1/rooms/{room}/session-data", rest_set_session_data_alias)
    app.router.add_post("/v1/meeting-tokens", rest_meeting_token)
    app.router.add_get("/v1/meeting-tokens/{token}", rest_read_meeting_token)
    app.router.add_get("/v1/webhooks/dead-letters", rest_dead_letters)
    app.router.add_post("/v1/webhooks/dead-letters/{id}/replay", rest_replay_dead_letter)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/rooms/{room}", demo_page)
    app.router.add_get("/sdk/roomstate.js", sdk)
    app.router.add_get("/sdk/roomstate.d.ts", sdk_types)
    return app


def make_node(settings: Settings, bus: Bus, metrics: Metrics | None = None) -> Node:
    """A node whose frames go to WebSocket connections (`fastpath.fan_out`)."""
    return Node(settings, bus, metrics, fan_out=fan_out)


def make_bus(settings: Settings) -> Bus:
    if settings.redis or settings.redis_cluster or settings.redis_sentinel:
        from roomstate.bus.redis.bus import RedisBus  # the only module that imports redis

        bus: Bus = RedisBus(settings)
    else:
        bus = MemoryBus(
            room_grace_s=settings.room_grace_s,
            keep_ms=int(settings.tombstone_keep_s * 1000),
            max_drift_ms=settings.max_drift_ms,
        )
    bus.webhooks = bool(settings.webhook_urls)  # its publishes record the webhook events
    return bus


async def serve(
    settings: Settings, started: Callable[[str], None] | None = None, *, reuse_port: bool = False
) -> None:
    """Run a node until cancelled or sent SIGTERM/SIGINT, then shut down gracefully.

    `reuse_port`: listen with SO_REUSEPORT, beside the other workers of one supervisor
    (roomstate.supervisor); the kernel spreads new connections over them.
    """
    if settings.development and settings.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(
            f"refusing to listen on {settings.host} without an API key: development mode"
            " (anonymous joins, open REST) is for loopback only; set ROOMSTATE_API_KEY"
        )
    if settings.tracemalloc_dir:  # diagnosis only: every allocation is traced from now on
        from roomstate.memtrace import start as trace_allocations

        trace_allocations(settings.tracemalloc_dir)
    bus = make_bus(settings)
    await bus.start()
    node = make_node(settings, bus)
    await node.start()
    deliverer = None
    if settings.webhook_urls:
        webhook_metrics = WebhookMetrics()
        node.metrics.watch_webhooks(webhook_metrics)
        consumer = node.identity.origin  # one per incarnation: a restart's claims are new
        deliverer = Deliverer(bus.webhook_queue, settings, consumer, webhook_metrics)
        await deliverer.start()
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
    # Without reuse_port a second node started on a taken port fails instead of sharing it.
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
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
        if deliverer is not None:  # (what it has not delivered stays pending in the store)
            await deliverer.close()
        await bus.close()
