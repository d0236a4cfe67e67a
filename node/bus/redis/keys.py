"""The Redis bus's key layout: which key and channel hold what. Pure.

A room belongs to one of `SHARDS` shards (crc32 of its name); every key of a shard carries the
hash tag ``{rs<shard>}``, so in a Cluster a room's stream, state and channel share a slot and one
Lua script can merge a delta into the state, append the event and publish it atomically:

    rs:{rs<k>}:log:<room>      stream of the room's events (MAXLEN ~ STREAM_MAXLEN): history
    rs:{rs<k>}:state:<room>    hash: the merged room state (state_hash.py, scripts.py)
    rs:{rs<k>}:ch:<room>       shard channel (SPUBLISH) of the room's events: live delivery
    rs:{rs<k>}:epoch           shard k's epoch: changes when its Redis loses its data
    rs:{rs<k>}:wh              stream of shard k's webhook events, recorded by PUBLISH (when
                               webhooks are on); read by the fleet's consumer group
    rs:{rs<k>}:wh:dead         shard k's webhook events whose delivery gave up: dead letters
    rs:{rs<k>}:wh:lease        the consumer that alone reads shard k's webhook stream, with a TTL
    rs:{rs<k>}:wh:nodes        sorted set: the live webhook deliverers -> until when (ms)
    rs:lease:<node id>         the node's lease: its incarnation, with a TTL (standalone Redis)
    rs:{rs<k>}:lease:<node id> in a Cluster, a copy per shard: a dead master hides only the
                               copies of its own shards, whose rooms it also holds

Kept apart so that the layout reads as a whole, and tests and tools name keys without a bus.
"""

from __future__ import annotations

import functools
import zlib

__all__ = [
    "SHARDS",
    "channel",
    "channel_room",
    "epoch_key",
    "fence",
    "hash_tag",
    "lease_key",
    "log_key",
    "publish_keys",
    "shard_of",
    "state_key",
    "webhook_dead_key",
    "webhook_key",
    "webhook_lease_key",
    "webhook_nodes_key",
]

SHARDS = 16  # shards (hash tags) rooms are spread over (Cluster slots; a lease copy each)
_CHANNEL = ":ch:"  # between a channel's hash tag and its room


def shard_of(room: str) -> int:
    return zlib.crc32(room.encode()) % SHARDS


def hash_tag(shard: int) -> str:
    """The hash tag of `shard`'s keys: in a Cluster, it names their slot."""
    return "{rs" + str(shard) + "}"


def log_key(room: str) -> str:
    return f"rs:{hash_tag(shard_of(room))}:log:{room}"


def state_key(room: str) -> str:
    return f"rs:{hash_tag(shard_of(room))}:state:{room}"


def channel(room: str) -> str:
    return f"rs:{hash_tag(shard_of(room))}{_CHANNEL}{room}"


def channel_room(name: bytes) -> str:
    """The room whose channel is `name` (the inverse of `channel`)."""
    return name.decode().split(_CHANNEL, 1)[1]


@functools.lru_cache(maxsize=4096)
def publish_keys(room: str) -> tuple[int, tuple[str, str, str]]:
    """The room's shard, and the keys of its log, state and channel: what every publish needs
    (remembered for the 4,096 rooms used last: made anew, about 0.5 µs a publish)."""
    return shard_of(room), (log_key(room), state_key(room), channel(room))


def lease_key(node_id: str, group: int | None) -> str:
    """A node's lease (standalone Redis), or its copy in a Cluster's lease group (a shard)."""
    return f"rs:lease:{node_id}" if group is None else f"rs:{hash_tag(group)}:lease:{node_id}"


@functools.lru_cache(maxsize=1024)
def fence(origin: str, group: int | None) -> tuple[str, str]:
    """The lease key and the incarnation that a write of `origin` ("<node id>/<incarnation>",
    maybe followed by "/unhosted") is stored under: the PUBLISH scripts refuse it unless that
    lease still holds that incarnation."""
    node_id, _, rest = origin.partition("/")
    incarnation = rest.partition("/")[0]
    if not incarnation:
        raise ValueError(f"an origin without an incarnation cannot be fenced: {origin!r}")
    return lease_key(node_id, group), incarnation


def epoch_key(shard: int) -> str:
    """A shard's epoch: a random value that changes when that shard's Redis loses its data."""
    return f"rs:{hash_tag(shard)}:epoch"


def webhook_key(shard: int) -> str:
    """Shard `shard`'s webhook stream: its rooms' events for the webhooks, in one slot."""
    return f"rs:{hash_tag(shard)}:wh"


def webhook_dead_key(shard: int) -> str:
    """Shard `shard`'s dead letters: webhook events whose delivery gave up."""
    return f"rs:{hash_tag(shard)}:wh:dead"


def webhook_lease_key(shard: int) -> str:
    """Shard `shard`'s webhook reader lease: the one consumer that reads its webhook stream."""
    return f"rs:{hash_tag(shard)}:wh:lease"


def webhook_nodes_key(shard: int) -> str:
    """The live webhook deliverers, as shard `shard` sees them: who its lease should go to."""
    return f"rs:{hash_tag(shard)}:wh:nodes"
