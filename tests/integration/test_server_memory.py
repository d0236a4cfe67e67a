"""A closed WebSocket connection is freed by reference counting, not left for the cyclic
garbage collector: on a node with thousands of connections, a full collection stops it for
tenths of a second (docs/decisions/0005-gc-thresholds.md), so cyclic garbage per closed
connection means more and longer pauses under churn.

The node runs in this process (its aiohttp app on a real socket, the in-memory bus) so that the
test can ask Python's collector what it finds; the clients are aiohttp clients on that socket.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from node.bus import MemoryBus
from node.node import Node
from node.server import build_app
from node.settings import Settings

pytestmark = pytest.mark.integration

CLIENTS = 50
# the types of a connection's server side: aiohttp's server (web_*) and node/'s connection
SERVER_SIDE = ("aiohttp.web_", "node.connection.", "node.server.")


def cyclic_garbage() -> Counter[str]:
    """What a full collection finds unreachable now, by type (DEBUG_SAVEALL keeps it in
    gc.garbage instead of freeing it), then freed."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    gc.collect()  # the cycles are still there once gc.garbage lets them go
    return found


async def test_closed_websocket_connections_leave_no_cyclic_garbage() -> None:
    settings = Settings(heartbeat_s=20.0)  # the heartbeat is what aiohttp's cycle hangs on
    bus = MemoryBus(room_grace_s=settings.room_grace_s)
    await bus.start()
    node = Node(settings, bus)
    await node.start()
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/rooms/memory/ws"
    try:
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(url) for _ in range(CLIENTS)]
            for ws in sockets:
                await ws.send_str('{"type":"join","id":1}')
                reply = await ws.receive_json(timeout=5)
                assert reply["type"] == "joined", reply
            gc.collect()  # what start-up and earlier tests left
            gc.disable()  # so that no automatic collection frees the cycles before the check
            for ws in sockets:
                await ws.close()
            del sockets, ws
        server = runner.server
        assert server is not None
        async with asyncio.timeout(10):  # every connection's handler has returned, and aiohttp
            while node.connections or server.connections:  # has let its protocol go
                await asyncio.sleep(0.02)
        found = cyclic_garbage()
        # Only the server's side of these connections: other tests of the same session may
        # drop their own cyclic garbage meanwhile (bus clients, Hypothesis's data).
        server_side = {t: n for t, n in found.items() if t.startswith(SERVER_SIDE)}
        assert not server_side, f"{CLIENTS} closed connections left cyclic garbage: {server_side}"
    finally:
        gc.enable()
        await node.shutdown()
        await runner.cleanup()
        await bus.close()
