"""Membership: this node's lease on the bus, the upkeep that runs while it holds it, and fencing.

Two tasks run from `start` to `stop`:

- `_keep_lease` renews the lease every `LEASE_RENEW_S`, on its own task so that no other work
  can make it late; a lease lost (paused or cut off too long: the others have removed this
  node's participants) makes the node fence: close every client, forget every room, and come
  back as a new incarnation;
- `_upkeep`, while the lease is held: merge replicas back into a store that lost them
  (`restore_lost_rooms`), check the clock, and remove the participants of nodes whose lease
  expired (`remove_lost_participants`), but only after a whole lease period of holding its own
  lease: after an outage of the store, the other nodes must be given the time to renew theirs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from roomstate.bus import Bus
from roomstate.crdt import RoomState
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
    ) -> None:
        self.bus = bus
        self.identity = identity
        self.admission = admission
        self.hosting = hosting
        self.sessions = sessions
        self.now_ms = now_ms
        self._lease_task: asyncio.Task[None] | None = None
        self._upkeep_task: asyncio.Task[None] | None = None
        self._lease_checked_at = math.inf  # monotonic time of the last lease round
        # Since when the lease has been held without a break (inf: it is not held now). Lost
        # nodes are judged only after a whole lease period of it.
        self._held_since = math.inf

    # -- start and stop --

    async def register(self) -> None:
        """Register this incarnation's lease (at start, and for a new incarnation)."""
        identity = self.identity
        await self.bus.renew_lease(identity.node_id, identity.incarnation, LEASE_TTL_MS, True)
        self._held_since = self._lease_checked_at = time.monotonic()

    def start(self) -> None:
        """Start renewing the lease and the upkeep (after `register`)."""
        loop = asyncio.get_running_loop()
        self._lease_task = loop.create_task(self._keep_lease())
        self._upkeep_task = loop.create_task(self._upkeep())

    def stop_upkeep(self) -> None:
        """No more upkeep rounds (a shutdown: the lease is still renewed until `stop`)."""
        if self._upkeep_task is not None:
            self._upkeep_task.cancel()

    def stop(self) -> None:
        """Stop renewing the lease (the upkeep too)."""
        self.stop_upkeep()
        if self._lease_task is not None:
            self._lease_task.cancel()

    @property
    def renewing(self) -> bool:
        """Whether the lease is being renewed (between `start` and `stop`)."""
        return self._lease_task is not None and not self._lease_task.done()

    # -- the lease --

    async def _keep_lease(self) -> None:
        """Renew the lease every second (0.2 s after a failure), fencing if it was lost. On its
        own task, so that no other work can make it late: with 500 ms of latency to Redis, a
        round of the upkeep below takes seconds, and a late renewal would let the lease expire
        and the other nodes remove this node's participants."""
        next_at = time.monotonic() + LEASE_RENEW_S
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                if not await self._renew_lease():
                    if self.admission.draining:  # shutting down: its participants are leaving
                        log.warning("lease lost while shutting down: not fencing")
                    else:
                        await self.fence()
                # Every LEASE_RENEW_S however long a renewal takes (at once if it took longer).
                next_at = max(next_at + LEASE_RENEW_S, time.monotonic())
            except BusError as exc:
                self._held_since = math.inf
                log.warning("lease renewal failed: %s", exc)
                next_at = time.monotonic() + LEASE_RETRY_S
            except Exception:
                log.exception("lease renewal failed")
                next_at = time.monotonic() + LEASE_RETRY_S

    async def _renew_lease(self) -> bool:
        """Whether this incarnation still holds its lease. A lease that vanished while this
        node kept trying to renew it (the store was unreachable or lost its data) is taken
        again: participants that others removed meanwhile are removed here by their events.
        A node that did not even try for a whole lease period (paused) must fence."""
        now = time.monotonic()
        paused = now - self._lease_checked_at > LEASE_TTL_MS / 1000
        self._lease_checked_at = now
        node_id, incarnation = self.identity.node_id, self.identity.incarnation
        state = await self.bus.renew_lease(node_id, incarnation, LEASE_TTL_MS, False)
        if state == "missing" and not paused:
            log.warning("the lease vanished while this node kept renewing it: taking it again")
            state = await self.bus.renew_lease(node_id, incarnation, LEASE_TTL_MS, True)
            self._held_since = now  # the other nodes need a moment to re-register too
        if state == "held":
            self._held_since = min(self._held_since, now)
        return state == "held"

    async def fence(self) -> None:
        """Our lease was lost (we were paused or cut off too long): others have removed our
        participants. Close every client and come back as a new incarnation."""
        identity = self.identity
        log.warning(
            "lease lost: fencing node %s incarnation %s", identity.node_id, identity.incarnation
        )
        self._held_since = math.inf  # no upkeep round until the new incarnation holds the lease
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
