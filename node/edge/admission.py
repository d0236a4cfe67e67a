"""Admission: what a request must pass before the node stamps and stores it, and the clock check.

A node refuses (`unavailable`) a write it must not store now, for one of three reasons:

- it is shutting down (`draining`): a join now would be left open by the shutdown;
- its lease has not been confirmed for `LEASE_ADMIT_S` (in the room's lease group: in a
  Cluster, on the room's master): the node was paused or cut off and may have been declared
  lost, its participants removed; a write it stored now would carry an incarnation the others
  already buried (it fences at its next lease round, and its clients reconnect);
- the write carries a stamp and this node's clock is out of the drift bound (DESIGN: a node whose
  clock is out of bound refuses writes and reports not ready). `check_clock` measures it
  against the store's clock, at start and at every upkeep round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from roomstate.bus import Bus
from roomstate.crdt.hlc import clock_skew_ms
from roomstate.edge.identity import LEASE_ADMIT_S, Identity
from roomstate.errors import RequestError
from roomstate.wire.events import BusEvent
from roomstate.wire.positions import position_clock_ms

__all__ = ["CLOCK_PROBE", "Admission"]

log = logging.getLogger(__name__)

CLOCK_PROBE = "~clock"  # the stream the clock check writes to (no room can have this name)


class Admission:
    """Decides whether the node may take a join or a write now."""

    def __init__(
        self, bus: Bus, identity: Identity, max_drift_ms: int, now_ms: Callable[[], int]
    ) -> None:
        self.bus = bus
        self.identity = identity
        self.max_drift_ms = max_drift_ms  # the drift bound: a clock further off refuses writes
        self.now_ms = now_ms  # the node's wall clock (ms)
        self.draining = False  # shutting down: no joins, /readyz says no
        self.clock_skew_ms = 0  # this node's clock minus the store's, as far as sure (ms)
        self.clock_in_bound = True  # |clock_skew_ms| <= max_drift_ms: stamped writes allowed

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
