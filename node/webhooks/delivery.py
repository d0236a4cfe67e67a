"""Webhook delivery: one `Deliverer` per node takes recorded events from the fleet's shared
queue and POSTs them, signed, to every receiver.

At least once: an event is acknowledged only once every receiver answered 2xx. A failed request
is retried with exponential backoff until the retry budget is spent; the event then goes to the
dead letters.

In each room's order: a room's events are all in one shard, and a shard has one reader at a
time, the node holding its lease (queue.py). That node puts a room's events in one lane, which
sends them one after the other in the order they were taken, and the order they were taken is
the order they were recorded: a new holder takes what others left pending, oldest first, before
any new event. A node sends only while its lease surely outlasts the request (else it waits for
a renewal), and a new holder takes what others left pending only once all of it has been idle
for the claim timeout: so two nodes never send a shard's events at once. Two kinds are sent
when due rather than in turn: a session-data.updated a second after the change, and a
meeting.ended once the room's grace has passed.

Lanes run side by side (bounded), and nothing here is on a room's path: the rooms only record
events (the bus's publish), so a slow receiver slows only its deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from dataclasses import dataclass

import aiohttp
import orjson

from roomstate.errors import BusError
from roomstate.metrics import WebhookMetrics
from roomstate.settings import Settings
from roomstate.webhooks.events import (
    Recorded,
    WebhookError,
    decode_secret,
    parse_types,
    sign,
    to_event,
)
from roomstate.webhooks.queue import WebhookQueue

__all__ = ["Deliverer", "retry_delay_s"]

log = logging.getLogger(__name__)

POLL_S = 0.25  # an idle node asks for new events this often
HELD_PER_LANE = 32  # events a node takes from the queue per lane, at most (the rest wait there)
RETRY_FIRST_S = 0.5  # the first retry's delay; each next one doubles, up to
RETRY_MAX_S = 10.0  # (and to half the claim timeout: a retrying node keeps its claim)
DATA_INTERVAL_S = 1.0  # a room's session-data.updated: one a second at most
STORE_RETRY_S = 1.0  # an event whose store step failed is tried again after this (in its lane)
FORGET_CLAIMS = 10  # a consumer idle for this many claim timeouts, with nothing pending, goes


def retry_delay_s(attempt: int, claim_s: float, jitter: float) -> float:
    """The delay before retry `attempt` (0: the first), `jitter` in [0, 1) spreading the
    retries of many events over the second half of the delay."""
    ceiling = min(RETRY_MAX_S, claim_s / 2)
    return min(ceiling, RETRY_FIRST_S * 2.0**attempt) * (0.5 + jitter / 2)


@dataclass
class _Lease:
    """A shard this node reads: its lease, held by `consumer` (this tenure's name)."""

    consumer: str
    valid_until: float  # (monotonic) the lease lasts till then at least: last renewal sent + TTL
    caught_up: bool = False  # nothing is pending under another consumer: new events may be read
    handing_on: bool = False  # another live node is preferred: read nothing new, then release


class Deliverer:
    """Delivers the recorded events of `queue` for the node incarnation `member` (its consumers
    are named after it: "<member>/<tenure>", a new one each time it takes a shard's lease)."""

    def __init__(
        self, queue: WebhookQueue, settings: Settings, member: str, metrics: WebhookMetrics
    ) -> None:
        self.queue = queue
        self.member = member
        self.metrics = metrics
        self.urls = settings.webhook_urls
        self._key = decode_secret(settings.webhook_secret or "")
        self._types = parse_types(settings.webhook_types)
        self._timeout_s = settings.webhook_timeout_s
        self._retry_s = settings.webhook_retry_s
        self._claim_s = settings.webhook_claim_s
        # Leases are renewed this often: a lane starts a request only if the lease outlasts it,
        # and a renewal comes before that margin runs out (the settings keep timeout < claim).
        self._round_s = min(self._claim_s / 4, (self._claim_s - self._timeout_s) / 2)
        self._lanes: list[asyncio.Queue[tuple[Recorded, str]]] = [
            asyncio.Queue() for _ in range(settings.webhook_concurrency)
        ]
        # the events taken, by (shard, position): in a lane, or waiting to be due; the consumer
        # (lease tenure) each was taken as
        self._held: dict[tuple[int, str], str] = {}
        self._leases: dict[int, _Lease] = {}  # the shards this node reads
        self._tenure = 0  # leases taken so far (each tenure's consumer is named after it)
        self._rounds = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def shards(self) -> list[int]:
        """The shards this node reads now."""
        return sorted(self._leases)

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._tasks = [asyncio.ensure_future(self._take())]
        self._tasks += [asyncio.ensure_future(self._lane(lane)) for lane in self._lanes]

    async def close(self) -> None:
        """Stop, and hand the leases on: what is pending is taken by another node at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        idle_ms = int(self._claim_s * 1000)
        for shard in range(self.queue.shards):
            lease = self._leases.pop(shard, None)
            consumer = lease.consumer if lease is not None else ""
            try:
                await self.queue.release(shard, self.member, consumer, idle_ms, leaving=True)
            except BusError as exc:  # (its pending events are taken after the claim timeout)
                log.warning("cannot hand on webhook shard %d: %s", shard, exc)
                break
        if self._session is not None:
            await self._session.close()

    async def _take(self) -> None:
        """Keep the leases, and take events while the lanes have room: first what others left
        pending (a new lease's), then new ones."""
        capacity = HELD_PER_LANE * len(self._lanes)
        round_at = -float("inf")
        start = 0  # the shard the next read starts at (each gets its turn first)
        while True:
            taken: list[tuple[Recorded, str]] = []
            try:
                if time.monotonic() - round_at >= self._round_s:
                    round_at = time.monotonic()
                    taken += await self._round(capacity)
                shards = [s for s in self._leases if s >= start] + [
                    s for s in self._leases if s < start
                ]
                start = (start + 1) % self.queue.shards
                for shard in shards:
                    lease = self._leases.get(shard)
                    free = capacity - len(self._held) - len(taken)
                    if lease is None or not lease.caught_up or lease.handing_on or free <= 0:
                        continue
                    read = await self.queue.read(shard, lease.consumer, free)
                    taken += [(recorded, lease.consumer) for recorded in read]
            except BusError as exc:
                log.warning("cannot take webhook events: %s", exc)
            self._enqueue(taken)
            if not taken:
                await asyncio.sleep(POLL_S)

    def _enqueue(self, taken: list[tuple[Recorded, str]]) -> None:
        for recorded, consumer in taken:
            where = (recorded.shard, recorded.position)
            if self._held.get(where) == consumer:
                continue  # already in a lane
            # (taken again by a new tenure of the lease: the earlier tenure's copy, still in a
            # lane, is left there unsent; this one goes behind it, before the newer events)
            self._held[where] = consumer
            lane = zlib.crc32(recorded.room.encode()) % len(self._lanes)
            self._lanes[lane].put_nowait((recorded, consumer))

    async def _round(self, capacity: int) -> list[tuple[Recorded, str]]:
        """Renew or take each shard's lease; touch what this node holds; hand on the shards
        another node is preferred for once none of their events is in hand; take what was
        left pending (the whole of it, oldest first, before any new event)."""
        self._rounds += 1
        taken: list[tuple[Recorded, str]] = []
        in_hand = {shard for shard, _ in self._held}
        for shard in range(self.queue.shards):
            try:
                taken += await self._keep(shard, capacity - len(self._held) - len(taken), in_hand)
            except BusError as exc:  # a lease not renewed runs out unless a later round does
                log.warning("webhook shard %d: %s", shard, exc)
        with contextlib.suppress(BusError):
            self.metrics.backlog = await self.queue.backlog()
        return taken

    async def _keep(self, shard: int, free: int, in_hand: set[int]) -> list[tuple[Recorded, str]]:
        """One round for one shard (see `_round`)."""
        ttl_ms = idle_ms = int(self._claim_s * 1000)
        lease = self._leases.get(shard)
        consumer = lease.consumer if lease else f"{self.member}/{self._tenure + 1}"
        sent = time.monotonic()
        held, first = await self.queue.hold(shard, self.member, consumer, ttl_ms)
        if not held:
            if self._leases.pop(shard, None) is not None:
                log.warning("webhook shard %d: another node took its lease", shard)
            return []
        if lease is None:  # a new tenure: it reads nothing new until it has caught up
            self._tenure += 1
            lease = self._leases[shard] = _Lease(consumer, 0.0)
        lease.valid_until = sent + ttl_ms / 1000
        lease.handing_on = not first
        if lease.handing_on:
            if shard not in in_hand:
                del self._leases[shard]
                await self.queue.release(shard, self.member, consumer, idle_ms, leaving=False)
            return []
        # Only this tenure's: touching an earlier one's would move it to this consumer, where
        # nothing sends it until it is idle, after the room's newer events.
        mine = [p for (s, p), c in self._held.items() if s == shard and c == consumer]
        await self.queue.touch(shard, consumer, mine)
        if self._rounds % 4 == 0:  # about once a claim timeout
            await self.queue.forget_consumers(shard, consumer, FORGET_CLAIMS * idle_ms)
        if free <= 0:
            return []
        claimed, lease.caught_up = await self.queue.claim(shard, consumer, idle_ms, free)
        return [(recorded, consumer) for recorded in claimed]

    async def _sendable(self, shard: int, consumer: str) -> bool:
        """Whether this node may send an event it took as `consumer`: it still holds that
        lease, long enough for a request to end before it could run out (else it waits for a
        renewal); False: the lease went to another node, which sends the event."""
        while True:
            lease = self._leases.get(shard)
            if lease is None or lease.consumer != consumer:
                return False
            if time.monotonic() + self._timeout_s < lease.valid_until:
                return True
            await asyncio.sleep(POLL_S / 5)

    async def _lane(self, lane: asyncio.Queue[tuple[Recorded, str]]) -> None:
        """Deliver one event after another: a room's events, in the order they were taken."""
        loop = asyncio.get_running_loop()
        while True:
            recorded, consumer = await lane.get()
            later = None
            while await self._sendable(recorded.shard, consumer):
                try:
                    later = await self._deliver(recorded, consumer)
                    break
                except BusError as exc:  # tried again: the room's later events wait behind it
                    log.warning("webhook event %s: %s", recorded.position, exc)
                    await asyncio.sleep(STORE_RETRY_S)
                except Exception:  # a bug: the event stays pending, the lane goes on
                    log.exception("webhook event %s", recorded.position)
                    break
            if later is None:
                if self._held.get((recorded.shard, recorded.position)) == consumer:
                    del self._held[recorded.shard, recorded.position]
            else:  # not due yet: back in its lane then (the room's later events go on)
                loop.call_later(later, lane.put_nowait, (recorded, consumer))

    async def _deliver(self, recorded: Recorded, consumer: str) -> float | None:
        """Deliver `recorded` (or give up on it); or the seconds until it is due."""
        try:
            kind = recorded.type
            to_event(recorded, 0)  # readable: else no retry would help
        except WebhookError as exc:  # (recorded by a newer version?) kept for an operator
            await self.queue.dead_letter(recorded, str(exc))
            self.metrics.dead_letters += 1
            return None
        if kind not in self._types:
            await self.queue.ack(recorded)
            return None
        if kind == "meeting.ended":
            started, present = await self.queue.meeting(recorded.room)
            if started == recorded.fields.get("m"):
                if present:  # someone came back within the grace: the meeting goes on
                    await self.queue.ack(recorded)
                # else: still in its grace. Left pending, it comes back (to this node or
                # another) after the claim timeout, and is looked at again.
                return None
        if kind == "session-data.updated":  # the data as it is now: later changes coalesce
            due = int(recorded.fields.get("t", "0")) / 1000 + DATA_INTERVAL_S - time.time()
            if due > 0:  # one a second at most: each is read a second after it was recorded
                return due
            data = await self.queue.session_data(recorded.room)
            fields = {**recorded.fields, "d": orjson.dumps(data).decode()}
            recorded = Recorded(recorded.shard, recorded.position, fields)
        waiting, attempt, first = list(self.urls), 0, time.monotonic()
        while True:
            if attempt > 0:
                if not await self._sendable(recorded.shard, consumer):
                    return None  # the lease went on: the next holder sends it
                await self.queue.touch(recorded.shard, consumer, [recorded.position])
            errors = await asyncio.gather(*(self._post(url, recorded) for url in waiting))
            failed = [(url, error) for url, error in zip(waiting, errors, strict=True) if error]
            if not failed:
                await self.queue.ack(recorded)
                self.metrics.delivered += 1
                self.metrics.observe_lag(time.time() - int(recorded.fields.get("t", "0")) / 1000)
                return None
            self.metrics.failures += len(failed)
            waiting = [url for url, _ in failed]
            delay = retry_delay_s(attempt, self._claim_s, random.random())
            if time.monotonic() + delay - first > self._retry_s:
                await self.queue.dead_letter(recorded, failed[-1][1])
                self.metrics.dead_letters += 1
                log.warning("webhook %s dead-lettered: %s", recorded.id, failed[-1][1])
                return None
            self.metrics.retries += 1
            attempt += 1
            await asyncio.sleep(delay)

    async def _post(self, url: str, recorded: Recorded) -> str | None:
        """POST `recorded` to `url`: None if it answered 2xx, else what went wrong."""
        assert self._session is not None, "start() first"
        now_ms = int(time.time() * 1000)
        body = orjson.dumps(to_event(recorded, now_ms))
        timestamp = now_ms // 1000
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": sign(self._key, timestamp, body),
        }
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"{url} answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{url}: {type(exc).__name__}: {exc}"
