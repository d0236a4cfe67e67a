"""A node out of touch with the store for half the horizon of forgetting removals fences
(docs/crdt.md, "Forgetting removals"): removals made meanwhile may be forgotten before its
replicas catch up, so it starts afresh instead of retaking its lease. Shorter outages do not.

The node runs in this process on a real Redis, which is paused (SIGSTOP) for 3 s: less than the
5 s lease, so the lease itself survives; ROOMSTATE_TOMBSTONE_KEEP_S=4 makes that over half of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.servers import RedisServer
from roomstate.bus.redis.bus import RedisBus
from roomstate.server.app import make_node
from roomstate.settings import Settings

pytestmark = pytest.mark.integration

OUTAGE_S = 3.0


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path)
    yield server
    server.stop()


async def incarnation_after_an_outage(redis: RedisServer, keep_s: float = 120.0) -> tuple[str, str]:
    """The node's incarnation before a 3 s outage of Redis, and 3 s after it."""
    settings = Settings(redis=redis.url, tombstone_keep_s=keep_s)
    bus = RedisBus(settings)
    await bus.start()
    node = make_node(settings, bus)
    await node.start()
    try:
        await asyncio.sleep(1.5)  # a few rounds held
        before = node.membership.identity.incarnation
        assert redis.process is not None
        redis.process.pause()
        try:
            await asyncio.sleep(OUTAGE_S)
        finally:
            redis.process.resume()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and node.membership.identity.incarnation == before:
            await asyncio.sleep(0.1)
        return before, node.membership.identity.incarnation
    finally:
        await node.shutdown()
        await bus.close()


async def test_a_node_out_of_touch_for_half_the_horizon_fences(redis: RedisServer) -> None:
    before, after = await incarnation_after_an_outage(redis, keep_s=4)  # half: 2 s
    assert after != before, "the node retook its lease after half a horizon out of touch"


async def test_a_shorter_outage_keeps_the_incarnation(redis: RedisServer) -> None:
    before, after = await incarnation_after_an_outage(redis)
    assert after == before, "a 3 s outage (horizon 120 s) made the node fence"
