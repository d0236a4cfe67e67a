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
from roomstate.webhooks.events import to_event
from roomstate.webhooks.queue import MemoryWebhookQueue
from roomstate.wire.events import BusEvent

ORIGIN = "n1/inc"


def joined(sid: str, name: str, ms: int = 1_000) -> BusEvent:
    info = {"user_name": name, "user_id": f"u-{name}", "joined_at": ms}
    delta = RoomState().join(sid, info, {"node": "n1"}, None, Stamp(ms, 0, "n1"))
    return BusEvent(ORIGIN, ms, delta)


def left(sid: str, reason: str) -> BusEvent:
    return BusEvent(ORIGIN, 2_000, RoomState(removed={sid}), reason=reason)


async def kinds(bus: MemoryBus) -> list[tuple[str, str, str]]:
    taken = await bus.webhook_queue.read("c1", 100)
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
    [leave] = [r for r in await bus.webhook_queue.read("c1", 10) if r.fields["k"] == "l"]
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
    recorded = await bus.webhook_queue.read("c1", 10)
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
    assert [r.fields["k"] for r in await bus.webhook_queue.read("c1", 10)] == ["d"]
    assert await bus.webhook_queue.session_data("demo") == {"poll": 2}
    await bus.publish("demo", data({"agenda": 3}, 1_002))  # after the read: recorded again
    assert [r.fields["k"] for r in await bus.webhook_queue.read("c1", 10)] == ["d"]
    assert await bus.webhook_queue.session_data("demo") == {"poll": 2, "agenda": 3}
    await bus.close()


async def test_nothing_is_recorded_with_webhooks_off() -> None:
    bus = MemoryBus(room_grace_s=60)
    await bus.publish("demo", joined("a", "ann"))
    assert await bus.webhook_queue.read("c1", 10) == []
    await bus.close()


async def test_each_event_is_handed_out_once_then_taken_over_when_stale() -> None:
    queue = MemoryWebhookQueue()
    for i in range(3):
        queue.record({"k": "j", "r": "demo", "s": str(i)})
    first = await queue.read("c1", 2)
    rest = await queue.read("c2", 10)
    assert [r.fields["s"] for r in first + rest] == ["0", "1", "2"]
    assert await queue.read("c2", 10) == []
    assert await queue.claim_stale("c2", 60_000, 10) == []  # not idle long enough
    await queue.ack(first[0])
    stale = await queue.claim_stale("c2", 0, 10)
    assert [r.fields["s"] for r in stale] == ["1", "2"]
    assert await queue.backlog() == 2


async def test_a_dead_letter_is_kept_and_replayed_with_its_first_id() -> None:
    queue = MemoryWebhookQueue()
    queue.record({"k": "j", "r": "demo", "s": "a"})
    [recorded] = await queue.read("c1", 1)
    await queue.dead_letter(recorded, "http://x answered 500")
    [dead] = await queue.dead_letters(10)
    assert dead.error == "http://x answered 500" and dead.recorded == recorded
    assert await queue.backlog() == 0
    assert await queue.replay(dead.id)
    assert not await queue.replay(dead.id)
    [again] = await queue.read("c1", 1)
    assert again.position != recorded.position and again.id == recorded.id
    assert await queue.dead_letters(10) == []


@pytest.mark.parametrize(("attempt", "low", "high"), [(0, 0.25, 0.5), (3, 2.0, 4.0), (20, 5, 10)])
def test_retries_back_off_to_a_ceiling(attempt: int, low: float, high: float) -> None:
    assert retry_delay_s(attempt, 30.0, 0.0) == low
    assert retry_delay_s(attempt, 30.0, 0.999999) == pytest.approx(high, rel=1e-3)


def test_a_retry_waits_less_than_half_the_claim_timeout() -> None:
    # a node still retrying touches its claim before another node may take it over
    assert retry_delay_s(50, 4.0, 0.999999) <= 2.0
