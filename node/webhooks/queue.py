"""Where recorded webhook events wait for delivery: the interface, and its in-process twin.

A `WebhookQueue` is shared by every node of a fleet (the Redis bus: a consumer group on each
shard's webhook stream, bus/redis/webhooks.py): each recorded event is handed to one consumer,
stays *pending* under it until acknowledged, and is taken over (`claim_stale`) by another
consumer once it has been pending too long (its node died). Delivery that gives up moves the
event to the dead letters, which an operator reads and replays.
"""

from __future__ import annotations

import abc
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from roomstate.webhooks.events import Recorded

__all__ = ["DeadLetter", "MemoryWebhookQueue", "WebhookQueue"]

DEAD_LETTERS_KEPT = 10_000  # dead letters kept (the oldest go first)


@dataclass(frozen=True)
class DeadLetter:
    id: str  # "<shard>:<position in the dead letters>": what `replay` takes
    recorded: Recorded  # the event as it was recorded (its position: where it was recorded)
    error: str  # the last answer or failure of its delivery


class WebhookQueue(abc.ABC):
    @abc.abstractmethod
    async def read(self, consumer: str, count: int) -> list[Recorded]:
        """Up to `count` events no consumer has been handed yet, now pending under `consumer`
        (none waiting: an empty list, at once)."""

    @abc.abstractmethod
    async def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Recorded]:
        """Up to `count` events pending under any consumer for at least `idle_ms`, now pending
        under `consumer` (a dead node's deliveries)."""

    @abc.abstractmethod
    async def touch(self, consumer: str, recorded: Recorded) -> None:
        """Mark `recorded` as still being worked on (its idle time starts again)."""

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


class MemoryWebhookQueue(WebhookQueue):
    """The in-process queue of the in-memory bus: one process, so one consumer in practice;
    pending events are taken over by idle time as the Redis one does."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._waiting: deque[Recorded] = deque()
        self._pending: dict[
            str, tuple[Recorded, str, float]
        ] = {}  # position -> (, consumer, since)
        self._dead: dict[str, DeadLetter] = {}
        # the in-memory bus's answer to `meeting` (set by it)
        self.meeting_of: Callable[[str], tuple[str | None, int]] = lambda room: (None, 0)
        self.session_data_of: Callable[[str], dict[str, Any]] = lambda room: {}

    def record(self, fields: dict[str, str]) -> None:
        """Called by the in-memory bus as it stores the change (its `publish`)."""
        self._waiting.append(Recorded(0, f"{next(self._counter)}-0", fields))

    async def read(self, consumer: str, count: int) -> list[Recorded]:
        taken: list[Recorded] = []
        while self._waiting and len(taken) < count:
            recorded = self._waiting.popleft()
            self._pending[recorded.position] = (recorded, consumer, time.monotonic())
            taken.append(recorded)
        return taken

    async def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Recorded]:
        now = time.monotonic()
        stale = [r for r, _, since in self._pending.values() if now - since >= idle_ms / 1000]
        for recorded in stale[:count]:
            self._pending[recorded.position] = (recorded, consumer, now)
        return stale[:count]

    async def touch(self, consumer: str, recorded: Recorded) -> None:
        if recorded.position in self._pending:
            self._pending[recorded.position] = (recorded, consumer, time.monotonic())

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
