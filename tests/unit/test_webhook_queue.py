"""The in-memory bus records webhook events as the PUBLISH script does, and its queue hands each
out once, takes over stale ones, and keeps and replays dead letters (roomstate.webhooks.queue).
The Redis twin runs the same steps in tests/integration/test_webhooks_bus.py."""

from __future__ import annotations

import time

import orjson
import pytest

from roomstate.bus import MemoryBus
from roomstate.crdt import RoomState, Stamp
from roomstate.webhooks.delivery import retry_delay_s
from roomstate.webhooks.events import Recorded, to_event
from roomstate.webhooks.queue import MemoryWebhookQueue, WebhookQueue, preferred
from roomstate.wire.events import BusEvent

ORIGIN = "n1/inc"


def joined(sid: str, name: str, ms: int = 1_000) -> BusEvent:
    info = {"user_name": name, "user_id": f"u-{name}", "joined_at": ms}
    delta = RoomState().join(sid, info, {"node": "n1"}, None, Stamp(ms, 0, "n1"))
    return BusEvent(ORIGIN, ms, delta)


def left(sid: str, reason: str) -> BusEvent:
    return BusEvent(ORIGIN, 2_000, RoomState(removed={sid}), reason=reason)


async def take(queue: WebhookQueue, consumer: str = "c1", count: int = 100) -> list[Recorded]:
    """What waits, read as the holder of the (one) shard's lease."""
    assert (await queue.hold(0, consumer, consumer, 60_000))[0]
    return await queue.read(0, consumer, count)


async def kinds(bus: MemoryBus) -> list[tuple[str, str, str]]:
    taken = await take(bus.webhook_queue)
    return [(r.fields["k"], r.fields.get("s", ""), r.fields.get("w", "")) for r in taken]


async def test_joins_leaves_and_the_meeting_start_are_recorded_once() -> None:
    bus = MemoryBus(room_grace_s=60)
    bus.webhooks = True
    await bus.publish("demo", joined("a", "ann"))
    await bus.publish("demo", joined("a", "ann"))  # merged again (another node): no new join
    await bus.publish("demo", joined("b", "bob"))
    await bus.publish("demo", left("a", "node-lost"))
    await bus.publish("demo", left("a", "node-lost"))  # a second remover: nothing more
    assert await kinds(bus) == [
        ("s", "", ""),
        ("j", "a", ""),
        ("j", "b", ""),
        ("l", "a", "node-lost"),
    ]
    await bus.close()


async def test_a_left_event_carries_the_info_the_store_held() -> None:
    bus = MemoryBus(room_grace_s=60)
    bus.webhooks = True
    await bus.publish("demo", joined("a", "ann"))
    await bus.publish("demo", left("a", "ejected"))
    [leave] = [r for r in await take(bus.webhook_queue) if r.fields["k"] == "l"]
    event = to_event(leave, int(time.time() * 1000))
    assert event["type"] == "participant.left"
    assert event["payload"]["user_name"] == "ann"
    assert event["payload"]["reason"] == "ejected"
    assert orjson.loads(leave.fields["i"])["user_id"] == "u-ann"
    await bus.close()


async def test_a_meeting_ends_once_its_room_emptied_and_nobody_came_back() -> None:
    bus = MemoryBus(room_grace_s=60)
    bus.webhooks = True
    await bus.publish("demo", joined("a", "ann"))
    await bus.publish("demo", left("a", "left"))
    await bus.publish("demo", joined("b", "bob"))  # within the grace: the same meeting
    await bus.publish("demo", left("b", "left"))
    recorded = await take(bus.webhook_queue)
    assert [r.fields["k"] for r in recorded] == ["s", "j", "l", "e", "j", "l", "e"]
    ends = [r for r in recorded if r.fields["k"] == "e"]
    assert len({r.id for r in ends}) == 1, "one meeting, one meeting.ended id"
    started = recorded[0].fields["m"]
    assert await bus.webhook_queue.meeting("demo") == (started, 0)  # in its grace
    bus._expire("demo")  # the grace passed
    assert await bus.webhook_queue.meeting("demo") == (None, 0)
    await bus.close()


def data(values: dict[str, int], ms: int) -> BusEvent:
    return BusEvent(ORIGIN, ms, RoomState().merge_session_data(values, Stamp(ms, 0, "n1")))


async def test_session_data_changes_coalesce_until_a_delivery_reads_them() -> None:
    bus = MemoryBus(room_grace_s=60)
    bus.webhooks = True
    await bus.publish("demo", data({"poll": 1}, 1_000))
    await bus.publish("demo", data({"poll": 2}, 1_001))
    assert [r.fields["k"] for r in await take(bus.webhook_queue)] == ["d"]
    assert await bus.webhook_queue.session_data("demo") == {"poll": 2}
    await bus.publish("demo", data({"agenda": 3}, 1_002))  # after the read: recorded again
    assert [r.fields["k"] for r in await take(bus.webhook_queue)] == ["d"]
    assert await bus.webhook_queue.session_data("demo") == {"poll": 2, "agenda": 3}
    await bus.close()


async def test_nothing_is_recorded_with_webhooks_off() -> None:
    bus = MemoryBus(room_grace_s=60)
    await bus.publish("demo", joined("a", "ann"))
    assert await take(bus.webhook_queue) == []
    await bus.close()


async def test_the_lease_goes_to_the_preferred_member_and_only_its_holder_reads() -> None:
    queue = MemoryWebhookQueue()
    for i in range(3):
        queue.record({"k": "j", "r": "demo", "s": str(i)})
    members = ["n1", "n2", "n3"]
    first = preferred(members, queue.SALT)
    others = [m for m in members if m != first]
    assert await queue.hold(0, others[0], f"{others[0]}/1", 60_000) == (True, True)  # alone
    assert (await queue.hold(0, others[1], f"{others[1]}/1", 60_000))[0] is False
    assert await queue.hold(0, str(first), f"{first}/1", 60_000) == (False, True)
    assert await queue.hold(0, others[0], f"{others[0]}/1", 60_000) == (True, False)  # to hand on
    assert await queue.read(0, f"{first}/1", 10) == []  # held by others[0]
    taken = await queue.read(0, f"{others[0]}/1", 2)
    assert [r.fields["s"] for r in taken] == ["0", "1"]
    # the holder hands it on (nothing in hand): the preferred one takes it and what was pending
    await queue.release(0, others[0], f"{others[0]}/1", 60_000, leaving=False)
    assert await queue.hold(0, str(first), f"{first}/1", 60_000) == (True, True)
    claimed, caught_up = await queue.claim(0, f"{first}/1", 60_000, 10)
    assert [r.fields["s"] for r in claimed] == ["0", "1"] and caught_up
    assert [r.fields["s"] for r in await queue.read(0, f"{first}/1", 10)] == ["2"]
    assert await queue.backlog() == 3


def test_rendezvous_moves_only_the_shards_of_a_member_that_comes_or_goes() -> None:
    three = {f"s{k}": preferred(["a", "b", "c"], f"s{k}") for k in range(64)}
    two = {f"s{k}": preferred(["a", "b"], f"s{k}") for k in range(64)}
    assert {three[s] for s in three} == {"a", "b", "c"}
    assert all(two[s] == three[s] for s in three if three[s] != "c")


async def test_a_dead_letter_is_kept_and_replayed_with_its_first_id() -> None:
    queue = MemoryWebhookQueue()
    queue.record({"k": "j", "r": "demo", "s": "a"})
    [recorded] = await take(queue, count=1)
    await queue.dead_letter(recorded, "http://x answered 500")
    [dead] = await queue.dead_letters(10)
    assert dead.error == "http://x answered 500" and dead.recorded == recorded
    assert await queue.backlog() == 0
    assert await queue.replay(dead.id)
    assert not await queue.replay(dead.id)
    [again] = await take(queue, count=1)
    assert again.position != recorded.position and again.id == recorded.id
    assert await queue.dead_letters(10) == []


@pytest.mark.parametrize(("attempt", "low", "high"), [(0, 0.25, 0.5), (3, 2.0, 4.0), (20, 5, 10)])
def test_retries_back_off_to_a_ceiling(attempt: int, low: float, high: float) -> None:
    assert retry_delay_s(attempt, 30.0, 0.0) == low
    assert retry_delay_s(attempt, 30.0, 0.999999) == pytest.approx(high, rel=1e-3)


def test_a_retry_waits_less_than_half_the_claim_timeout() -> None:
    # a node still retrying touches its claim before another node may take it over
    assert retry_delay_s(50, 4.0, 0.999999) <= 2.0
