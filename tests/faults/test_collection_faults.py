"""Resume, node loss and Redis loss with removals really forgotten (docs/crdt.md, "Forgetting
removals"): three nodes on a real redis-server with a 4 s horizon (ROOMSTATE_TOMBSTONE_KEEP_S),
so that every test waits until the removed ids are gone from Redis's hash and from a node's
replica before the fault, and then checks that nobody removed comes back and nobody live is lost.

Node 0 runs in this process (served on a loopback port, as `roomstate serve` does) so that its
replica can be read; nodes 1 and 2 are `roomstate serve` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from deploy.local.servers import RedisServer
from roomstate.bus.redis.bus import RedisBus, state_key
from roomstate.crdt import RoomState
from roomstate.edge.node import Node
from roomstate.sdk.client import CallClient
from roomstate.server.app import build_app, make_node
from roomstate.settings import Settings

from .conftest import FAST, NodeProcess, start_node

pytestmark = pytest.mark.faults

KEEP_S = 4  # the horizon: short, so that collection happens within each test
RESUME_GRACE_S = 20  # longer than it takes to collect, so a drop can outlive the collection
ENV = {
    **FAST,
    "ROOMSTATE_TOMBSTONE_KEEP_S": str(KEEP_S),
    "ROOMSTATE_RESUME_GRACE_S": str(RESUME_GRACE_S),
}
COLLECT_TIMEOUT_S = 4 * KEEP_S  # removals gone from Redis and the replica by then


@dataclass
class LocalNode:
    """Node 0: a node served from this process, its replicas readable."""

    node: Node
    runner: web.AppRunner
    url: str

    def room_url(self, room: str) -> str:
        return f"{self.url}/rooms/{room}"

    def replica(self, room: str) -> RoomState:
        return self.node.hosting.rooms[room].state

    async def stop(self) -> None:
        await self.node.shutdown()
        await self.runner.cleanup()
        await self.node.bus.close()


async def start_local_node(redis: RedisServer) -> LocalNode:
    settings = Settings(
        redis=redis.url,
        node_id="node-0",
        port=0,
        tombstone_keep_s=KEEP_S,
        resume_grace_s=RESUME_GRACE_S,
        room_grace_s=float(FAST["ROOMSTATE_ROOM_GRACE_S"]),
        session_data_interval_ms=int(FAST["ROOMSTATE_SESSION_DATA_INTERVAL_MS"]),
        max_loop_lag_ms=5000,  # the loop is the test's too: its waits are not the node's load
    )
    bus = RedisBus(settings)
    await bus.start()
    node = make_node(settings, bus)
    await node.start()
    runner = web.AppRunner(build_app(node), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return LocalNode(node, runner, f"http://127.0.0.1:{runner.addresses[0][1]}")


@dataclass
class Fleet:
    redis: RedisServer
    local: LocalNode
    procs: list[NodeProcess]  # nodes 1 and 2

    def url(self, index: int, room: str) -> str:
        return self.local.room_url(room) if index == 0 else self.procs[index - 1].room_url(room)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path / "redis")  # no persistence
    yield server
    server.stop()


@pytest.fixture
async def fleet(tmp_path: Path, redis: RedisServer) -> AsyncIterator[Fleet]:
    procs: list[NodeProcess] = []
    try:
        for i in (1, 2):  # (before node 0: starting them blocks this loop)
            procs.append(
                start_node(
                    tmp_path, {**ENV, "ROOMSTATE_NODE_ID": f"node-{i}"}, "--redis", redis.url
                )
            )
        local = await start_local_node(redis)
        try:
            yield Fleet(redis, local, procs)
        finally:
            await local.stop()
    finally:
        for proc in procs:
            proc.stop()


# -- what Redis and the clients hold --


def redis_fields(redis: RedisServer, room: str) -> set[str]:
    flat = redis.command("HGETALL", state_key(room))
    assert isinstance(flat, list)
    return {f.decode() if isinstance(f, bytes) else str(f) for f in flat[0::2]}


def stored_removed(redis: RedisServer, room: str) -> set[str]:
    return {f[2:] for f in redis_fields(redis, room) if f.startswith("x:")}


def stored_present(redis: RedisServer, room: str) -> set[str]:
    """Session ids with a register in Redis's hash (present or not)."""
    return {f.split(":")[1] for f in redis_fields(redis, room) if f.startswith("p:")}


def seen(client: CallClient) -> set[str]:
    return {str(p["session_id"]) for p in client.participants().values()}


@contextlib.asynccontextmanager
async def ticking(client: CallClient) -> AsyncIterator[None]:
    """A write every 0.3 s: the store collects as it stores events."""

    async def tick() -> None:
        n = 0
        while True:
            n += 1
            with contextlib.suppress(Exception):
                await client.set_meeting_session_data({"tick": n}, "shallow-merge")
            await asyncio.sleep(0.3)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def churn(fleet: Fleet, room: str, clients: list[CallClient], count: int) -> set[str]:
    """`count` participants join through nodes 1 and 2, write, and leave: their session ids."""
    gone = set()
    for i in range(count):
        client = CallClient(timeout=5.0)
        clients.append(client)
        await client.join(fleet.url(1 + i % 2, room), user_name=f"churn-{i}")
        await client.set_user_data({"churn": i})
        gone.add(str(client.session_id))
        await client.leave()
    return gone


async def wait_collected(fleet: Fleet, room: str, removed: set[str]) -> tuple[int, int]:
    """Until none of `removed` is held as a removal by Redis nor by node 0's replica (each
    held all of them first); the removal counts of Redis and of the replica before it."""
    async with asyncio.timeout(5):
        while not (
            removed <= stored_removed(fleet.redis, room)
            and removed <= fleet.local.replica(room).removed
        ):
            await asyncio.sleep(0.05)
    before = (len(stored_removed(fleet.redis, room)), len(fleet.local.replica(room).removed))
    started = time.monotonic()
    async with asyncio.timeout(COLLECT_TIMEOUT_S):
        while removed & (stored_removed(fleet.redis, room) | fleet.local.replica(room).removed):
            await asyncio.sleep(0.1)
    after = (len(stored_removed(fleet.redis, room)), len(fleet.local.replica(room).removed))
    print(
        f"\nremovals held: Redis {before[0]} -> {after[0]}, node 0's replica {before[1]} -> "
        f"{after[1]}, {time.monotonic() - started:.1f} s after all were held"
    )
    assert after[0] < before[0] and after[1] < before[1]
    return before


async def assert_nobody_back(
    fleet: Fleet,
    room: str,
    live: list[CallClient],
    gone: set[str],
    watch_s: float,
    nodes: tuple[int, ...] = (0, 1, 2),
) -> None:
    """For `watch_s`: every live client sees exactly the live ones, and none of `gone` is in
    any client's view, in Redis or in node 0's replica; then a late joiner on each of `nodes`
    sees the same."""
    expected = {str(c.session_id) for c in live}
    async with asyncio.timeout(10):
        while not all(seen(c) == expected for c in live):
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + watch_s
    while time.monotonic() < deadline:
        for c in live:
            assert seen(c) == expected, f"{c.session_id} sees {seen(c)}, not {expected}"
        assert not gone & stored_present(fleet.redis, room), "a removed participant is in Redis"
        replica = fleet.local.replica(room)
        assert set(replica.present()) == expected, f"node 0's replica: {set(replica.present())}"
        assert not gone & set(replica.participants), "a removed participant is in the replica"
        await asyncio.sleep(0.1)
    for c in live:
        joined = [e["participant"]["session_id"] for e in c.events("participant-joined")]
        again = {sid for sid in gone if joined.count(sid) > 1}
        assert not again, f"removed participants joined again: {again}"
    lates: set[str] = set()  # (one's leave may not have reached the next one's node yet)
    for index in nodes:
        late = CallClient(timeout=5.0)
        await late.join(fleet.url(index, room))
        lates.add(str(late.session_id))
        try:
            assert seen(late) - lates == expected, f"late joiner on node {index}"
        finally:
            await late.leave()


async def spread(fleet: Fleet, room: str, clients: list[CallClient]) -> list[CallClient]:
    """One participant through each node, with userData."""
    made = []
    for index in range(3):
        client = CallClient(timeout=5.0)
        clients.append(client)
        await client.join(fleet.url(index, room), user_name=f"live-{index}")
        await client.set_user_data({"live": index})
        made.append(client)
    return made


# -- the faults --


async def test_a_resume_on_another_node_after_others_removals_were_forgotten(
    fleet: Fleet, room: str, clients: list[CallClient]
) -> None:
    a, b, p = await spread(fleet, room, clients)
    async with ticking(a):
        gone = await churn(fleet, room, clients, 6)
        sid, token = p.session_id, p.resume_token
        await p.close()  # the network drops; it may resume for RESUME_GRACE_S
        await wait_collected(fleet, room, gone)
        reply = await p.join(fleet.url(1, room), resume=token)
        assert (reply["sessionId"], reply["resumed"]) == (sid, True)
        # its registers are older than every floor now: held, so not refused
        assert p.participants()["local"]["userData"] == {"live": 2}
        await assert_nobody_back(fleet, room, [a, b, p], gone, watch_s=2.0)
    for other in (a, b):
        left = {e["participant"]["session_id"] for e in other.events("participant-left")}
        assert sid not in left, "the resumed participant left"


async def test_a_killed_nodes_participants_leave_and_stay_gone_once_forgotten(
    fleet: Fleet, room: str, clients: list[CallClient]
) -> None:
    a, b, c = await spread(fleet, room, clients)
    victims = []
    for i in range(3):
        victim = CallClient(timeout=5.0)
        clients.append(victim)
        await victim.join(fleet.url(2, room), user_name=f"victim-{i}")
        await victim.set_user_data({"victim": i})
        victims.append(victim)
    gone = {str(v.session_id) for v in [*victims, c]}
    async with ticking(a):
        async with asyncio.timeout(5):
            while not all(len(seen(c)) == 6 for c in (a, b)):
                await asyncio.sleep(0.05)
        os.kill(fleet.procs[1].proc.pid, signal.SIGKILL)
        async with asyncio.timeout(12):
            while not all(
                gone <= {e["participant"]["session_id"] for e in c.events("participant-left")}
                for c in (a, b)
            ):
                await asyncio.sleep(0.05)
        for c in (a, b):
            reasons = {e["reason"] for e in c.events("participant-left")}
            assert reasons == {"node-lost"}, reasons
        await wait_collected(fleet, room, gone)
        await assert_nobody_back(fleet, room, [a, b], gone, watch_s=2.0, nodes=(0, 1))


async def test_redis_loses_its_data_after_collection_and_nothing_forgotten_comes_back(
    fleet: Fleet, room: str, clients: list[CallClient]
) -> None:
    a, b, c = await spread(fleet, room, clients)
    async with ticking(a):
        gone = await churn(fleet, room, clients, 6)
        await wait_collected(fleet, room, gone)
        fleet.redis.command("FLUSHALL")  # what a restart without persistence leaves
        flushed_at = time.monotonic()
        live = {str(x.session_id) for x in (a, b, c)}
        async with asyncio.timeout(10):
            while stored_present(fleet.redis, room) != live:
                await asyncio.sleep(0.05)
        print(f"merged back into Redis {time.monotonic() - flushed_at:.2f} s after FLUSHALL")
        await b.set_meeting_session_data({"after": True}, "shallow-merge")
        # through a whole horizon after the loss: Redis sets its floor again meanwhile
        await assert_nobody_back(fleet, room, [a, b, c], gone, watch_s=KEEP_S + 2.0)
        assert "g" in redis_fields(fleet.redis, room), "Redis set no floor after a horizon"
    for x in (a, b, c):
        assert x.meeting_session_state()["data"].get("after") is True
        assert x.participants()["local"]["userData"] is not None
