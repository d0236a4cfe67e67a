"""Keeping a node's lease: the renewal rounds, on whichever event loop runs them.

A `LeaseKeeper` renews the lease every `renew_s` and reports each round (`LeaseRound`) to the
node, which decides what the answer means for it (fence, or judge others again). The rounds run
where the bus puts them (`Membership.keep_lease`): the in-memory bus on the node's own loop, the
Redis bus on a thread of its own with its own connections, so that a node busy fanning out
frames still renews its lease on time. A busy node is not a paused one; a paused process stops
every thread, so a real pause still lets the lease expire and the node fences afterwards.

A node whose loop is stuck for good (not busy: nothing turns it any more) must be judged lost
as a paused one is: the keeper stops renewing once the loop has not turned for `stuck_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from roomstate.errors import BusError

__all__ = ["LeaseKeeper", "LeaseRound", "Renew"]

log = logging.getLogger(__name__)

Renew = Callable[[str, str, int, bool], Awaitable[str]]
"""`renew_lease(node_id, incarnation, ttl_ms, register)` of a bus: "held", "taken", "missing"."""


@dataclass(frozen=True)
class LeaseRound:
    """What one renewal found."""

    incarnation: str  # the incarnation renewed
    state: str | None  # "held", "taken" or "missing"; None: the store did not answer
    sent: float  # monotonic time the renewal was sent
    retaken: bool = False  # it was missing while renewed in time, and was registered again
    error: str = ""  # why the store did not answer


@dataclass
class LeaseKeeper:
    """The renewal rounds of one node's lease (see the module docstring)."""

    node_id: str
    incarnation: Callable[[], str]  # the node's current incarnation (a fence changes it)
    renew: Renew  # the bus's renew_lease (the keeper's thread swaps in its own connection's)
    report: Callable[[LeaseRound], None]  # called with each round (on the node's loop)
    ttl_ms: int  # the lease's time to live
    renew_s: float  # how often it is renewed
    retry_s: float  # how soon a round that failed is tried again
    loop_turned_at: Callable[[], float] | None = None  # monotonic time the node's loop last ran
    stuck_s: float = 30.0  # the node's loop silent this long: stop renewing (judged lost)

    async def run(self) -> None:
        """Renew until cancelled. A round that finds the lease taken (another incarnation holds
        it), or missing after the keeper itself was stopped longer than a lease lasts (the
        process was paused: the others may have removed its participants), gives that
        incarnation up: it is never renewed again, and the node fences."""
        ttl_s = self.ttl_ms / 1000
        tried_at = time.monotonic()  # the last round that tried to renew
        given_up = ""  # an incarnation the keeper will not renew again
        stuck_told = False
        watched = self.incarnation()
        next_at = tried_at + self.renew_s
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            next_at = now + self.retry_s  # unless the round succeeds
            incarnation = self.incarnation()
            if incarnation != watched:  # a fence: the node registered a new incarnation
                watched, tried_at = incarnation, now
            if incarnation == given_up:
                continue  # the node has yet to fence
            if self.loop_turned_at is not None and now - self.loop_turned_at() > self.stuck_s:
                if not stuck_told:
                    log.error(
                        "the event loop has not turned for %.0f s: no longer renewing the "
                        "lease (the node is stuck; the others will judge it lost)",
                        now - self.loop_turned_at(),
                    )
                    stuck_told = True
                continue  # `tried_at` stays: if the loop comes back, it was a pause
            stuck_told = False
            paused = now - tried_at > ttl_s
            tried_at = now
            try:
                state = await self.renew(self.node_id, incarnation, self.ttl_ms, False)
                retaken = state == "missing" and not paused
                if retaken:
                    # Renewed in time, yet gone: the store was unreachable or lost its data.
                    # Participants others removed meanwhile are removed here by their events.
                    log.warning("the lease vanished while this node kept renewing it: retaking")
                    state = await self.renew(self.node_id, incarnation, self.ttl_ms, True)
                if state != "held":
                    given_up = incarnation
                self.report(LeaseRound(incarnation, state, now, retaken))
                # Every renew_s however long a renewal takes (at once if it took longer).
                next_at = max(now + self.renew_s, time.monotonic())
            except BusError as exc:
                self.report(LeaseRound(incarnation, None, now, error=str(exc)))
            except Exception as exc:
                log.exception("lease renewal failed")
                self.report(LeaseRound(incarnation, None, now, error=repr(exc)))
