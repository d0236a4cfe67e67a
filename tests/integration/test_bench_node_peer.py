"""The Node.js Socket.IO peer of the bench (bench/systems/node_peer): its packages install from
the lock file, and two processes relay a message between their clients through one Redis, with
either adapter; the speech is the load generator's (Engine.IO 4 / Socket.IO 5 over a WebSocket)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from bench.harness.peers import node_peer_installed, start_node_peer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]


async def connect(
    session: aiohttp.ClientSession, url: str, room: str
) -> aiohttp.ClientWebSocketResponse:
    """Open, connect to the namespace "/", join `room` and wait for the join's ack."""
    ws = await session.ws_connect(url)
    opened = await ws.receive_str()
    assert opened.startswith("0{") and '"sid"' in opened, opened
    await ws.send_str("40")
    assert (await ws.receive_str()).startswith("40"), "no namespace connect"
    await ws.send_str(f'420["join","{room}"]')
    assert await next_packet(ws) == '430["ok"]'
    return ws


async def next_packet(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The next packet that is not a ping (answered)."""
    while True:
        text = await ws.receive_str()
        if text == "2":
            await ws.send_str("3")
            continue
        return text


@pytest.mark.parametrize("adapter", ["streams", "pubsub"])
async def test_two_node_processes_relay_a_message_through_redis(
    adapter: str, tmp_path: Path
) -> None:
    dep = await asyncio.to_thread(start_node_peer, tmp_path, adapter)
    try:
        assert node_peer_installed()
        assert len(dep.entries) == 2 and len(dep.store_pids()) == 1
        async with aiohttp.ClientSession() as session:
            sender = await connect(session, dep.ws_url(0, "r1"), "r1")
            receiver = await connect(session, dep.ws_url(1, "r1"), "r1")
            elsewhere = await connect(session, dep.ws_url(1, "r2"), "r2")
            data = {"k": "hello", "p": "x"}
            # the first emit may precede the other process's first read of the stream
            await asyncio.sleep(0.3)
            await sender.send_str(f'42["msg",{json.dumps(data)}]')
            async with asyncio.timeout(10):
                got = await next_packet(receiver)
            assert json.loads(got[2:]) == ["msg", data]
            # neither the sender nor another room's member gets it
            for ws in (sender, elsewhere):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await next_packet(ws)
            for ws in (sender, receiver, elsewhere):
                await ws.close()
    finally:
        await asyncio.to_thread(dep.stop)
