"""A node's deliverer (roomstate.webhooks.delivery) on the in-memory queue, to a real HTTP
receiver in this process: the lease steps are driven one by one, so the case is exact."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomstate.bus import MemoryBus
from roomstate.crdt import RoomState, Stamp
from roomstate.metrics import WebhookMetrics
from roomstate.settings import Settings
from roomstate.webhooks.delivery import HELD_PER_LANE, Deliverer
from roomstate.webhooks.queue import preferred
from roomstate.wire.events import BusEvent

from .conftest import webhook_receiver

pytestmark = pytest.mark.integration

CLAIM_S = 1.0
ME, OTHER = "n0", "n1"  # the deliverer's member, preferred over the other one


def joined(sid: str) -> BusEvent:
    info = {"user_name": sid, "user_id": f"u-{sid}", "joined_at": 1_000}
    delta = RoomState().join(sid, info, {"node": "n1"}, None, Stamp(1_000, 0, "n1"))
    return BusEvent("n1/inc", 1_000, delta)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    async for endpoint in webhook_receiver():
        yield endpoint


async def test_a_lease_lost_and_taken_again_keeps_the_room_s_order_of_events_in_hand(
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    url, got = receiver
    assert preferred([ME, OTHER], "memory") == ME
    bus = MemoryBus(room_grace_s=60)
    bus.webhooks = True
    await bus.start()
    settings = Settings(
        webhook_url=url,
        webhook_secret=base64.b64encode(b"k" * 32).decode(),
        webhook_claim_s=CLAIM_S,
        webhook_timeout_s=0.2,
        webhook_concurrency=1,
    )
    queue, ttl_ms = bus.webhook_queue, int(CLAIM_S * 1000)
    deliverer = Deliverer(queue, settings, ME, WebhookMetrics())
    try:
        await bus.publish("r", joined("s0"))  # meeting.started, participant.joined
        await bus.publish("r", joined("s1"))
        await deliverer._round(HELD_PER_LANE)  # its first lease (tenure 1)
        [old] = deliverer._leases.values()
        in_hand = await queue.read(0, old.consumer, 10)
        # In its lane, behind a slow receiver's requests (the lanes do not run yet).
        deliverer._enqueue([(r, old.consumer) for r in in_hand])
        # The node is cut off for longer than the lease: another one takes the lease...
        await asyncio.sleep(CLAIM_S * 1.1)
        assert (await queue.hold(0, OTHER, f"{OTHER}/1", ttl_ms))[0]
        await deliverer._round(HELD_PER_LANE)  # (back: it sees the lease gone)
        assert deliverer._leases == {}
        # ...and hands it back, as this node is preferred; then the room goes on.
        await queue.release(0, OTHER, f"{OTHER}/1", ttl_ms, leaving=True)
        await bus.publish("r", joined("s2"))
        await deliverer.start()  # it takes the lease again (tenure 2); the lanes run
        async with asyncio.timeout(CLAIM_S * 6):
            while len({e["id"] for e in got}) < 4:
                await asyncio.sleep(0.05)
    finally:
        await deliverer.close()
        await bus.close()
    order = [(e["type"], e["payload"].get("session_id")) for e in got]
    assert order == [
        ("meeting.started", None),
        ("participant.joined", "s0"),
        ("participant.joined", "s1"),
        ("participant.joined", "s2"),
    ]
