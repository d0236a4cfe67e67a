"""The node's once-a-second upkeep, on a node in this process (its aiohttp app on a real socket,
the in-memory bus) so that the test can put participants of other nodes into a room and run a
round at once instead of waiting for the lease period.

A round removes the participants held by node incarnations without a lease, and no others: not
those this very incarnation holds, connected or not (docs/architecture.md, "Node-lost removal").
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from roomstate.crdt import RoomState, Stamp
from roomstate.sdk.client import CallClient
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent

from .inprocess import node_in_process

pytestmark = pytest.mark.integration

ROOM = "upkeep"


def info(sid: str) -> dict[str, Any]:
    return {"user_id": sid, "user_name": sid, "joined_at": 0, "owner": False}


async def test_a_round_removes_the_participants_of_dead_incarnations_only() -> None:
    async with node_in_process(Settings(), ROOM) as it, CallClient() as client:
        node, bus = it.node, it.bus
        await client.join(it.url)
        # Another node ("gone") stored the joins of two participants: one it holds itself,
        # and one it says this node's current incarnation holds (as after a resume here
        # whose connection has dropped since; no node but this one may remove it).
        now = int(time.time() * 1000)
        delta = RoomState()
        gone = {"node": "gone", "incarnation": "x"}
        here = node.identity.location()
        delta.join("ghost", info("ghost"), gone, None, Stamp(now, 0, "gone"))
        delta.join("held-here", info("held-here"), here, None, Stamp(now, 1, "gone"))
        await bus.publish(ROOM, BusEvent("gone/x", now, delta=delta))
        await client.next_event("participant-joined")
        await client.next_event("participant-joined")

        await node.membership.remove_lost_participants()  # "gone" never held a lease

        left = await client.next_event("participant-left")
        assert (left["participant"]["session_id"], left["reason"]) == ("ghost", "node-lost")
        present = node.rooms[ROOM].state.present()
        assert "ghost" not in present
        assert "held-here" in present, "this incarnation's own are not removed by its upkeep"
        stored = await bus.snapshot(ROOM)
        assert "ghost" in stored.state.removed, "the removal is stored for the other nodes"

        await node.membership.remove_lost_participants()  # nothing more to do
        assert "held-here" in node.rooms[ROOM].state.present()
