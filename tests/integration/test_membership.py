"""A node busy is not a node paused: its event loop blocked for longer than the lease lasts (what
a fan-out to thousands looks like to the loop) must not cost it its lease, its clients or its
writes, while a loop stuck for good is judged lost as a paused one is.

The node under test runs in this process (its aiohttp app on a real socket) on a real Redis, so
that the test can block its loop; the node that would remove its participants if its lease
expired is a real node process on the same Redis. A real pause (SIGSTOP) is
tests/faults/test_fencing.py's and test_multi_node.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from deploy.local.servers import RedisServer
from roomstate.bus.redis.bus import RedisBus, state_key
from roomstate.bus.redis.connections import WRITE_TIMEOUT_S
from roomstate.edge.identity import LEASE_TTL_MS
from roomstate.edge.node import Node
from roomstate.sdk.client import CallClient, ConnectionClosed
from roomstate.server.app import build_app, make_node
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent

from .conftest import FAST, NodeProcess, start_node

pytestmark = pytest.mark.integration

BLOCK_S = LEASE_TTL_MS / 1000 + 2  # longer than a lease lasts


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def observer(tmp_path: Path, redis: RedisServer) -> Iterator[NodeProcess]:
    """A node process on the same Redis: its upkeep removes the participants of nodes whose
    lease expired."""
    process = start_node(tmp_path, FAST, "--redis", redis.url)
    yield process
    process.stop()


@contextlib.asynccontextmanager
async def node_on_redis(redis: RedisServer, loop_stuck_s: float | None = None) -> AsyncIterator[
    tuple[Node, str]
]:  # fmt: skip
    """A node in this process on `redis`; yields it and its base WebSocket URL."""
    settings = Settings(redis=redis.url, resume_grace_s=1.0, room_grace_s=1.5)
    bus = RedisBus(settings)
    await bus.start()
    node = make_node(settings, bus)
    if loop_stuck_s is not None:  # below the settings' floor: to keep the test short
        node.membership.loop_stuck_s = loop_stuck_s
    await node.start()
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield node, f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/rooms"
    finally:
        await node.shutdown()
        await runner.cleanup()
        await bus.close()


def block_the_loop(seconds: float) -> None:
    """Hold the event loop as a long fan-out does: nothing else on it runs meanwhile."""
    time.sleep(seconds)


async def test_a_node_whose_loop_is_blocked_past_the_lease_ttl_keeps_lease_clients_and_writes(
    redis: RedisServer, observer: NodeProcess, room: str
) -> None:
    async with (
        node_on_redis(redis) as (node, base),
        CallClient() as ada,
        CallClient() as bob,
    ):
        await ada.join(f"{base}/{room}/ws")
        await bob.join(observer.ws_url(room))
        await ada.next_event("participant-joined")
        incarnation = node.incarnation
        await asyncio.sleep(LEASE_TTL_MS / 1000)  # the observer's upkeep judges others now

        block_the_loop(BLOCK_S)

        await asyncio.sleep(2.5)  # two of the observer's upkeep rounds
        assert bob.events("participant-left") == [], "the observer removed the busy node's own"
        assert node.incarnation == incarnation, "the busy node fenced itself"
        await ada.set_user_data({"after": "the block"})  # acknowledged: stored
        updated = await bob.next_event("participant-updated")
        assert updated["participant"]["userData"] == {"after": "the block"}
        stored = redis.command("HGETALL", state_key(room))
        assert isinstance(stored, list) and "the block" in str(stored)
        worst = node.metrics.loop_lag.counts[""]
        assert sum(worst[-3:]) >= 1, "the lag of the block is in the metric (over 2.5 s)"


async def test_a_node_whose_loop_is_stuck_past_the_bound_is_judged_lost_and_fences(
    redis: RedisServer, observer: NodeProcess, room: str
) -> None:
    """The keeper stops renewing once the loop has not turned for `loop_stuck_s` (1 s here):
    the lease expires, the observer removes the stuck node's participant, and the node fences
    when its loop comes back, as a paused node does."""
    async with (
        node_on_redis(redis, loop_stuck_s=1.0) as (node, base),
        CallClient() as ada,
        CallClient() as bob,
    ):
        await ada.join(f"{base}/{room}/ws")
        await bob.join(observer.ws_url(room))
        await ada.next_event("participant-joined")
        incarnation = node.incarnation
        await asyncio.sleep(LEASE_TTL_MS / 1000)

        block_the_loop(BLOCK_S)

        left = await bob.next_event("participant-left", timeout=10)
        assert (left["participant"]["session_id"], left["reason"]) == (ada.session_id, "node-lost")
        for _ in range(50):
            if node.incarnation != incarnation:
                break
            await asyncio.sleep(0.1)
        assert node.incarnation != incarnation, "the node came back without fencing"
        with pytest.raises(ConnectionClosed):
            await ada.set_user_data({"after": "the fence"})


async def test_a_write_under_way_while_the_loop_stalls_past_its_timeout_is_not_failed(
    redis: RedisServer, room: str
) -> None:
    """The time the node's own loop stood still is not Redis's: a publish sent (or about to be
    sent) when the loop stalls for longer than a write may take is answered, not failed with
    "Redis did not answer in time" after Redis stored it."""
    bus = RedisBus(Settings(redis=redis.url))
    await bus.start()
    try:
        await bus.publish(room, BusEvent("probe/x", 1))  # the connection is open
        write = asyncio.ensure_future(bus.publish(room, BusEvent("probe/x", 2)))
        await asyncio.sleep(0)  # the command is queued on the connection, not yet written
        block_the_loop(WRITE_TIMEOUT_S + 1)
        position = await write
        assert position is not None
        assert [event.sent_ms for _, event in await bus.read_range(room, "0-0") or []] == [1, 2]
    finally:
        await bus.close()
