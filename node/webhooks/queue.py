"""Where recorded webhook events wait for delivery: the interface, and its in-process twin.

A `WebhookQueue` is shared by every node of a fleet (the Redis bus: a consumer group on each
shard's webhook stream, bus/redis/webhooks.py). Each shard has one reader at a time, the node
holding its *lease* (renewed; it goes to the preferred live node, so the shards spread over
the fleet): only the holder is handed the shard's new events, which stay *pending* under it
until acknowledged. A node that takes a lease over (its holder died, or handed it on) first
`claim`s the events pending under others, oldest first, and reads new ones only then: so a
room's events, all in one shard, are handed out in the order they were recorded. Delivery that
gives up moves the event to the dead letters, which an operator reads and replays.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from roomstate.webhooks.events import Recorded

__all__ = ["DeadLetter", "MemoryWebhookQueue", "WebhookQueue", "preferred"]

DEAD_LETTERS_KEPT = 10_000  # dead letters kept (the oldest go first)


@dataclass(frozen=True)
class DeadLetter:
    id: str  # "<shard>:<position in the dead letters>": what `replay` takes
    recorded: Recorded  # the event as it was recorded (its position: where it was recorded)
    error: str  # the last answer or failure of its delivery


class WebhookQueue(abc.ABC):
    shards: int  # the streams events are recorded in, numbered from 0 (a room's: always one)

    @abc.abstractmethod
    async def hold(self, shard: int, member: str, consumer: str, ttl_ms: int) -> tuple[bool, bool]:
        """Note `member` (a node incarnation) as a live deliverer for `ttl_ms`, and take or keep
        the shard's reader lease for `consumer` (its name for this tenure of the lease): taken
        only if free and `member` is the preferred deliverer of the shard. Returns whether
        `consumer` holds the lease now, and whether `member` is the preferred one."""

    @abc.abstractmethod
    async def release(
        self, shard: int, member: str, consumer: str, idle_ms: int, leaving: bool
    ) -> None:
        """Give up the shard's lease if `consumer` holds it, its pending events marked idle for
        `idle_ms` (the next holder takes them at once); `leaving`: `member` stops delivering."""

    @abc.abstractmethod
    async def read(self, shard: int, consumer: str, count: int) -> list[Recorded]:
        """Up to `count` events of the shard no consumer has been handed yet, now pending under
        `consumer`; none (at once) if none wait or `consumer` does not hold the lease."""

    @abc.abstractmethod
    async def claim(
        self, shard: int, consumer: str, idle_ms: int, count: int
    ) -> tuple[list[Recorded], bool]:
        """Up to `count` of the shard's events pending for at least `idle_ms`, oldest first, now
        pending under `consumer` (the lease's holder); nothing while any event pending under
        another consumer is idle for less (taking the idle ones first could put a later event
        of a room before an earlier one). Also whether no event is pending under another
        consumer any more: then `consumer` may read new events."""

    @abc.abstractmethod
    async def touch(self, shard: int, consumer: str, positions: list[str]) -> None:
        """Mark these events as still being worked on by `consumer` (their idle time starts
        again), if it holds the shard's lease."""

    @abc.abstractmethod
    async def forget_consumers(self, shard: int, consumer: str, idle_ms: int) -> int:
        """Delete the shard's consumers with nothing pending that have been idle `idle_ms` (a
        stopped node's, an earlier tenure's), if `consumer` holds the lease; how many."""

    @abc.abstractmethod
    async def ack(self, recorded: Recorded) -> None:
        """`recorded` was delivered: no consumer gets it again."""

    @abc.abstractmethod
    async def dead_letter(self, recorded: Recorded, error: str) -> None:
        """Give up on `recorded`: keep it, with `error`, in the dead letters (and ack it)."""

    @abc.abstractmethod
    async def dead_letters(self, count: int) -> list[DeadLetter]:
        """Up to `count` dead letters, oldest first."""

    @abc.abstractmethod
    async def replay(self, dead_id: str) -> bool:
        """Record the dead letter `dead_id` again for delivery (with its first id, so a receiver
        still drops repeats) and remove it; False if there is no such dead letter."""

    @abc.abstractmethod
    async def backlog(self) -> int:
        """Events recorded and not yet acknowledged (waiting or pending)."""

    @abc.abstractmethod
    async def session_data(self, room: str) -> dict[str, Any]:
        """The room's session data now, for the session-data.updated waiting for delivery: read
        in one step with noting that it was read, so a later change records another one."""

    @abc.abstractmethod
    async def meeting(self, room: str) -> tuple[str | None, int]:
        """The room's meeting now (when it started, ms; None: none, the room's state expired)
        and how many participants are present: whether a meeting that emptied has ended."""


def preferred(members: Iterable[str], salt: str) -> str | None:
    """The member a shard's lease goes to (rendezvous hashing): each shard has its own order of
    the members, so the shards spread evenly and only a leaving or new member's move. The
    Redis script computes the same (`redis.sha1hex(member .. salt)`, the highest)."""
    return max(members, key=lambda m: hashlib.sha1((m + salt).encode()).hexdigest(), default=None)


class MemoryWebhookQueue(WebhookQueue):
    """The in-process queue of the in-memory bus: one process, so one deliverer in practice;
    the lease, its preferred member and the claims work as the Redis ones do (one shard)."""

    shards = 1
    SALT = "memory"  # the shard's lease, named as the Redis key is: `preferred`'s salt

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._waiting: deque[Recorded] = deque()
        # position -> (the event, the consumer it is pending under, since when (monotonic));
        # in the order of positions (the order they were read in, which is theirs)
        self._pending: dict[str, tuple[Recorded, str, float]] = {}
        self._dead: dict[str, DeadLetter] = {}
        self._lease: tuple[str, float] | None = None  # the reader lease: consumer, until
        self._members: dict[str, float] = {}  # live deliverers -> until (monotonic)
        self._seen: dict[str, float] = {}  # consumer -> its last read or claim (monotonic)
        # the in-memory bus's answer to `meeting` (set by it)
        self.meeting_of: Callable[[str], tuple[str | None, int]] = lambda room: (None, 0)
        self.session_data_of: Callable[[str], dict[str, Any]] = lambda room: {}

    def record(self, fields: dict[str, str]) -> None:
        """Called by the in-memory bus as it stores the change (its `publish`)."""
        self._waiting.append(Recorded(0, f"{next(self._counter)}-0", fields))

    def _holds(self, consumer: str) -> bool:
        lease = self._lease
        return lease is not None and lease[0] == consumer and lease[1] > time.monotonic()

    async def hold(self, shard: int, member: str, consumer: str, ttl_ms: int) -> tuple[bool, bool]:
        now = time.monotonic()
        self._members = {m: until for m, until in self._members.items() if until > now}
        self._members[member] = now + ttl_ms / 1000
        first = preferred(self._members, self.SALT) == member
        free = self._lease is None or self._lease[1] <= now
        if self._holds(consumer) or (free and first):
            self._lease = (consumer, now + ttl_ms / 1000)
            return True, first
        return False, first

    async def release(
        self, shard: int, member: str, consumer: str, idle_ms: int, leaving: bool
    ) -> None:
        if self._holds(consumer):
            since = time.monotonic() - idle_ms / 1000
            for position, (recorded, owner, _) in self._pending.items():
                if owner == consumer:
                    self._pending[position] = (recorded, owner, since)
            self._lease = None
        if leaving:
            self._members.pop(member, None)

    async def read(self, shard: int, consumer: str, count: int) -> list[Recorded]:
        if not self._holds(consumer):
            return []
        taken: list[Recorded] = []
        now = self._seen[consumer] = time.monotonic()
        while self._waiting and len(taken) < count:
            recorded = self._waiting.popleft()
            self._pending[recorded.position] = (recorded, consumer, now)
            taken.append(recorded)
        return taken

    async def claim(
        self, shard: int, consumer: str, idle_ms: int, count: int
    ) -> tuple[list[Recorded], bool]:
        if not self._holds(consumer):
            return [], False
        now = self._seen[consumer] = time.monotonic()
        idle = [now - since >= idle_ms / 1000 for _, _, since in self._pending.values()]
        owners = [owner for _, owner, _ in self._pending.values()]
        if not all(ok for ok, owner in zip(idle, owners, strict=True) if owner != consumer):
            return [], False
        stale = [r for (r, _, _), ok in zip(self._pending.values(), idle, strict=True) if ok]
        for recorded in stale[:count]:
            self._pending[recorded.position] = (recorded, consumer, now)
        caught_up = all(owner == consumer for _, owner, _ in self._pending.values())
        return stale[:count], caught_up

    async def touch(self, shard: int, consumer: str, positions: list[str]) -> None:
        if not self._holds(consumer):
            return
        for position in positions:
            if position in self._pending:
                self._pending[position] = (self._pending[position][0], consumer, time.monotonic())

    async def forget_consumers(self, shard: int, consumer: str, idle_ms: int) -> int:
        if not self._holds(consumer):
            return 0
        now, busy = time.monotonic(), {owner for _, owner, _ in self._pending.values()}
        gone = [
            c
            for c, seen in self._seen.items()
            if c != consumer and c not in busy and now - seen >= idle_ms / 1000
        ]
        for name in gone:
            del self._seen[name]
        return len(gone)

    async def ack(self, recorded: Recorded) -> None:
        self._pending.pop(recorded.position, None)

    async def dead_letter(self, recorded: Recorded, error: str) -> None:
        if self._pending.pop(recorded.position, None) is None:
            return  # acknowledged meanwhile (by a consumer that took it over)
        dead_id = f"0:{next(self._counter)}-0"
        self._dead[dead_id] = DeadLetter(dead_id, recorded, error)
        while len(self._dead) > DEAD_LETTERS_KEPT:
            del self._dead[next(iter(self._dead))]

    async def dead_letters(self, count: int) -> list[DeadLetter]:
        return list(itertools.islice(self._dead.values(), count))

    async def replay(self, dead_id: str) -> bool:
        dead = self._dead.pop(dead_id, None)
        if dead is None:
            return False
        fields = {
            **dead.recorded.fields,
            "o": dead.recorded.fields.get("o", dead.recorded.position),
        }
        self.record(fields)
        return True

    async def backlog(self) -> int:
        return len(self._waiting) + len(self._pending)

    async def meeting(self, room: str) -> tuple[str | None, int]:
        return self.meeting_of(room)

    async def session_data(self, room: str) -> dict[str, Any]:
        return self.session_data_of(room)
