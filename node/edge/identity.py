"""Who this node is on the bus, and how long that claim lasts.

A node is `node_id` (fixed) in one *incarnation* (new at every start and at every fence). Every
event it publishes names its `origin`, ``"{node}/{incarnation}"``, and every participant it
holds records its `location`, ``{"node", "incarnation"}``. The node's parts (hosting, sessions,
membership, admission) share one `Identity`, so that a fence renews it for all of them at once.

The incarnation stays alive while it holds its lease on the bus; the lease's timing is here
because both the upkeep (renewal) and the admission check (refusing writes once the lease went
unconfirmed too long) are written against it.
"""

from __future__ import annotations

import uuid

from roomstate.wire.positions import location

__all__ = ["LEASE_ADMIT_S", "LEASE_RENEW_S", "LEASE_RETRY_S", "LEASE_TTL_MS", "Identity"]

LEASE_TTL_MS = 5000  # a node's lease expires this long after its last renewal
LEASE_RENEW_S = 1.0  # how often a node renews its lease and looks for lost nodes
LEASE_RETRY_S = 0.2  # after a failed round: the store may be back, and a pooled connection
# that it closed fails once; waiting a whole period would delay noticing that it lost its data
LEASE_ADMIT_S = LEASE_TTL_MS / 1000 - LEASE_RENEW_S  # lease unconfirmed longer: refuse writes


class Identity:
    """This node's id and current incarnation, and the names made of them."""

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.incarnation = ""  # set by `renew`
        self.origin = ""  # "{node}/{incarnation}": this node, as bus events name it
        self.renew()

    def renew(self) -> None:
        """Become a new incarnation (at start, and when fencing)."""
        self.incarnation = uuid.uuid4().hex[:12]
        self.origin = f"{self.node_id}/{self.incarnation}"

    @property
    def unhosted_origin(self) -> str:
        """The origin of events this node stores for a room from outside its hosted replica (a
        REST write to a room it does not host, a closed room's replica merged back): if it
        hosts the room by the time they are read, its replica takes them (its own it skips)."""
        return f"{self.origin}/unhosted"

    def location(self) -> dict[str, str]:
        """Where a connection held by this incarnation is (a new dict: a room state keeps it)."""
        return location(self.node_id, self.incarnation)
