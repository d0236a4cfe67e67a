"""The Redis bus's key layout (roomstate.bus.redis.keys)."""

from __future__ import annotations

import pytest

from roomstate.bus.redis.keys import (
    SHARDS,
    channel,
    channel_room,
    epoch_key,
    fence,
    lease_key,
    log_key,
    publish_keys,
    shard_of,
    state_key,
)


def test_the_key_layout_is_stable() -> None:
    """Pinned: the keys are shared by every node of a deployment and by its stored data."""
    assert shard_of("lobby") == 7
    assert log_key("lobby") == "rs:{rs7}:log:lobby"
    assert state_key("lobby") == "rs:{rs7}:state:lobby"
    assert channel("lobby") == "rs:{rs7}:ch:lobby"
    assert publish_keys("lobby") == (7, (log_key("lobby"), state_key("lobby"), channel("lobby")))
    assert epoch_key(3) == "rs:{rs3}:epoch"
    assert lease_key("n1", None) == "rs:lease:n1"
    assert lease_key("n1", 3) == "rs:{rs3}:lease:n1"


@pytest.mark.parametrize("room", ["lobby", "a:ch:b", "ünï", ""])
def test_a_channel_names_its_room(room: str) -> None:
    assert channel_room(channel(room).encode()) == room
    assert 0 <= shard_of(room) < SHARDS


def test_a_write_is_fenced_by_its_incarnation() -> None:
    assert fence("n1/abc", None) == ("rs:lease:n1", "abc")
    assert fence("n1/abc/unhosted", 5) == ("rs:{rs5}:lease:n1", "abc")
    with pytest.raises(ValueError, match="without an incarnation"):
        fence("n1", None)
