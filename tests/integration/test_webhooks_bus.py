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
    found: list[Recorded] = []
    async with asyncio.timeout(5):
        while batch := await bus.webhook_queue.read(consumer, 100):
            found += batch
    return found


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


async def test_each_event_goes_to_one_consumer_and_a_stale_one_is_taken_over(
    buses: tuple[Bus, Bus],
) -> None:
    a, b = buses
    rooms = [f"room-{i}" for i in range(6)]  # several shards
    assert len({shard_of(room) for room in rooms}) > 1
    for room in rooms:
        await a.publish(room, joined("s1", "ann"))
    first = await a.webhook_queue.read("c1", 5)
    rest = await read_all(b, "c2")
    assert len(first) == 5 and len(first) + len(rest) == 12  # a start and a join per room
    assert not {r.id for r in first} & {r.id for r in rest}
    for recorded in rest:
        await b.webhook_queue.ack(recorded)
    await b.webhook_queue.touch("c1", first[0])
    assert await b.webhook_queue.claim_stale("c2", 60_000, 100) == []  # not idle yet
    await asyncio.sleep(0.3)
    await a.webhook_queue.touch("c1", first[0])  # still worked on: not taken over
    stale = await b.webhook_queue.claim_stale("c2", 200, 100)
    assert sorted(r.id for r in stale) == sorted(r.id for r in first[1:])
    assert await a.webhook_queue.backlog() == 5


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
        assert await bus.webhook_queue.read("c1", 10) == []
        assert await bus.webhook_queue.backlog() == 0
    finally:
        await bus.close()
