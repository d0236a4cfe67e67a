"""Redis forgets old removals as the CRDT does (docs/crdt.md, "Forgetting removals").

A real redis-server, driven in-process through `RedisBus`, with a short horizon: a removed id and
a session-data tombstone are forgotten once past the floor, the queue that found them is emptied,
and a late record of what they hid stores nothing, as `RoomState.collect` refuses it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.local.servers import RedisServer
from roomstate.bus.redis.bus import RedisBus, state_key
from roomstate.crdt import RoomState, Stamp, to_obj
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent

from ..property.strategies import apply_room_op, room_ops

pytestmark = pytest.mark.integration

KEEP_MS = 300


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
async def bus(
    redis_server: RedisServer,
) -> AsyncIterator[RedisBus]:
    made = RedisBus(Settings(redis=redis_server.url))
    made.horizon = (KEEP_MS, 0)  # shorter than the setting allows, for a quick test
    await made.start()
    yield made
    await made.close()


def event(delta: RoomState) -> BusEvent:
    return BusEvent("n1/i", 0, delta=delta)


def stored_fields(server: RedisServer, room: str) -> set[str]:
    flat = server.command("HGETALL", state_key(room))
    assert isinstance(flat, list)
    return {f.decode() if isinstance(f, bytes) else str(f) for f in flat[0::2]}


async def test_redis_forgets_a_removal_past_the_floor_and_refuses_what_it_hid(
    bus: RedisBus, redis_server: RedisServer
) -> None:
    room = f"gc-{uuid.uuid4().hex[:10]}"
    clock = redis_server.command("TIME")
    assert isinstance(clock, list)
    wall = int(str(clock[0], "ascii") if isinstance(clock[0], bytes) else str(clock[0])) * 1000
    old = Stamp(wall, 0, "n1")
    state = RoomState()
    join = state.join("s1", {"user_name": "s1"}, {"node": "n1", "incarnation": "i"}, 1, old)
    stale = state.copy()  # a replica that will not hear of the removal
    await bus.publish(room, event(join))
    await bus.publish(room, event(state.merge_session_data({"k": 1}, Stamp(wall, 1, "n1"))))
    await bus.publish(room, event(state.merge_session_data({}, Stamp(wall, 2, "n1"), ("k",))))
    await bus.publish(room, event(state.remove(["s1"])))
    assert {"x:s1", "m:k", "q:1", "q:2"} <= stored_fields(redis_server, room)

    await asyncio.sleep(KEEP_MS / 1000 + 0.4)  # the hash has lived a horizon; both are past it
    later = Stamp(wall + 2000, 0, "n2")
    await bus.publish(room, event(RoomState().merge_session_data({"other": 2}, later)))
    fields = stored_fields(redis_server, room)
    assert not {f for f in fields if f.startswith(("x:", "q"))}, fields
    assert "m:k" not in fields and "g" in fields

    # The stale replica merged back, and a late write of the key: neither stores anything.
    await bus.publish(room, event(stale))
    await bus.publish(room, event(RoomState().merge_session_data({"k": 3}, Stamp(wall, 1, "n1"))))
    snapshot = (await bus.snapshot(room)).state
    assert snapshot.participants == {}, "a forgotten removal let its participant back"
    assert snapshot.session_data.value() == {"other": 2}
    assert snapshot.floor_ms > wall, "the snapshot carries the store's floor"

    # The CRDT, dating the removal when the store did and collecting at the store's floor,
    # comes to the same state
    state.collect(wall, KEEP_MS, max_drift_ms=0)
    state.collect(snapshot.floor_ms + KEEP_MS, KEEP_MS, max_drift_ms=0)
    state.merge(RoomState().merge_session_data({"other": 2}, later))
    state.merge(stale)
    state.merge(RoomState().merge_session_data({"k": 3}, Stamp(wall, 1, "n1")))
    assert state == snapshot


async def test_redis_forgets_nothing_in_a_hash_younger_than_the_horizon(
    bus: RedisBus, redis_server: RedisServer
) -> None:
    """A store that lost its data gets the replicas merged back first: a new hash has no floor
    until it has lived a horizon, whatever the stamps it is given."""
    room = f"gc-{uuid.uuid4().hex[:10]}"
    state = RoomState()
    old = Stamp(1, 0, "n1")  # long ago
    await bus.publish(room, event(state.join("s1", {}, {"node": "n1"}, None, old)))
    await bus.publish(room, event(state.remove(["s1"])))
    await bus.publish(room, event(RoomState().join("s2", {}, {"node": "n1"}, None, old)))
    fields = stored_fields(redis_server, room)
    assert "g" not in fields and "x:s1" in fields and "p:s2:i" in fields


async def test_a_removal_stored_by_the_previous_version_is_kept(
    bus: RedisBus, redis_server: RedisServer
) -> None:
    """`x:<sid>` = "1" (kept for good by a version without forgetting) is in no queue: it stays,
    and still hides its participant."""
    room = f"gc-{uuid.uuid4().hex[:10]}"
    redis_server.command("HSET", state_key(room), "x:old", "1", "c", "1")  # long lived
    late = RoomState().join("old", {}, {"node": "n1"}, None, Stamp(2**40, 0, "n1"))
    for _ in range(3):
        await bus.publish(room, event(late))  # each forgets what is due
    fields = stored_fields(redis_server, room)
    assert "x:old" in fields and "g" in fields
    assert (await bus.snapshot(room)).state.participants == {}


# The stamps of the strategies have wall times 0-12: a floor of 6 refuses about half of them.
FLOOR = 6


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_below_the_floor_redis_refuses_what_python_refuses(
    redis_server: RedisServer,
) -> None:
    """A room's state, then a floor, then a delta (often a whole state, as merged back): what
    Lua stores is what `RoomState.merge` keeps with that floor (tombstones aside, which each
    forgets on its own schedule)."""
    made = RedisBus(Settings(redis=redis_server.url))
    made.horizon = (10**9, 0)  # the floor set by hand stays
    await made.start()
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        before=st.lists(room_ops(), max_size=6),
        late=st.lists(room_ops(), min_size=1, max_size=6),
    )
    def check(before: list[tuple[Any, ...]], late: list[tuple[Any, ...]]) -> None:
        room = f"gc-{uuid.uuid4().hex[:10]}"
        expected, delta = RoomState(), RoomState()
        deltas = [apply_room_op(expected, op) for op in before]
        for op in late:
            apply_room_op(delta, op)

        async def publish_and_read() -> RoomState:
            for d in deltas:
                await made.publish(room, event(d))
            redis_server.command("HSET", state_key(room), "g", FLOOR)
            await made.publish(room, event(delta))
            return (await made.snapshot(room)).state

        stored = asyncio.run_coroutine_threadsafe(publish_and_read(), loop).result(30)
        expected.floor_ms = expected.session_data.floor_ms = FLOOR
        expected.merge(delta)
        assert strip(stored) == strip(expected)

    try:
        await asyncio.to_thread(check)
    finally:
        await made.close()


def strip(state: RoomState) -> dict[str, Any]:
    """What a replica holds, tombstones aside."""
    obj = to_obj(state)
    obj["r"], obj["m"]["d"] = [], {}
    return obj
