"""A closed WebSocket connection is freed at once, by reference counting:

- not left for the cyclic garbage collector: on a node with thousands of connections, a full
  collection stops it for tenths of a second (docs/decisions/0005-gc-thresholds.md), so cyclic
  garbage per closed connection means more and longer pauses under churn;
- not held by a timer: when the node closes a connection (a `leave`, a binary frame), the
  peer's close frame used to re-arm aiohttp's heartbeat, whose timer then held the whole
  connection (~11 KB) for 20 s; a node whose clients leave with `leave` grew 11 MB per 1,000.

The node runs in this process (its aiohttp app on a real socket, the in-memory bus) so that the
test can ask Python's collector what it finds; the clients are aiohttp clients on that socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from roomstate.edge.node import Node
from roomstate.settings import Settings

from .inprocess import node_in_process

pytestmark = pytest.mark.integration

CLIENTS = 50
# the types of a connection's server side: aiohttp's server (web_*) and roomstate's server
SERVER_SIDE = ("aiohttp.web_", "roomstate.server.")


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


@contextlib.asynccontextmanager
async def running_node() -> AsyncIterator[tuple[Node, web.AppRunner, str]]:
    """A node in this process, its WebSocket URL for room "memory"."""
    settings = Settings(heartbeat_s=20.0)  # the heartbeat is what aiohttp's cycle hangs on
    async with node_in_process(settings, "memory") as it:
        yield it.node, it.runner, it.url


async def all_gone(node: Node, runner: web.AppRunner, but: int = 0) -> None:
    """Until every connection's handler has returned and aiohttp has let its protocol go, but
    for `but` connections still open."""
    server = runner.server
    assert server is not None
    async with asyncio.timeout(10):
        while len(node.connections) > but or len(server.connections) > but:
            await asyncio.sleep(0.02)


async def test_closed_websocket_connections_leave_no_cyclic_garbage() -> None:
    async with running_node() as (node, runner, url):
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
            await all_gone(node, runner)
            found = cyclic_garbage()
            # Only the server's side of these connections: other tests of the same session may
            # drop their own cyclic garbage meanwhile (bus clients, Hypothesis's data).
            server_side = {t: n for t, n in found.items() if t.startswith(SERVER_SIDE)}
            assert not server_side, (
                f"{CLIENTS} closed connections left cyclic garbage: {server_side}"
            )
        finally:
            gc.enable()


def live_responses() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is web.WebSocketResponse)


@pytest.mark.parametrize(
    ("last_frame", "close_code"),
    [('{"type":"leave","id":2}', 1000), (b"binary", 1003)],
    ids=["leave", "binary frame"],
)
async def test_connections_the_node_closes_are_freed_at_once(
    last_frame: str | bytes, close_code: int
) -> None:
    async with running_node() as (node, runner, url), aiohttp.ClientSession() as session:
        keeper = await session.ws_connect(url)  # the room stays open: only connections go
        await keeper.send_str('{"type":"join","id":1}')
        assert (await keeper.receive_json(timeout=5))["type"] == "joined"
        before = live_responses()
        for _ in range(CLIENTS):
            ws = await session.ws_connect(url)
            await ws.send_str('{"type":"join","id":1}')
            assert (await ws.receive_json(timeout=5))["type"] == "joined"
            await (ws.send_str if isinstance(last_frame, str) else ws.send_bytes)(last_frame)
            async with asyncio.timeout(5):
                async for _message in ws:  # the node's reply, then its close
                    pass
            assert ws.close_code == close_code
        del ws
        await all_gone(node, runner, but=1)
        # a handler may still be in its last steps: give it a second (the timers were 2 s and 20 s)
        deadline = asyncio.get_running_loop().time() + 1.0
        while (left := live_responses() - before) > 0:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert left <= 0, f"{left} of {CLIENTS} connections the node closed are still held"
        await keeper.close()
