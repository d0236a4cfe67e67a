"""The Redis bus's own delivery machinery, on a real redis-server: what a subscriber gets when
its subscription connection is killed, when a message never reaches the channel, and what a
resume's range read returns across a trim."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.cluster

from deploy.local.servers import HOST, RedisCluster, RedisServer
from roomstate.bus import LeaseKeeper, LeaseRound
from roomstate.bus.redis import RedisBus
from roomstate.bus.redis.keys import channel, lease_key, log_key, shard_of, state_key
from roomstate.bus.redis.reader import RESYNC_ORIGIN
from roomstate.crdt import RoomState, Stamp
from roomstate.errors import BusError, FencedError
from roomstate.settings import Settings
from roomstate.wire.events import AppMessage, BusEvent, encode_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


async def start_buses(url: str) -> list[RedisBus]:
    """Two started buses (two nodes' views) on one Redis."""
    made = []
    for n in range(2):
        bus = RedisBus(Settings(redis=url))
        await bus.start()
        bus.start_reading(f"node-{n}/{uuid.uuid4().hex[:6]}")
        made.append(bus)
    return made


@pytest.fixture
async def buses(redis_server: RedisServer) -> AsyncIterator[list[RedisBus]]:
    made = await start_buses(redis_server.url)
    yield made
    for bus in made:
        await bus.close()


def message(n: int) -> BusEvent:
    return BusEvent("publisher/1", 0, message=AppMessage(n, "s1", "*"))


class Received:
    def __init__(self) -> None:
        self.numbers: list[int] = []

    def __call__(self, room: str, position: str, event: BusEvent) -> None:
        assert event.message is not None
        self.numbers.append(event.message.data)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.numbers) < count:
                await asyncio.sleep(0.01)


async def test_a_killed_subscription_connection_loses_nothing(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    publisher, subscriber = buses
    room = f"kill-{uuid.uuid4().hex[:8]}"
    received = Received()
    subscriber.subscribe(room, (await subscriber.snapshot(room)).position, received)
    for n in range(300):
        await publisher.publish(room, message(n))
        if n in (100, 200):  # cut every pub/sub connection off, mid-stream
            killed = redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
            assert isinstance(killed, int) and killed >= 1
    await received.wait_for(300)
    await asyncio.sleep(0.2)  # and no duplicates come after
    assert received.numbers == list(range(300))


async def test_a_subscription_lost_while_its_room_catches_up_is_made_again(
    buses: list[RedisBus],
) -> None:
    """The subscription connection is lost after a room's SSUBSCRIBE, while its catch-up reads
    the stream: the loss finds the catch-up running and starts none, so that catch-up itself
    must subscribe again, or the room hears nothing more."""
    publisher, subscriber = buses
    room = f"race-{uuid.uuid4().hex[:8]}"
    received = Received()
    subscriber.subscribe(room, (await subscriber.snapshot(room)).position, received)
    reader = subscriber.reader
    async with asyncio.timeout(5):  # subscribed, its stream read not yet answered
        while (conn := reader.subscription(room)) is None:
            await asyncio.sleep(0)
    assert reader.catching_up(room), "the catch-up is still running"
    conn.close()  # the connection is lost (a real close)
    async with asyncio.timeout(5):
        while reader.catching_up(room):
            await asyncio.sleep(0.01)
    for n in range(3):
        await publisher.publish(room, message(n))
    await received.wait_for(3)
    assert received.numbers == [0, 1, 2]


async def test_a_room_closed_while_it_subscribes_leaves_no_subscription_in_redis(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    """`unsubscribe` cancels a catch-up waiting for its SSUBSCRIBE's reply: Redis subscribes
    the channel anyway, so the catch-up undoes it (or the node would get, and throw away,
    every event of a room it no longer hosts)."""
    _, subscriber = buses
    warm = f"warm-{uuid.uuid4().hex[:8]}"  # opens the subscription connection first
    subscriber.subscribe(warm, (await subscriber.snapshot(warm)).position, Received())
    async with asyncio.timeout(5):
        while (conn := subscriber.reader.subscription(warm)) is None:
            await asyncio.sleep(0.01)
    room = f"brief-{uuid.uuid4().hex[:8]}"
    handler = Received()
    subscriber.subscribe(room, "0-0", handler)
    async with asyncio.timeout(5):  # its SSUBSCRIBE sent, the reply not yet read
        while not conn.unanswered:
            await asyncio.sleep(0)
    subscriber.unsubscribe(room, handler)
    await asyncio.sleep(0.3)
    counts = redis_server.command("PUBSUB", "SHARDNUMSUB", channel(room))
    assert counts == [channel(room), 0], counts


async def test_a_subscription_connection_that_goes_silent_is_replaced(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription connection only receives, so a server gone without a word (a host
    powered off) would never be noticed: the bus PINGs it, and drops it if no answer comes in
    time; its rooms subscribe again on a new one. Here Redis is stopped (SIGSTOP) until then."""
    monkeypatch.setattr("roomstate.bus.redis.reader.SUBSCRIBER_PING_S", 0.5)  # before they start
    made = await start_buses(redis_server.url)
    try:
        publisher, subscriber = made
        room = f"silent-{uuid.uuid4().hex[:8]}"
        received = Received()
        subscriber.subscribe(room, (await subscriber.snapshot(room)).position, received)
        async with asyncio.timeout(5):
            while (before := subscriber.reader.subscription(room)) is None:
                await asyncio.sleep(0.01)
        redis_server.pause()
        try:
            async with asyncio.timeout(8):  # a PING within 0.5 s, no answer within 2 s
                while not before.closed:
                    await asyncio.sleep(0.05)
        finally:
            redis_server.resume()
        async with asyncio.timeout(10):
            while subscriber.reader.subscription(room) in (None, before):
                await asyncio.sleep(0.05)
        await publisher.publish(room, message(7))
        await received.wait_for(1)
        assert received.numbers == [7]
    finally:
        for bus in made:
            await bus.close()


async def test_a_message_missing_from_the_channel_is_read_from_the_stream(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    publisher, subscriber = buses
    room = f"gap-{uuid.uuid4().hex[:8]}"
    received = Received()
    subscriber.subscribe(room, (await subscriber.snapshot(room)).position, received)
    await publisher.publish(room, message(0))
    await received.wait_for(1)
    # An event stored but never published on the channel (as if pub/sub had dropped it):
    entry_id = redis_server.command(
        "XADD", log_key(room), "*", "e", encode_event(message(1)).decode()
    )
    assert isinstance(entry_id, str)
    redis_server.command("HSET", state_key(room), "l", entry_id)
    await publisher.publish(room, message(2))  # its "previous id" shows the gap
    await received.wait_for(3)
    assert received.numbers == [0, 1, 2]


@pytest.mark.parametrize(
    ("field", "stored"),
    [
        ("p:s1:u", "000000000001.0000.n1 {not json"),  # an unreadable value
        ("p:s1:u", "not-a-stamp 1"),  # an unreadable stamp (escaped as a CrdtError before)
        ("m:k", "0001.0000.n1 v1"),
        ("e", "yesterday"),
        ("p:s1:z", "000000000001.0000.n1 1"),  # not a register (escaped as a KeyError before)
    ],
)
async def test_a_snapshot_of_an_unreadable_stored_state_is_a_bus_error(
    redis_server: RedisServer, buses: list[RedisBus], field: str, stored: str
) -> None:
    bus = buses[0]
    room = f"unreadable-{uuid.uuid4().hex[:8]}"
    await bus.publish(room, joined("s1"))
    redis_server.command("HSET", state_key(room), field, stored)
    with pytest.raises(BusError, match=r"the stored state of .* is unreadable"):
        await bus.snapshot(room)


async def test_a_range_read_is_whole_or_none(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    bus = buses[0]
    room = f"range-{uuid.uuid4().hex[:8]}"
    ids = [await bus.publish(room, message(n)) for n in range(10)]
    assert all(isinstance(i, str) for i in ids)
    tail = await bus.read_range(room, str(ids[3]))
    assert tail is not None
    assert [e.message.data for _, e in tail if e.message] == list(range(4, 10))
    redis_server.command("XTRIM", log_key(room), "MAXLEN", 5)  # ids[0..4] are gone
    assert await bus.read_range(room, str(ids[4])) is None  # never a partial range
    tail = await bus.read_range(room, str(ids[5]))
    assert tail is not None
    assert [e.message.data for _, e in tail if e.message] == list(range(6, 10))


async def test_a_room_whose_stream_was_trimmed_past_its_position_resyncs_from_a_snapshot(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    publisher, subscriber = buses
    room = f"trim-{uuid.uuid4().hex[:8]}"
    _, ids = await subscribed_to_joins(publisher, subscriber, room, 6)
    # A node that last saw the first event, and the stream since trimmed past it: the events
    # in between cannot be read any more.
    redis_server.command("XTRIM", log_key(room), "MAXLEN", 2)
    assert isinstance(ids[0], str)
    seen: list[BusEvent] = []
    publisher.subscribe(room, ids[0], lambda r, p, e: seen.append(e))
    resync = await resync_in(seen)
    assert resync.delta is not None
    assert resync.delta == (await publisher.snapshot(room)).state
    assert sorted(resync.delta.present()) == [f"s{n}" for n in range(6)]
    assert publisher.position(room) == ids[-1]
    # ... and it is reported, so that the node merges its replica back (the store may have
    # lost writes rather than trimmed them: a Cluster failover to a replica that was behind).
    assert await publisher.lost_rooms([room]) == [room]
    assert await publisher.lost_rooms([room]) == []


async def test_a_stream_that_lost_its_last_events_is_reported(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    publisher, subscriber = buses
    room = f"lost-{uuid.uuid4().hex[:8]}"
    seen, ids = await subscribed_to_joins(publisher, subscriber, room, 3)
    # As a replica that was behind would be after a failover: the last event is missing.
    assert isinstance(ids[-1], str)
    redis_server.command("XDEL", log_key(room), ids[-1])
    killed = redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")  # the failover's cut
    assert isinstance(killed, int) and killed >= 1
    await resync_in(seen)
    assert await subscriber.lost_rooms([room]) == [room]


async def subscribed_to_joins(
    publisher: RedisBus, subscriber: RedisBus, room: str, count: int
) -> tuple[list[BusEvent], list[str | None]]:
    """Subscribe `subscriber` to `room`, publish `count` joins from `publisher` and wait until
    all are seen: (the events seen, growing as more come; the published ids)."""
    seen: list[BusEvent] = []
    subscriber.subscribe(
        room, (await subscriber.snapshot(room)).position, lambda r, p, e: seen.append(e)
    )
    ids = [await publisher.publish(room, joined(f"s{n}")) for n in range(count)]
    async with asyncio.timeout(5):
        while len(seen) < count:
            await asyncio.sleep(0.01)
    return seen, ids


async def resync_in(seen: list[BusEvent]) -> BusEvent:
    """The resync event once it is among `seen` (waiting up to 5 s)."""
    async with asyncio.timeout(5):
        while not any(e.origin == RESYNC_ORIGIN for e in seen):
            await asyncio.sleep(0.01)
    return next(e for e in seen if e.origin == RESYNC_ORIGIN)


def joined(sid: str) -> BusEvent:
    delta = RoomState().join(sid, {"user_name": sid}, {"node": "n1"}, None, Stamp(1, 0, "n1"))
    return BusEvent("n1/i", 0, delta=delta)


async def test_app_messages_keep_the_expiry_of_the_rooms_keys(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    """App messages go out through PUBLISH_MESSAGE, which skips the PERSIST that PUBLISH runs:
    the keys of a room with someone present must stay persistent, and those of an empty or
    unknown room must still expire."""
    publisher, _ = buses
    room = f"ttl-{uuid.uuid4().hex[:8]}"
    grace_ms = int(publisher.settings.room_grace_s * 1000)

    def ttls() -> list[object]:
        return [redis_server.command("PTTL", key) for key in (log_key(room), state_key(room))]

    def expiring(values: list[object]) -> bool:
        return all(isinstance(v, int) and 0 < v <= grace_ms for v in values)

    await publisher.publish(room, message(0))  # a REST message to a room nobody is in
    assert expiring(ttls()), ttls()
    stamp = Stamp(1, 0, "n1")
    where = {"node": "n1", "incarnation": "i"}
    join = RoomState().join("s1", {"user_name": "s1"}, where, None, stamp)
    await publisher.publish(room, BusEvent("n1/i", 0, delta=join))
    assert ttls() == [-1, -1]
    await publisher.publish(room, message(1))
    assert ttls() == [-1, -1], "an app message in a room with someone present"
    await publisher.publish(room, BusEvent("n1/i", 0, delta=RoomState(removed={"s1"})))
    assert expiring(ttls()), ttls()
    redis_server.command("PEXPIRE", log_key(room), 5000)  # most of the grace period has passed
    await publisher.publish(room, message(2))
    assert expiring(ttls()) and min(ttls()) > 5000, "a message restarts an empty room's grace"
    entries = redis_server.command("XRANGE", log_key(room), "-", "+")
    assert isinstance(entries, list) and len(entries) == 5


async def test_app_messages_and_state_events_form_one_chain_of_ids(
    redis_server: RedisServer, buses: list[RedisBus]
) -> None:
    """Each message on a room's channel names the stream id before it, whichever of the two
    scripts (PUBLISH for state events, PUBLISH_MESSAGE for app messages) wrote it. A subscriber
    would hide a broken chain by reading the stream again, so it is checked on the raw channel."""
    publisher, _ = buses
    room = f"chain-{uuid.uuid4().hex[:8]}"
    raw = aioredis.Redis.from_url(redis_server.url)
    pubsub = raw.pubsub()
    await pubsub.ssubscribe(channel(room))
    where = {"node": "n1", "incarnation": "i"}
    events = [
        BusEvent("n1/i", 0, delta=RoomState().join("s1", {}, where, None, Stamp(1, 0, "n1"))),
        message(0),
        message(1),
        BusEvent("n1/i", 0, delta=RoomState(removed={"s1"})),
        message(2),
    ]
    stored = [await publisher.publish(room, event) for event in events]
    published: list[tuple[str, str]] = []
    async with asyncio.timeout(5):
        while len(published) < len(events):
            got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if got is not None:
                entry_id, previous, _ = got["data"].decode().split(" ", 2)
                published.append((entry_id, previous))
    await pubsub.aclose()
    await raw.aclose()
    assert [entry_id for entry_id, _ in published] == stored
    assert [previous for _, previous in published] == ["0-0", *stored[:-1]]
    assert redis_server.command("HGET", state_key(room), "l") == stored[-1]


async def test_a_cluster_out_of_reach_is_a_bus_error(tmp_path: Path) -> None:
    """With no node of the Cluster answering, redis-py's Cluster client raises
    RedisClusterException, which is not a RedisError: the bus reports it as any outage
    (`BusError`, so the node answers `unavailable` and merges the room back later), and in
    bounded time."""
    cluster = RedisCluster.start(tmp_path)
    bus = RedisBus(Settings(redis_cluster=cluster.seeds))
    try:
        await bus.start()
        bus.start_reading(f"node-0/{uuid.uuid4().hex[:6]}")
        room = f"gone-{uuid.uuid4().hex[:8]}"
        await bus.publish(room, message(0))
        for server in cluster.servers:
            server.kill()
        for attempt in (bus.publish(room, message(1)), bus.snapshot(room)):
            started = time.monotonic()
            with pytest.raises(BusError):
                await attempt
            assert time.monotonic() - started < 4.0
    finally:
        await bus.close()
        cluster.stop()


async def test_a_write_is_stored_only_while_its_incarnation_holds_the_lease(
    redis_server: RedisServer,
) -> None:
    """A fencing token checked by the store: once a node holds a lease through the bus, both
    scripts refuse an event whose incarnation no longer holds it (expired while the node was
    paused, or replaced by the node's next incarnation), and store nothing of it; a node's
    unhosted origin is its incarnation's too."""
    bus = RedisBus(Settings(redis=redis_server.url))
    await bus.start()
    node_id = f"fence-{uuid.uuid4().hex[:8]}"
    room = f"fence-{uuid.uuid4().hex[:8]}"
    where = {"node": node_id, "incarnation": "a"}

    def join(origin: str, sid: str) -> BusEvent:
        delta = RoomState().join(sid, {}, where, None, Stamp(1, 0, node_id))
        return BusEvent(origin, 0, delta=delta)

    def app_message(origin: str) -> BusEvent:
        return BusEvent(origin, 0, message=AppMessage(1, "s1", "*"))

    def stored() -> int:
        length = redis_server.command("XLEN", log_key(room))
        assert isinstance(length, int)
        return length

    try:
        assert await bus.renew_lease(node_id, "a", 5000, register=True) == "held"
        await bus.publish(room, join(f"{node_id}/a", "s1"))
        await bus.publish(room, app_message(f"{node_id}/a"))
        await bus.publish(room, app_message(f"{node_id}/a/unhosted"))
        assert stored() == 3
        for event in (join(f"{node_id}/old", "s2"), app_message(f"{node_id}/old/unhosted")):
            with pytest.raises(FencedError, match="FENCED"):
                await bus.publish(room, event)
        assert bus.ready, "a refusal by the store says it is reachable"
        redis_server.command("DEL", f"rs:lease:{node_id}")  # as if it expired during a pause
        for event in (join(f"{node_id}/a", "s3"), app_message(f"{node_id}/a")):
            with pytest.raises(BusError, match="FENCED"):
                await bus.publish(room, event)
        assert stored() == 3
        state = redis_server.command("HGETALL", state_key(room))
        assert isinstance(state, list) and "p:s2:i" not in state and "p:s3:i" not in state
        assert await bus.renew_lease(node_id, "b", 5000, register=True) == "held"  # fenced
        await bus.publish(room, join(f"{node_id}/b", "s4"))
        with pytest.raises(BusError, match="FENCED"):
            await bus.publish(room, join(f"{node_id}/a", "s5"))
        assert stored() == 4
        # the metrics: every refusal counted, every answered publish timed
        assert bus.metrics.fenced_writes == 5
        assert sum(bus.metrics.publish_latency.counts[""]) == 4 + 5
    finally:
        await bus.close()


async def test_a_lease_the_keeper_finds_taken_is_counted_lost(redis_server: RedisServer) -> None:
    """The keeper's thread counts a renewal that finds the lease taken (the node fences);
    the lease's age is read from the renewals."""
    bus = RedisBus(Settings(redis=redis_server.url))
    await bus.start()
    node_id = f"keeper-{uuid.uuid4().hex[:8]}"
    rounds: list[LeaseRound] = []
    keeper = LeaseKeeper(
        node_id, lambda: "a", bus.renew_lease, rounds.append, 5000, renew_s=0.1, retry_s=0.1
    )
    try:
        assert bus.metrics.lease_age() is None, "no lease yet"
        assert await bus.renew_lease(node_id, "a", 5000, register=True) == "held"
        bus.keep_lease(keeper)
        await asyncio.sleep(0.5)
        age = bus.metrics.lease_age()
        assert age is not None and 0 <= age < 0.5
        assert bus.metrics.lease_losses == 0
        redis_server.command("SET", lease_key(node_id, None), "b")  # another incarnation
        deadline = time.monotonic() + 5
        while not any(r.state == "taken" for r in rounds) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert bus.metrics.lease_losses == 1
    finally:
        await bus.close()


async def test_a_cluster_checks_the_lease_copy_of_the_rooms_shard(tmp_path: Path) -> None:
    """In a Cluster the script reads the lease copy in the room's own slot (a script may only
    touch keys of one slot): rooms on two shards, one copy gone."""
    cluster = RedisCluster.start(tmp_path)
    bus = RedisBus(Settings(redis_cluster=cluster.seeds))
    admin: redis.cluster.RedisCluster | None = None
    try:
        admin = redis.cluster.RedisCluster(host=HOST, port=cluster.servers[0].port)
        await bus.start()
        node_id = f"fence-{uuid.uuid4().hex[:8]}"
        rooms: dict[int, str] = {}
        while len(rooms) < 2:
            name = f"fence-{uuid.uuid4().hex[:8]}"
            rooms.setdefault(shard_of(name), name)
        (gone_shard, gone_room), (kept_shard, kept_room) = rooms.items()
        assert await bus.renew_lease(node_id, "a", 5000, register=True) == "held"
        assert admin.delete(lease_key(node_id, gone_shard)) == 1
        assert admin.exists(lease_key(node_id, kept_shard)) == 1
        event = BusEvent(f"{node_id}/a", 0, message=AppMessage(1, "s1", "*"))
        assert await bus.publish(kept_room, event)
        with pytest.raises(BusError, match="FENCED"):
            await bus.publish(gone_room, event)
    finally:
        if admin is not None:
            admin.close()
        await bus.close()
        cluster.stop()
