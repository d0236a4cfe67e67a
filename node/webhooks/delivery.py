"""Webhook delivery: one `Deliverer` per node takes recorded events from the fleet's shared
queue and POSTs them, signed, to every receiver.

At least once: an event is acknowledged only once every receiver answered 2xx; a node that
dies with events pending leaves them to another node (`claim_stale`, after the claim timeout).
A failed request is retried with exponential backoff until the retry budget is spent; the
event then goes to the dead letters. A room's events go through one lane, in the order they
were recorded; lanes run side by side (bounded), and nothing here is on a room's path: the
rooms only record events (the bus's publish), so a slow receiver slows only its deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib

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


def retry_delay_s(attempt: int, claim_s: float, jitter: float) -> float:
    """The delay before retry `attempt` (0: the first), `jitter` in [0, 1) spreading the
    retries of many events over the second half of the delay."""
    ceiling = min(RETRY_MAX_S, claim_s / 2)
    return min(ceiling, RETRY_FIRST_S * 2.0**attempt) * (0.5 + jitter / 2)


class Deliverer:
    """Delivers the recorded events of `queue` as the consumer `consumer` (unique per node
    incarnation)."""

    def __init__(
        self, queue: WebhookQueue, settings: Settings, consumer: str, metrics: WebhookMetrics
    ) -> None:
        self.queue = queue
        self.consumer = consumer
        self.metrics = metrics
        self.urls = settings.webhook_urls
        self._key = decode_secret(settings.webhook_secret or "")
        self._types = parse_types(settings.webhook_types)
        self._timeout_s = settings.webhook_timeout_s
        self._retry_s = settings.webhook_retry_s
        self._claim_s = settings.webhook_claim_s
        self._lanes: list[asyncio.Queue[Recorded]] = [
            asyncio.Queue() for _ in range(settings.webhook_concurrency)
        ]
        # the events taken, by (shard, position): in a lane, or waiting to be due
        self._held: dict[tuple[int, str], Recorded] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._tasks = [asyncio.ensure_future(self._take())]
        self._tasks += [asyncio.ensure_future(self._lane(lane)) for lane in self._lanes]

    async def close(self) -> None:
        """Stop (what is pending stays so: another node, or this one's next start, takes it)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()

    async def _take(self) -> None:
        """Take events from the queue while the lanes have room: new ones, and a dead node's."""
        capacity = HELD_PER_LANE * len(self._lanes)
        claimed_at = -float("inf")
        while True:
            free = capacity - len(self._held)
            taken: list[Recorded] = []
            try:
                if time.monotonic() - claimed_at >= self._claim_s / 4:
                    claimed_at = time.monotonic()
                    await self._keep_held()
                    idle_ms = int(self._claim_s * 1000)
                    if free > 0:
                        taken += await self.queue.claim_stale(self.consumer, idle_ms, free)
                    self.metrics.backlog = await self.queue.backlog()
                if free - len(taken) > 0:
                    taken += await self.queue.read(self.consumer, free - len(taken))
            except BusError as exc:
                log.warning("cannot take webhook events: %s", exc)
            for recorded in taken:
                where = (recorded.shard, recorded.position)
                if where in self._held:
                    continue  # already in a lane (its idle time ran out while it waited)
                self._held[where] = recorded
                lane = zlib.crc32(recorded.room.encode()) % len(self._lanes)
                self._lanes[lane].put_nowait(recorded)
            if not taken:
                await asyncio.sleep(POLL_S)

    async def _keep_held(self) -> None:
        """Touch the events waiting in this node's lanes: no other node takes them over while
        this one is alive (a slow receiver can keep them waiting longer than the timeout)."""
        for recorded in list(self._held.values()):
            await self.queue.touch(self.consumer, recorded)

    async def _lane(self, lane: asyncio.Queue[Recorded]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            recorded = await lane.get()
            later = None
            try:
                later = await self._deliver(recorded)
            except BusError as exc:  # it stays pending: taken over after the claim timeout
                log.warning("webhook event %s: %s", recorded.position, exc)
            except Exception:  # a bug: the event stays pending, the lane goes on
                log.exception("webhook event %s", recorded.position)
            if later is None:
                self._held.pop((recorded.shard, recorded.position), None)
            else:  # not due yet: back in its lane then (the room's later events go on)
                loop.call_later(later, lane.put_nowait, recorded)

    async def _deliver(self, recorded: Recorded) -> float | None:
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
                await self.queue.touch(self.consumer, recorded)  # still ours
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
