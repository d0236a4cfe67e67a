"""A node in the test's own process: its aiohttp app on a real loopback socket and the in-memory
bus, for tests that look inside the node (what Python's collector finds, a round of its upkeep)
instead of only at what its clients see."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from roomstate.bus import MemoryBus
from roomstate.edge.node import Node
from roomstate.server.app import build_app, make_node
from roomstate.settings import Settings


@dataclass
class InProcessNode:
    node: Node
    bus: MemoryBus
    runner: web.AppRunner
    url: str  # the WebSocket URL of the room the node was started for


@contextlib.asynccontextmanager
async def node_in_process(
    settings: Settings, room: str, bus: MemoryBus | None = None
) -> AsyncIterator[InProcessNode]:
    """`bus`: an in-memory bus of the test's own (one that can be made to wait, say)."""
    bus = bus if bus is not None else MemoryBus(room_grace_s=settings.room_grace_s)
    await bus.start()
    node = make_node(settings, bus)
    await node.start()
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield InProcessNode(node, bus, runner, f"ws://127.0.0.1:{port}/v1/rooms/{room}/ws")
    finally:
        await node.shutdown()
        await runner.cleanup()
        await bus.close()
