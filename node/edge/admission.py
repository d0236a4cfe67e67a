"""Admission: what a request must pass before the node takes it, the clock check, and the load.

A node refuses (`unavailable`) a write it must not store now, for one of three reasons:

- it is shutting down (`draining`): a join now would be left open by the shutdown;
- its lease has not been confirmed for `LEASE_ADMIT_S` (in the room's lease group: in a
  Cluster, on the room's master): the node was paused or cut off and may have been declared
  lost, its participants removed; a write it stored now would carry an incarnation the others
  already buried (it fences at its next lease round, and its clients reconnect);
- the write carries a stamp and this node's clock is out of the drift bound: a node whose clock
  is out of bound refuses writes and reports not ready. `check_clock` measures it against the
  store's clock, at start and at every upkeep round.

Load is not among them: a busy node keeps serving the participants it has (their writes and app
messages), and sheds new joins instead (`refuse_if_at_capacity`): over `max_loop_lag_ms` of
event-loop lag (`LoopLag`), or `max_joins_in_flight` joins under way, a join gets a retryable
`unavailable` carrying `retryAfter` (ms, jittered: a storm of refused clients must not come
back all at once).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable

from roomstate.bus import Bus
from roomstate.crdt.hlc import clock_skew_ms
from roomstate.edge.identity import LEASE_ADMIT_S, Identity
from roomstate.errors import RequestError
from roomstate.metrics import Metrics
from roomstate.wire.events import BusEvent
from roomstate.wire.positions import position_clock_ms

__all__ = ["CLOCK_PROBE", "Admission", "LoopLag"]

log = logging.getLogger(__name__)

CLOCK_PROBE = "~clock"  # the stream the clock check writes to (no room can have this name)
RETRY_MIN_MS = 1000  # a shed join is told to retry after at least this (before the jitter)
RETRY_MAX_MS = 10_000  # and at most this (before the jitter)


class LoopLag:
    """How late the node's event loop runs: a timer every `INTERVAL_S` measures how much later
    than due it fired (a loop busy with other callbacks runs it late). `lag_s` is what
    admission sheds joins by; `turned_at` tells the lease keeper the loop still turns."""

    INTERVAL_S = 0.1  # how often the timer is due
    WINDOW_S = 1.0  # `lag_s` is the worst lag seen over this long

    def __init__(self, observe: Callable[[float], None] | None = None) -> None:
        self.observe = observe  # called with each lag measured (s): the metric
        self.turned_at = time.monotonic()  # when the timer last ran (read by another thread)
        self._due = math.inf  # when the timer is due next (inf: not running)
        self._recent: deque[tuple[float, float]] = deque()  # (when, lag s), over WINDOW_S
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.turned_at = time.monotonic()
        self._due = self.turned_at + self.INTERVAL_S
        self._handle = asyncio.get_running_loop().call_later(self.INTERVAL_S, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = math.inf

    def _tick(self) -> None:
        now = time.monotonic()
        lag = max(0.0, now - self._due)
        self.turned_at = now
        recent = self._recent
        recent.append((now, lag))
        while recent[0][0] < now - self.WINDOW_S:
            recent.popleft()
        if self.observe is not None:
            self.observe(lag)
        self._due = now + self.INTERVAL_S
        self._handle = asyncio.get_running_loop().call_later(self.INTERVAL_S, self._tick)

    def lag_s(self) -> float:
        """The worst lag of the last `WINDOW_S`, or how overdue the timer is now if more (a
        request handled right after a long stall sees the stall before the timer does)."""
        now = time.monotonic()
        overdue = max(0.0, now - self._due)
        return max(overdue, max((lag for at, lag in self._recent if at >= now - self.WINDOW_S),
                                default=0.0))  # fmt: skip


class Admission:
    """Decides whether the node may take a join or a write now."""

    def __init__(
        self,
        bus: Bus,
        identity: Identity,
        max_drift_ms: int,
        now_ms: Callable[[], int],
        max_loop_lag_ms: int = 500,
        max_joins_in_flight: int = 200,
        metrics: Metrics | None = None,
    ) -> None:
        self.bus = bus
        self.identity = identity
        self.max_drift_ms = max_drift_ms  # the drift bound: a clock further off refuses writes
        self.now_ms = now_ms  # the node's wall clock (ms)
        self.draining = False  # shutting down: no joins, /readyz says no
        self.clock_skew_ms = 0  # this node's clock minus the store's, as far as sure (ms)
        self.clock_in_bound = True  # |clock_skew_ms| <= max_drift_ms: stamped writes allowed
        self.max_loop_lag_ms = max_loop_lag_ms  # more event-loop lag: new joins are shed
        self.max_joins_in_flight = max_joins_in_flight  # more joins under way: new ones shed
        self.joins_in_flight = 0  # fresh joins between their frame and their stored event
        self.metrics = metrics
        self.loop_lag = LoopLag(metrics.loop_lag.observe if metrics is not None else None)

    def admit(self, room_name: str, stamped: bool) -> None:
        """Refuse (`RequestError` "unavailable") a write to `room_name` this node must not
        store now: its lease is unconfirmed too long, or (`stamped`) its clock is off."""
        silent = time.monotonic() - self.bus.lease_confirmed_at(room_name)
        if self.bus.shared and silent > LEASE_ADMIT_S:
            raise RequestError(
                "unavailable",
                f"this node has not renewed its lease for {silent:.1f} s (the limit is "
                f"{LEASE_ADMIT_S:g} s); the write was not stored",
            )
        if stamped and not self.clock_in_bound:
            skew, bound = self.clock_skew_ms, self.max_drift_ms
            side = "ahead of" if skew > 0 else "behind"
            raise RequestError(
                "unavailable",
                f"this node's clock is {abs(skew)} ms {side} the store's; the drift bound is "
                f"{bound} ms; the write was not stored",
            )

    def refuse_if_draining(self) -> None:
        """Refuse a join while shutting down (the shutdown has closed the others: this one
        would be left open)."""
        if self.draining:
            raise RequestError("unavailable", "this node is shutting down; join again")

    def refuse_if_at_capacity(self) -> None:
        """Shed a new join (a retryable `unavailable` with `retry_after_ms`) while the node is
        over its capacity: its event loop lags more than `max_loop_lag_ms`, or more than
        `max_joins_in_flight` joins are under way. Who is in already is not refused for load."""
        lag_ms = round(self.loop_lag.lag_s() * 1000)
        if lag_ms > self.max_loop_lag_ms:
            reason = "loop-lag"
            why = f"its event loop runs {lag_ms} ms late; the limit is {self.max_loop_lag_ms} ms"
        elif self.joins_in_flight >= self.max_joins_in_flight:
            reason = "joins-in-flight"
            why = f"{self.joins_in_flight} joins under way; the limit is {self.max_joins_in_flight}"
        else:
            return
        base_ms = min(RETRY_MAX_MS, max(RETRY_MIN_MS, 2 * lag_ms))
        retry_ms = round(base_ms * random.uniform(1.0, 2.0))  # spread the retries out
        if self.metrics is not None:
            self.metrics.joins_shed.labels(reason).inc()
        raise RequestError(
            "unavailable",
            f"this node is at capacity ({why}); retry after {retry_ms / 1000:.1f} s",
            retry_after_ms=retry_ms,
        )

    async def check_clock(self) -> None:
        """Measure this node's clock against the store's (with Redis, Redis's clock, read as
        the id of an entry added to the `CLOCK_PROBE` stream) and set `clock_in_bound`."""
        before = self.now_ms()
        position = await self.bus.publish(CLOCK_PROBE, BusEvent(self.identity.origin, before))
        reference = position_clock_ms(position)
        if reference is None:
            return  # the in-memory bus: this node's clock is the only one
        skew = clock_skew_ms(before, reference, self.now_ms())
        bound = self.max_drift_ms
        in_bound = abs(skew) <= bound
        if not in_bound and (self.clock_in_bound or abs(skew - self.clock_skew_ms) > bound):
            side = "ahead of" if skew > 0 else "behind"
            log.warning(
                "this node's clock is %d ms %s the store's (drift bound %d ms): refusing "
                "writes, not ready",
                abs(skew),
                side,
                bound,
            )
        elif in_bound and not self.clock_in_bound:
            log.warning("this node's clock is back within the drift bound: taking writes")
        self.clock_skew_ms, self.clock_in_bound = skew, in_bound
