"""A webhook receiver that takes 10 s per request changes no room's latency: a latency probe's
p99 (app messages in one room, while participants join and leave other rooms, each a webhook
event) with the slow receiver against the same run with a receiver that answers at once."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from deploy.local.servers import RedisServer, free_port

from .conftest import FAST, LatencyProbe, start_node

pytestmark = pytest.mark.faults

SECRET = base64.b64encode(b"slow-receiver-key-0123456789").decode()
RUN_S = 8.0


async def receiver(delay_s: float) -> AsyncGenerator[tuple[str, list[int]], None]:
    answered: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_s)
        answered.append(1)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", answered
    await runner.cleanup()


async def run(tmp: Path, delay_s: float) -> tuple[float, int, int]:
    """The probe's p99 (ms), the probe's messages and the webhook events answered."""
    redis = RedisServer.start(tmp)
    hooks = receiver(delay_s)
    url, answered = await anext(hooks)
    env = {**FAST, "ROOMSTATE_WEBHOOK_URL": url, "ROOMSTATE_WEBHOOK_SECRET": SECRET}
    node = start_node(tmp, env, "--redis", redis.url)
    try:
        async with aiohttp.ClientSession() as http:
            probe = await LatencyProbe(http, node.ws_url("probe")).start()
            await asyncio.sleep(1)
            probe.reset()
            loop = asyncio.get_running_loop()
            end = loop.time() + RUN_S
            i = 0
            while loop.time() < end:  # churn: 5 joins and leaves a second, other rooms
                async with http.ws_connect(node.ws_url(f"churn-{i % 20}")) as ws:
                    await ws.send_json({"type": "join", "id": "j", "userName": f"c{i}"})
                    await ws.receive()
                    await ws.send_json({"type": "leave", "id": "l"})
                    await ws.receive()
                i += 1
                await asyncio.sleep(0.2)
            p99, sent = probe.p99(), len(probe.latencies)
            await probe.stop()
        return p99, sent, len(answered)
    finally:
        node.stop()
        redis.stop()
        await hooks.aclose()


async def test_a_receiver_taking_10_s_per_request_does_not_slow_rooms(tmp_path: Path) -> None:
    fast_p99, fast_sent, fast_answered = await run(tmp_path / "fast", 0.0)
    slow_p99, slow_sent, slow_answered = await run(tmp_path / "slow", 10.0)
    print(
        f"probe p99: receiver answering at once {fast_p99:.1f} ms ({fast_sent} messages,"
        f" {fast_answered} webhooks); taking 10 s {slow_p99:.1f} ms ({slow_sent} messages,"
        f" {slow_answered} webhooks answered)"
    )
    assert fast_answered > 20 and slow_answered < fast_answered
    assert slow_sent > 0.8 * fast_sent
    assert slow_p99 <= max(2 * fast_p99, fast_p99 + 10.0)
