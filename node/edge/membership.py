"""Membership: this node's lease on the bus, the upkeep that runs while it holds it, and fencing.

- The lease is renewed every `LEASE_RENEW_S` by a `LeaseKeeper` that the bus runs where this
  node's own work cannot make it late (the Redis bus: a thread of its own). A busy node is not
  a paused one: fanning out a join storm must not cost it its lease. Each round is reported
  here (`_on_lease_round`); a lease lost (the node was paused or cut off too long: the others
  have removed its participants) makes the node fence: close every client, forget every room,
  and come back as a new incarnation;
- `_upkeep`, on the node's loop while the lease is held: merge replicas back into a store that
  lost them (`restore_lost_rooms`), check the clock, and remove the participants of nodes whose
  lease expired (`remove_lost_participants`), but only after a whole lease period of holding
  its own lease: after an outage of the store, the other nodes must be given the time to renew
  theirs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from roomstate.bus import Bus, LeaseKeeper, LeaseRound
from roomstate.crdt import DEFAULT_KEEP_MS, RoomState
from roomstate.edge.admission import Admission
from roomstate.edge.clients import CLOSE_FENCED
from roomstate.edge.hosting import Hosting
from roomstate.edge.identity import LEASE_RENEW_S, LEASE_RETRY_S, LEASE_TTL_MS, Identity
from roomstate.edge.sessions import Sessions
from roomstate.errors import BusError
from roomstate.wire.events import BusEvent

__all__ = ["Membership"]

log = logging.getLogger(__name__)


class Membership:
    """The lease, the upkeep, and fencing."""

    def __init__(
        self,
        bus: Bus,
        identity: Identity,
        admission: Admission,
        hosting: Hosting,
        sessions: Sessions,
        now_ms: Callable[[], int],
        loop_stuck_s: float = 30.0,
        keep_ms: int = DEFAULT_KEEP_MS,
    ) -> None:
        self.bus = bus
        self.identity = identity
        self.admission = admission
        self.hosting = hosting
        self.sessions = sessions
        self.now_ms = now_ms
        self.loop_stuck_s = loop_stuck_s  # the loop silent this long: the lease is let go
        self.keep_ms = keep_ms  # the horizon: removals kept; out of touch half of it: fence
        self._keeping = False  # the bus runs the lease keeper (between `start` and `stop`)
        self._fencing: asyncio.Task[None] | None = None  # a fence under way
        self._upkeep_task: asyncio.Task[None] | None = None
        # Since when the lease has been held without a break (inf: it is not held now). Lost
        # nodes are judged only after a whole lease period of it.
        self._held_since = math.inf
        self._held_at = -math.inf  # when the last renewal that found the lease held was sent

    # -- start and stop --

    async def register(self) -> None:
        """Register this incarnation's lease (at start, and for a new incarnation)."""
        identity = self.identity
        await self.bus.renew_lease(identity.node_id, identity.incarnation, LEASE_TTL_MS, True)
        self._held_since = self._held_at = time.monotonic()

    def start(self) -> None:
        """Start renewing the lease, measuring the loop's lag, and the upkeep (after
        `register`)."""
        loop_lag = self.admission.loop_lag
        loop_lag.start()
        identity = self.identity
        keeper = LeaseKeeper(
            node_id=identity.node_id,
            incarnation=lambda: identity.incarnation,
            renew=self.bus.renew_lease,
            report=self._on_lease_round,
            ttl_ms=LEASE_TTL_MS,
            renew_s=LEASE_RENEW_S,
            retry_s=LEASE_RETRY_S,
            loop_turned_at=lambda: loop_lag.turned_at,
            stuck_s=self.loop_stuck_s,
        )
        self.bus.keep_lease(keeper)
        self._keeping = True
        self._upkeep_task = asyncio.get_running_loop().create_task(self._upkeep())

    def stop_upkeep(self) -> None:
        """No more upkeep rounds (a shutdown: the lease is still renewed until `stop`)."""
        if self._upkeep_task is not None:
            self._upkeep_task.cancel()

    def stop(self) -> None:
        """Stop renewing the lease (the upkeep too)."""
        self.stop_upkeep()
        if self._keeping:
            self.bus.stop_keeping_lease()
            self._keeping = False
        self.admission.loop_lag.stop()

    @property
    def renewing(self) -> bool:
        """Whether the lease is being renewed (between `start` and `stop`)."""
        return self._keeping

    # -- the lease --

    def _on_lease_round(self, lease_round: LeaseRound) -> None:
        """What a renewal found (called on the node's loop): the lease held (lost nodes may be
        judged once it has been for a whole lease period), or lost (fence), or unknown (the
        store did not answer: nothing may be judged until it does)."""
        if lease_round.incarnation != self.identity.incarnation or self._fencing is not None:
            return  # about an incarnation already fenced
        state = lease_round.state
        if state is None:
            self._held_since = math.inf
            log.warning("lease renewal failed: %s", lease_round.error)
        elif (
            state == "held"
            and lease_round.sent - self._held_at > self.keep_ms / 2000
            and not self.admission.draining  # (shutting down: its participants are leaving)
        ):
            # Out of touch with the store for half the horizon: removals made meanwhile may be
            # forgotten before this node's replicas catch up (docs/crdt.md): start afresh.
            self._fencing = asyncio.get_running_loop().create_task(self._fence_once())
        elif state == "held":
            if lease_round.retaken:  # the other nodes need a moment to re-register too
                self._held_since = lease_round.sent
            self._held_since = min(self._held_since, lease_round.sent)
            self._held_at = max(self._held_at, lease_round.sent)
        elif self.admission.draining:  # shutting down: its participants are leaving
            log.warning("lease lost while shutting down: not fencing")
        else:
            self._fencing = asyncio.get_running_loop().create_task(self._fence_once())

    async def _fence_once(self) -> None:
        try:
            await self.fence()
        except BusError as exc:
            # The new incarnation is not registered: its renewals find it missing and take it
            log.warning("could not register the new incarnation: %s", exc)
        finally:
            self._fencing = None

    async def fence(self) -> None:
        """Our lease was lost (we were paused or cut off too long): others have removed our
        participants. Close every client and come back as a new incarnation."""
        identity = self.identity
        log.warning(
            "lease lost: fencing node %s incarnation %s", identity.node_id, identity.incarnation
        )
        self._held_since = math.inf  # no upkeep round until the new incarnation holds the lease
        self._held_at = time.monotonic()  # nothing left to be stale: no second fence for it
        clients = self.sessions.drop_all()
        self.hosting.close_all()  # and the replicas to merge back: never stored under the next
        for conn in clients:
            conn.close_soon(CLOSE_FENCED, "node lost its lease; reconnect")
        # Taken before it is registered, so that a failed registration is retried for it by
        # the next lease round; a write in between is refused by the store's lease check.
        identity.renew()
        await self.register()

    # -- the upkeep --

    async def _upkeep(self) -> None:
        """Every second while the lease is held (0.2 s after a round that failed): merge
        replicas back into a store that lost them, check the clock, remove the participants of
        nodes whose lease expired."""
        delay = LEASE_RENEW_S
        while True:
            await asyncio.sleep(delay)
            if self._held_since == math.inf:
                delay = LEASE_RETRY_S  # the lease is not held: nothing may be judged now
                continue
            delay = LEASE_RETRY_S  # unless the round succeeds
            try:
                await self.restore_lost_rooms()
                self.collect_removals()
                await self.admission.check_clock()
                if time.monotonic() - self._held_since >= LEASE_TTL_MS / 1000:
                    await self.remove_lost_participants()
                delay = LEASE_RENEW_S
            except BusError as exc:
                log.warning("upkeep failed: %s", exc)
            except Exception:
                log.exception("upkeep failed")

    async def restore_lost_rooms(self) -> None:
        """Anti-entropy (a round of the upkeep): merge this node's replica back into the store
        for each room the store lost, and each room with a write the store may not have taken."""
        lost = set(await self.bus.lost_rooms(list(self.hosting.rooms)))
        await self.hosting.merge_back(lost)

    def collect_removals(self) -> None:
        """Forget the removals older than the horizon in every hosted replica (a round of the
        upkeep; docs/crdt.md, "Forgetting removals")."""
        now = self.now_ms()
        for room in self.hosting.rooms.values():
            room.state.collect(now, self.keep_ms, self.hosting.max_drift_ms)

    async def remove_lost_participants(self) -> None:
        """Remove the participants held by node incarnations that no longer hold a lease (a
        round of the upkeep). Those of this incarnation are its own to remove (connected, or
        waiting to resume), and so are local ones whatever their recorded location; who is
        local is read after the lease read, and a room closed meanwhile is still done (each
        removal is stored only if the participant is still where it was seen, so a late one
        is harmless)."""
        rooms = self.hosting.rooms
        here = (self.identity.node_id, self.identity.incarnation)
        located = {name: room.locations() for name, room in rooms.items()}
        holders = {key for by_holder in located.values() for key in by_holder if key != here}
        if not holders:
            return
        live = await self.bus.live_incarnations(sorted({node for node, _ in holders}))
        gone = {(node, inc) for node, inc in holders if inc not in live.get(node, set())}
        lost = [
            (name, sid, location)
            for name, by_holder in located.items()
            for holder in gone & by_holder.keys()
            for sid, location in by_holder[holder].items()
            if name not in rooms or sid not in rooms[name].local
        ]
        # All at once: the bus pipelines them (a node holding 200 participants is 200
        # conditional removals, one round trip instead of 200).
        results = await asyncio.gather(
            *(self._remove_lost(name, sid, location) for name, sid, location in lost),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _remove_lost(self, name: str, sid: str, location: dict[str, Any]) -> None:
        """Remove a participant of a lost node, if it is still where that node had it (it may
        have resumed elsewhere, or another node removed it first)."""
        event = BusEvent(
            self.identity.origin, self.now_ms(), delta=RoomState(removed={sid}), reason="node-lost"
        )
        stored = await self.bus.publish(name, event, only_if_at=(sid, location))
        room = self.hosting.rooms.get(name)
        if stored is not None and room is not None:
            log.info("room %s: %s left with its node %s", name, sid, location["node"])
            self.hosting.deliver(room, room.remove_lost(sid, "node-lost"))
