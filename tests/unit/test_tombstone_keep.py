"""ROOMSTATE_TOMBSTONE_KEEP_S and ROOMSTATE_MAX_DRIFT_MS reach every place that forgets removals:
the memory bus, the Redis bus's PUBLISH arguments, and the node's upkeep and fence threshold."""

from __future__ import annotations

import pytest

from roomstate.bus import MemoryBus
from roomstate.bus.redis.bus import RedisBus
from roomstate.bus.redis.state_hash import HORIZON, delta_ops
from roomstate.crdt import DEFAULT_KEEP_MS, RoomState, Stamp
from roomstate.edge.node import Node
from roomstate.server.app import make_bus
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent

T0 = 1_000_000


def test_the_setting_is_read_and_its_minimum_named() -> None:
    assert Settings().tombstone_keep_s == DEFAULT_KEEP_MS / 1000
    assert Settings.from_env({"ROOMSTATE_TOMBSTONE_KEEP_S": "4.5"}).tombstone_keep_s == 4.5
    with pytest.raises(ValueError, match=r"ROOMSTATE_TOMBSTONE_KEEP_S=3 .* at least 4"):
        Settings.from_env({"ROOMSTATE_TOMBSTONE_KEEP_S": "3"})


def test_delta_ops_sends_the_given_horizon_first() -> None:
    delta = RoomState()
    assert delta_ops(delta)[:4] == ["h", "", str(HORIZON[0]), str(HORIZON[1])]
    assert delta_ops(delta, (4000, 200))[:4] == ["h", "", "4000", "200"]


def test_the_redis_bus_horizon_is_the_settings() -> None:
    bus = RedisBus(Settings(redis="redis://127.0.0.1:1", tombstone_keep_s=4, max_drift_ms=100))
    assert bus.horizon == (4000, 200)
    assert RedisBus(Settings(redis="redis://127.0.0.1:1")).horizon == HORIZON


async def removed_after(bus: MemoryBus, later_ms: int) -> set[str]:
    """A join at T0, its removal at T0 + 1, then an event sent at `later_ms`: what is still
    removed in the bus's stored state."""
    state = RoomState()
    await bus.publish(
        "r", BusEvent("n1/i", T0, delta=state.join("s1", {}, {}, None, Stamp(T0, 0, "n1")))
    )
    await bus.publish("r", BusEvent("n1/i", T0 + 1, delta=state.remove(["s1"])))
    later = RoomState().merge_session_data({"k": 1}, Stamp(later_ms, 0, "n1"))
    await bus.publish("r", BusEvent("n1/i", later_ms, delta=later))
    return (await bus.snapshot("r")).state.removed


async def test_the_memory_bus_forgets_after_the_settings_horizon_and_margin() -> None:
    settings = Settings(tombstone_keep_s=4, max_drift_ms=100)
    bus = make_bus(settings)
    assert isinstance(bus, MemoryBus)
    # dated T0 + 1; forgotten once before the floor (now - 4000) by more than 2 x 100 ms
    assert await removed_after(bus, T0 + 4000 + 200 + 2) == set()
    kept = make_bus(Settings(tombstone_keep_s=4, max_drift_ms=100))
    assert isinstance(kept, MemoryBus)
    assert await removed_after(kept, T0 + 4000 + 200 + 1) == {"s1"}, "forgotten within the margin"
    # the default drift bound (500 ms) keeps it: the margin follows ROOMSTATE_MAX_DRIFT_MS
    default_drift = make_bus(Settings(tombstone_keep_s=4))
    assert isinstance(default_drift, MemoryBus)
    assert await removed_after(default_drift, T0 + 4000 + 200 + 2) == {"s1"}


def test_the_node_collects_and_fences_with_the_settings_horizon() -> None:
    node = Node(Settings(tombstone_keep_s=4, max_drift_ms=100), MemoryBus())
    assert node.membership.keep_ms == 4000
    assert node.membership.hosting.max_drift_ms == 100
    assert Node(Settings(), MemoryBus()).membership.keep_ms == DEFAULT_KEEP_MS
