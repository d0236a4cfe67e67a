"""One client's WebSocket connection: a send queue, and a rate limit.

Fan-out never waits for a slow client. A frame goes to the socket without a task switch when
nothing is queued before it and the socket's buffer is nearly empty (the common case); the frames
one client gets in one event-loop iteration go out in one `write` (`fastpath.WriteBatch`).
Otherwise a frame is appended to the queue, which a task drains with backpressure. That task
runs only while frames are queued: an idle connection holds no task, coroutine or event (fewer
objects for each full garbage collection to walk; docs/performance.md). A client whose queue
passes `send_queue_bytes` is disconnected (close code 1008), so one slow reader cannot make the
node hold unbounded memory or delay the others."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import orjson
from aiohttp import WSMsgType, web

from roomstate.metrics import Metrics
from roomstate.server.fastpath import WriteBatch, release_heartbeat_callback, ws_frame
from roomstate.wire.protocol import frame_type

__all__ = ["CLOSE_POLICY", "Connection", "TokenBucket"]

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # RFC 6455: policy violation (slow consumer, persistent flooding)
CLOSE_TIMEOUT_S = 2.0  # how long a closing peer gets to take its last frames
# A frame is written straight to the socket only while less than this is waiting in the
# socket's own buffer; past it, frames queue (and count towards the slow-consumer limit).
WRITE_THROUGH_BYTES = 16 * 1024
# After a resume, app messages it replayed are still dropped for this long if they come live too
# (an app message this node stores is delivered locally after its publish returns, which can be
# after the resume read it from the log).
REPLAYED_MEMORY_S = 5.0


class TokenBucket:
    """`rate` requests per second on average, `burst` at once. Time is passed in (seconds)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)  # requests allowed right now
        self.stamp = now  # when `tokens` was last brought up to date
        self.refused = 0  # requests refused since the bucket was last full

    def allow(self, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens >= self.burst:
            tokens = self.burst
            self.refused = 0
        self.tokens = tokens
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused += 1
        return False


class Connection:
    """A joined or joining client. `session_id` and `room` are set once it has joined."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        metrics: Metrics,
        send_queue_bytes: int,
        bucket: TokenBucket,
        batch: WriteBatch,
    ) -> None:
        self.ws = ws
        self.transport = transport  # to cut off a peer that does not read even a close frame
        self.metrics = metrics
        self.bucket = bucket
        self.session_id: str | None = None  # set by a successful join
        self.room: str | None = None  # the room it joined
        self.send_queue_bytes = send_queue_bytes  # the most unsent bytes before it is cut off
        self._batch = batch
        self._batched: list[bytes] = []  # wire frames for the end of this loop iteration
        self._batched_bytes = 0
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes in _queue
        self._writer: asyncio.Task[None] | None = None  # drains _queue; only while it has frames
        self._failed = False  # a queued write failed: the socket is gone, frames are dropped
        self._closing = False
        self._close_requested = False  # close_soon was called: one close is under way
        self._held: list[bytes] | None = None  # frames kept aside while a resume replays
        self._held_bytes = 0  # bytes in _held: they count toward send_queue_bytes too
        self._replayed: frozenset[str] = frozenset()  # log positions a resume replayed

    def hold(self) -> None:
        """Keep frames from `send` aside (a resume replays missed events first; a session-data
        write is acknowledged first). Not nested: a connection's requests run one at a time."""
        assert self._held is None, "frames are already held"
        self._held = []
        self._held_bytes = 0

    def send_first(self, frame: bytes) -> None:
        """Queue a frame ahead of those held back."""
        held, self._held = self._held, None
        self.send(frame)
        self._held = held

    def release(self, replayed: frozenset[str] = frozenset()) -> None:
        """Queue the frames held back, after those sent meanwhile with `send_first`, but for
        app messages already replayed (their log positions are in `replayed`)."""
        held, self._held = self._held or [], None
        if replayed:
            self._replayed = replayed
            asyncio.get_running_loop().call_later(REPLAYED_MEMORY_S, self._forget_replayed)
        for frame in held:
            self.deliver(frame)

    def _forget_replayed(self) -> None:
        self._replayed = frozenset()

    def _was_replayed(self, frame: bytes) -> bool:
        return frame.startswith(b'{"type":"app-message"') and (
            orjson.loads(frame).get("seq") in self._replayed
        )

    def send(self, frame: bytes) -> None:
        """Send or queue a frame, counting it; never blocks."""
        self.metrics.frames_sent(frame_type(frame))
        self.deliver(frame)

    def deliver(self, frame: bytes, wire: bytes | None = None) -> None:
        """Send or queue a frame already counted (`wire`: the frame as `ws_frame` makes it);
        never blocks. Cuts the client off if its queue is over the limit."""
        if self._closing:
            return
        if self._held is not None:
            self._held.append(frame)
            self._held_bytes += len(frame)
            unsent = self._held_bytes + self._queued
            if unsent > self.send_queue_bytes and not self._close_requested:
                self._cut_off_slow(unsent)
                self._held.clear()  # never sent now
            return
        if self._replayed and self._was_replayed(frame):
            return
        transport = self.transport
        batched = self._batched
        if batched or (
            not self._queue
            and transport is not None
            and transport.get_write_buffer_size() < WRITE_THROUGH_BYTES
            and not transport.is_closing()
            and not self.ws.closed
        ):
            # Nothing is queued before it: to the socket at the end of this loop iteration,
            # with the others this client gets meanwhile. (The drain task writes a frame before
            # it waits, so an empty queue means every earlier frame is written or batched. A
            # frame already batched in this iteration means the socket was checked for it.)
            wire = wire if wire is not None else ws_frame(frame)
            if not batched:
                self._batch.add(self)
            batched.append(wire)
            self._batched_bytes += len(wire)
            if self._batched_bytes >= WRITE_THROUGH_BYTES:
                self.write_batched()  # a large burst: do not hold it all
            return
        # Here nothing is batched: a frame is batched only when the queue is empty, and a
        # batch in this iteration takes every later frame until it is written, so batched
        # frames always go before queued ones.
        if self._failed:
            return
        self._queue.append(frame)
        self._queued += len(frame)
        if self._queued > self.send_queue_bytes:
            self._cut_off_slow(self._queued)
            return
        if self._writer is None or self._writer.done():  # (done: an eager task factory)
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _cut_off_slow(self, unsent: int) -> None:
        self.metrics.slow_consumers.inc()
        log.warning("closing a slow consumer: %d bytes unsent", unsent)
        self.close_soon(CLOSE_POLICY, f"send queue over {self.send_queue_bytes} bytes")

    def write_batched(self) -> None:
        """Write the frames batched in this loop iteration, in one `write` (none once the socket
        is closing: nothing may follow a close frame)."""
        if not self._batched:
            return
        batched, self._batched = self._batched, []
        self._batched_bytes = 0
        transport = self.transport
        if transport is None or transport.is_closing() or self.ws.closed:
            return
        transport.write(batched[0] if len(batched) == 1 else b"".join(batched))
        self.metrics.client_writes.value += 1

    def close_soon(self, code: int, message: str, flush: bool = False) -> None:
        """Close the socket from synchronous code: drop what is queued, or send it first
        (`flush`, so that the last replies, such as `rate-limited` errors, reach the client)."""
        if self._closing or self._close_requested:
            return
        self._close_requested = True
        if not flush:
            self._batched.clear()
            self._batched_bytes = 0
            self._queue.clear()
            self._queued = 0
        asyncio.get_running_loop().create_task(self.flush_and_close(code, message))

    async def flush_and_close(self, code: int, message: str) -> None:
        """Send what is queued, then close the socket; a peer that has not taken the frames
        `CLOSE_TIMEOUT_S` later is cut off. (A timer: aiohttp's close can return, or hang,
        while the transport still waits, closing, for a peer that never reads.)"""
        self._closing = True
        abort = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self._abort)
        self.write_batched()
        transport = self.transport
        try:
            while self._queue and not self.ws.closed and self._writer is not None:
                await asyncio.sleep(0.01)
            self._stop_writer()
            if transport is not None:  # or the peer's close frame re-arms the heartbeat
                release_heartbeat_callback(transport.get_protocol())
            await self.ws.close(code=code, message=message.encode())
        except (ConnectionError, RuntimeError):
            pass  # cut off meanwhile
        if transport is None or (transport.is_closing() and not transport.get_write_buffer_size()):
            abort.cancel()  # nothing left to cut off: do not hold the connection until then

    def _abort(self) -> None:
        self._stop_writer()
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > 0:
            log.info("peer did not take its last frames; aborting the connection")
        transport.abort()  # a no-op for a transport that is already closed

    async def stop(self) -> None:
        """Stop the writer task (the socket is already closed)."""
        self._closing = True
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    async def _drain(self) -> None:
        """Write the queued frames in order, waiting for the socket to take each; end when the
        queue is empty (`deliver` starts another task when frames queue again)."""
        try:
            while self._queue:
                frame = self._queue.popleft()
                self._queued -= len(frame)
                await self.ws.send_frame(frame, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            self._failed = True
            self._queue.clear()
            self._queued = 0
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
