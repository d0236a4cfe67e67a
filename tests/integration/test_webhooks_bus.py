"""Webhook events recorded by the bus's publish, and the queue they wait in, on each bus: the
in-memory one, Redis and a Redis Cluster (real redis-server processes). The same steps as the
unit tests of the in-memory twin (tests/unit/test_webhook_queue.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from deploy.local.servers import RedisCluster, RedisServer
from roomstate.bus import Bus, MemoryBus
from roomstate.bus.redis.bus import RedisBus
from roomstate.bus.redis.keys import shard_of
from roomstate.crdt import RoomState, Stamp
from roomstate.settings import Settings
from roomstate.webhooks.events import Recorded, to_event
from roomstate.wire.events import AppMessage, BusEvent

pytestmark = pytest.mark.integration

ORIGIN = "n1/inc"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster.start(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


def _settings(name: str, request: pytest.FixtureRequest) -> Settings | None:
    if name == "memory":
        return None
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        server.command("FLUSHALL")
        return Settings(redis=server.url, room_grace_s=60)
    cluster = request.getfixturevalue("redis_cluster")
    for master in cluster.master_servers():
        master.command("FLUSHALL")
    return Settings(redis_cluster=cluster.seeds, room_grace_s=60)


async def _bus(settings: Settings | None, webhooks: bool) -> Bus:
    bus: Bus = MemoryBus(room_grace_s=60) if settings is None else RedisBus(settings)
    bus.webhooks = webhooks
    await bus.start()
    return bus


@pytest.fixture(params=["memory", "redis", "cluster"])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Bus, Bus]]:
    """Two buses on one store, as two nodes have (one bus twice, in memory)."""
    settings = _settings(request.param, request)
    first = await _bus(settings, True)
    second = first if settings is None else await _bus(settings, True)
    yield first, second
    await first.close()
    if second is not first:
        await second.close()


def joined(sid: str, name: str) -> BusEvent:
    info = {"user_name": name, "user_id": f"u-{name}", "joined_at": 1_000}
    delta = RoomState().join(sid, info, {"node": "n1"}, None, Stamp(1_000, 0, "n1"))
    return BusEvent(ORIGIN, 1_000, delta)


def left(sid: str, reason: str) -> BusEvent:
    return BusEvent(ORIGIN, 2_000, RoomState(removed={sid}), reason=reason)


async def read_all(bus: Bus, consumer: str) -> list[Recorded]:
    """Everything waiting, taken by `consumer` (each shard's lease held as a deliverer does)."""
    queue, found = bus.webhook_queue, []
    async with asyncio.timeout(5):
        for shard in range(queue.shards):
            if (await queue.hold(shard, consumer, consumer, 60_000))[0]:
                found += (await queue.claim(shard, consumer, 60_000, 1000))[0]
                while batch := await queue.read(shard, consumer, 100):
                    found += batch
    return found


def shard_in(bus: Bus, room: str) -> int:
    return 0 if bus.webhook_queue.shards == 1 else shard_of(room)


def summary(recorded: list[Recorded], room: str) -> list[tuple[str, str, str]]:
    return [
        (r.fields["k"], r.fields.get("s", ""), r.fields.get("w", ""))
        for r in recorded
        if r.room == room
    ]


async def test_each_change_is_recorded_once_whichever_node_stores_it(
    buses: tuple[Bus, Bus],
) -> None:
    a, b = buses
    await a.publish("demo", joined("s1", "ann"))
    await b.publish("demo", joined("s1", "ann"))  # the same join merged by another node
    await b.publish("demo", joined("s2", "bob"))
    await b.publish("demo", BusEvent(ORIGIN, 1_500, message=AppMessage({"x": 1}, "s1", "*")))
    await a.publish("demo", left("s1", "node-lost"))
    await b.publish("demo", left("s1", "node-lost"))  # both nodes judged it lost
    await a.publish("demo", left("s2", "left"))
    recorded = await read_all(a, "c1")
    assert summary(recorded, "demo") == [
        ("s", "", ""),
        ("j", "s1", ""),
        ("j", "s2", ""),
        ("l", "s1", "node-lost"),
        ("l", "s2", "left"),
        ("e", "", ""),  # the room emptied: the meeting ends unless someone comes back
    ]
    assert await b.webhook_queue.meeting("demo") == (recorded[0].fields["m"], 0)
    events = [to_event(r, 0)["payload"] for r in recorded if r.room == "demo"]
    assert [e.get("user_name") for e in events] == [None, "ann", "bob", "ann", "bob", None]
    ids = [r.id for r in recorded]
    assert len(set(ids)) == len(ids)
    meeting = {r.fields["m"] for r in recorded}
    assert len(meeting) == 1 and meeting != {""}, "every event names the one meeting"


def data(values: dict[str, int], ms: int) -> BusEvent:
    return BusEvent(ORIGIN, ms, RoomState().merge_session_data(values, Stamp(ms, 0, "n1")))


async def test_session_data_changes_coalesce_until_a_delivery_reads_them(
    buses: tuple[Bus, Bus],
) -> None:
    a, b = buses
    await a.publish("sd", data({"poll": 1}, 1_000))
    await b.publish("sd", data({"poll": 2}, 1_001))
    assert summary(await read_all(a, "c1"), "sd") == [("d", "", "")]
    assert await b.webhook_queue.session_data("sd") == {"poll": 2}
    await a.publish("sd", data({"agenda": 3}, 1_002))  # after the read: recorded again
    assert summary(await read_all(b, "c1"), "sd") == [("d", "", "")]
    assert await a.webhook_queue.session_data("sd") == {"poll": 2, "agenda": 3}


async def test_one_reader_a_shard_and_a_new_one_takes_over_in_stream_order(
    buses: tuple[Bus, Bus],
) -> None:
    a, b = buses
    qa, qb = a.webhook_queue, b.webhook_queue
    for i in range(4):
        await a.publish("order", joined(f"s{i}", f"p{i}"))  # a start and 4 joins, one shard
    shard = shard_in(a, "order")
    assert await qa.hold(shard, "n1", "n1/1", 500) == (True, True)
    assert (await qb.hold(shard, "n2", "n2/1", 60_000))[0] is False  # n1 holds it
    assert await qb.read(shard, "n2/1", 10) == []  # only the holder reads
    first = await qa.read(shard, "n1/1", 3)
    await asyncio.sleep(0.3)
    await qa.touch(shard, "n1/1", [first[0].position])  # still worked on
    await asyncio.sleep(0.3)  # n1's lease and membership ran out: a dead or cut-off node
    assert await qb.hold(shard, "n2", "n2/1", 60_000) == (True, True)
    assert await qa.read(shard, "n1/1", 10) == []  # the old holder takes nothing new
    await qa.touch(shard, "n1/1", [first[1].position])  # and keeps nothing (no effect)
    # first[0] was worked on 0.3 s ago: nothing is taken before all of n1's are idle 0.5 s
    assert await qb.claim(shard, "n2/1", 500, 10) == ([], False)
    assert await qb.read(shard, "n2/1", 10) != []  # (a deliverer reads only once caught up)
    await asyncio.sleep(0.3)
    claimed, caught_up = await qb.claim(shard, "n2/1", 500, 10)
    assert caught_up and [r.position for r in claimed] == [r.position for r in first]
    assert summary(first, "order") == [("s", "", ""), ("j", "s0", ""), ("j", "s1", "")]


async def test_a_released_lease_is_taken_over_at_once(buses: tuple[Bus, Bus]) -> None:
    a, b = buses
    qa, qb = a.webhook_queue, b.webhook_queue
    await a.publish("handover", joined("s1", "ann"))
    shard = shard_in(a, "handover")
    assert (await qa.hold(shard, "n1", "n1/1", 60_000))[0]
    taken = await qa.read(shard, "n1/1", 10)
    await qa.release(shard, "n1", "n1/1", 60_000, leaving=True)
    assert await qb.hold(shard, "n2", "n2/1", 60_000) == (True, True)
    claimed, caught_up = await qb.claim(shard, "n2/1", 60_000, 10)
    assert caught_up and [r.id for r in claimed] == [r.id for r in taken]


async def test_stopped_consumers_with_nothing_pending_are_deleted(buses: tuple[Bus, Bus]) -> None:
    a, b = buses
    qa, qb = a.webhook_queue, b.webhook_queue
    await a.publish("gone", joined("s1", "ann"))
    shard = shard_in(a, "gone")
    assert (await qa.hold(shard, "n1", "n1/1", 60_000))[0]
    [start, join] = await qa.read(shard, "n1/1", 10)
    await qa.ack(start)
    await qa.release(shard, "n1", "n1/1", 60_000, leaving=True)
    assert (await qb.hold(shard, "n2", "n2/1", 60_000))[0]
    assert await qb.claim(shard, "n2/1", 60_000, 10) == ([join], True)
    await qb.ack(join)
    assert (await qb.hold(shard, "n2", "n2/2", 60_000))[0] is False  # (n2/1 holds it)
    await asyncio.sleep(0.3)
    assert await qa.forget_consumers(shard, "n1/1", 200) == 0  # only the holder deletes
    assert await qb.forget_consumers(shard, "n2/1", 60_000) == 0  # not idle that long
    assert await qb.forget_consumers(shard, "n2/1", 200) == 1  # n1/1; the holder stays
    assert await qb.forget_consumers(shard, "n2/1", 0) == 0


async def test_a_dead_letter_is_kept_and_replayed_with_its_id(buses: tuple[Bus, Bus]) -> None:
    a, b = buses
    await a.publish("dl", joined("s1", "ann"))
    [start, join] = await read_all(a, "c1")
    await a.webhook_queue.ack(start)
    await a.webhook_queue.dead_letter(join, "http://x answered 500")
    await b.webhook_queue.dead_letter(join, "twice")  # acknowledged already: nothing
    [dead] = await b.webhook_queue.dead_letters(10)
    assert dead.error == "http://x answered 500"
    assert dead.recorded.id == join.id and dead.recorded.fields["s"] == "s1"
    assert await a.webhook_queue.backlog() == 0
    assert await b.webhook_queue.replay(dead.id)
    assert not await b.webhook_queue.replay(dead.id)
    [again] = await read_all(a, "c1")
    assert again.id == join.id and again.fields["i"] == join.fields["i"]
    assert await a.webhook_queue.dead_letters(10) == []


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_nothing_is_recorded_with_webhooks_off(
    kind: str, request: pytest.FixtureRequest
) -> None:
    bus = await _bus(_settings(kind, request), False)
    try:
        await bus.publish("off", joined("s1", "ann"))
        await bus.publish("off", left("s1", "left"))
        assert await read_all(bus, "c1") == []
        assert await bus.webhook_queue.backlog() == 0
    finally:
        await bus.close()
