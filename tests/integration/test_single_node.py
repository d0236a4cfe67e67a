"""The three mechanisms end to end, through the Python client SDK, on every deployment.

The same tests run on one node with the in-memory bus, one node + Redis, three nodes + Redis,
and three nodes + Redis Cluster behind haproxy, with each room's participants spread over the
nodes (tests/integration/deployments.py). Nodes run with a 300 ms session-data interval and a
1.5 s room grace (conftest.FAST) to keep the suite fast; the rules do not depend on them.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from roomstate.sdk.client import CallClient, RestClient, TooLarge

from .deployments import TOPOLOGIES, Deployment, start_deployment

pytestmark = pytest.mark.integration
NodeProcess = Deployment  # the tests below take a deployment as their `node`


@pytest.fixture(scope="module", params=TOPOLOGIES)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    deployment = start_deployment(request.param, tmp_path_factory.mktemp(request.param))
    yield deployment
    deployment.stop()


SESSION_INTERVAL_S = 0.3  # ROOMSTATE_SESSION_DATA_INTERVAL_MS in conftest.FAST
USER_DATA_INTERVAL_S = 0.1  # the default


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    """`await join(node, room, **kwargs)` makes a joined client; all are closed at the end."""
    made: list[CallClient] = []

    async def join(node: NodeProcess, room: str, **kwargs: Any) -> CallClient:
        client = CallClient()
        made.append(client)
        await client.join(node.room_url(room), **kwargs)
        return client

    yield join
    for client in made:
        await client.close()


async def quiet(seconds: float = 0.3) -> None:
    """Let in-flight frames arrive (only where a test checks that something did NOT arrive)."""
    await asyncio.sleep(seconds)


# -- 1. joined --


async def test_joined_carries_everyone_with_user_data_and_the_session_data(
    node: NodeProcess, room: str, clients: Any
) -> None:
    ann = await clients(node, room, user_name="ann", user_data={"role": "host"})
    await ann.set_meeting_session_data({"topic": "CRDTs"})
    bob = await clients(node, room, user_name="bob", user_data={"role": "audience"})
    seen = bob.participants()
    assert seen["local"]["user_name"] == "bob"
    assert seen[ann.session_id]["userData"] == {"role": "host"}
    assert bob.meeting_session_state() == {"data": {"topic": "CRDTs"}}


# -- 2. app messages --


async def test_broadcast_reaches_every_other_participant_never_the_sender(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b, c = [await clients(node, room) for _ in range(3)]
    await a.send_app_message({"n": 1})
    for other in (b, c):
        event = await other.next_event("app-message")
        assert event == {"action": "app-message", "data": {"n": 1}, "fromId": a.session_id}
    await quiet()
    assert a.events("app-message") == []


async def test_app_message_to_one_id_and_to_a_list_with_unknown_ids(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b, c, d = [await clients(node, room) for _ in range(4)]
    await a.send_app_message("for b", to=b.session_id)
    await a.send_app_message("for c and d", to=[c.session_id, "no-such-id", d.session_id])
    assert (await b.next_event("app-message"))["data"] == "for b"
    assert (await c.next_event("app-message"))["data"] == "for c and d"
    assert (await d.next_event("app-message"))["data"] == "for c and d"
    await quiet()
    assert [e["data"] for e in b.events("app-message")] == ["for b"]
    assert [e["data"] for e in c.events("app-message")] == ["for c and d"]


async def test_messages_from_one_sender_arrive_in_send_order(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    # 150 at once: within the rate limit's burst (200, less the join's token), which at 200
    # refused the last one whenever no token came back while the burst went out
    await asyncio.gather(*(a.send_app_message(i) for i in range(150)))
    for i in range(150):
        assert (await b.next_event("app-message"))["data"] == i


async def test_a_late_joiner_never_receives_earlier_messages(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    await a.send_app_message("before")
    await b.next_event("app-message")
    late = await clients(node, room)
    await a.send_app_message("after")
    assert (await late.next_event("app-message"))["data"] == "after"
    assert [e["data"] for e in late.events("app-message")] == ["after"]


async def test_an_app_message_over_4096_bytes_is_too_large(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    with pytest.raises(TooLarge, match="app message data is 4100 bytes; the limit is 4096"):
        await a.send_app_message("x" * 4098)
    await a.send_app_message("x" * 4094)  # 4096 bytes with the quotes: accepted
    assert len((await b.next_event("app-message"))["data"]) == 4094


# -- 3. userData --


async def test_user_data_reaches_the_others_and_late_joiners(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    await a.set_user_data({"hand": True})
    assert a.participants()["local"]["userData"] == {"hand": True}
    event = await b.next_event("participant-updated")
    assert event["participant"]["session_id"] == a.session_id
    assert event["participant"]["userData"] == {"hand": True}
    late = await clients(node, room)
    assert late.participants()[a.session_id]["userData"] == {"hand": True}
    await quiet()
    assert a.events("participant-updated") == [], "the writer gets an ack, not an event"


async def test_fifty_updates_in_a_burst_reach_the_others_as_at_most_two_events(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    started = time.monotonic()
    await asyncio.gather(*(a.set_user_data({"n": i}) for i in range(50)))
    elapsed = time.monotonic() - started
    last = await b.next_event(
        "participant-updated", predicate=lambda e: e["participant"]["userData"] == {"n": 49}
    )
    assert last["participant"]["userData"] == {"n": 49}
    await quiet()
    updates = b.events("participant-updated")
    # At most one event per 100 ms window: 2 for a burst shorter than 100 ms.
    allowed = 1 + max(1, math.ceil(elapsed / USER_DATA_INTERVAL_S))
    assert len(updates) <= allowed, (len(updates), elapsed)
    assert updates[-1]["participant"]["userData"] == {"n": 49}


async def test_user_data_over_4096_bytes_is_too_large_and_changes_nothing(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a = await clients(node, room, user_data={"v": 1})
    with pytest.raises(TooLarge, match="userData is 5002 bytes; the limit is 4096"):
        await a.set_user_data("y" * 5000)
    late = await clients(node, room)
    assert late.participants()[a.session_id]["userData"] == {"v": 1}


async def test_two_refused_user_data_writes_in_a_row_leave_the_value_the_node_has(
    node: NodeProcess, room: str, clients: Any
) -> None:
    """The client shows a write at once and undoes it if refused; with two in flight, both
    refused, it must come back to what the node has, not to the first refused value."""
    a = await clients(node, room, user_data={"v": 1})
    writes = [asyncio.ensure_future(a.set_user_data(c * 5000)) for c in "xy"]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(o, TooLarge) for o in outcomes), outcomes
    assert a.participants()["local"]["userData"] == {"v": 1}


async def test_no_frame_lets_a_participant_write_another_participants_user_data(
    node: NodeProcess, room: str, clients: Any, http: aiohttp.ClientSession
) -> None:
    victim = await clients(node, room, user_data={"mine": True})
    attacker = await http.ws_connect(node.ws_url(room))
    await attacker.send_str('{"type":"join","id":1}')
    joined = orjson.loads((await attacker.receive(timeout=5)).data)
    assert joined["type"] == "joined", joined
    forged = (
        '{"type":"set-user-data","id":2,"data":{"pwned":1},'
        f'"session_id":"{victim.session_id}","sessionId":"{victim.session_id}",'
        f'"participant":"{victim.session_id}"}}'
    )
    await attacker.send_str(forged)
    while True:  # its reply: the write is done (it set the attacker's own userData)
        reply = orjson.loads((await attacker.receive(timeout=5)).data)
        if reply.get("id") == 2:
            break
    assert reply["type"] == "ack", reply
    late = await clients(node, room)
    assert late.participants()[victim.session_id]["userData"] == {"mine": True}
    await attacker.close()


# -- 4. session data --


async def test_replace_shallow_merge_and_keys_to_delete(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    await a.set_meeting_session_data({"x": 1, "y": 2})
    assert a.meeting_session_state() == {"data": {"x": 1, "y": 2}}, "local state changes at once"
    await a.set_meeting_session_data({"z": 3}, merge_strategy="shallow-merge")
    await a.set_meeting_session_data({}, "shallow-merge", keys_to_delete=["x"])
    expected = {"y": 2, "z": 3}
    for client in (a, b):
        await client.next_event(
            "meeting-session-state-updated",
            predicate=lambda e: e["meetingSessionState"]["data"] == expected,
        )
    await a.set_meeting_session_data({"only": True})
    await b.next_event(
        "meeting-session-state-updated",
        predicate=lambda e: e["meetingSessionState"]["data"] == {"only": True},
    )


async def test_session_events_are_batched_to_one_per_interval_including_the_writer(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    arrivals: list[float] = []
    b.on("meeting-session-state-updated", lambda event: arrivals.append(time.monotonic()))
    for i in range(30):
        await a.set_meeting_session_data({f"k{i}": i}, merge_strategy="shallow-merge")
    final = {f"k{i}": i for i in range(30)}
    for client in (a, b):
        await client.next_event(
            "meeting-session-state-updated",
            timeout=5,
            predicate=lambda e: e["meetingSessionState"]["data"] == final,
        )
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap >= SESSION_INTERVAL_S - 0.05 for gap in gaps), gaps
    assert len(arrivals) <= 1 + math.ceil((arrivals[-1] - arrivals[0]) / SESSION_INTERVAL_S)


async def test_a_session_result_over_102400_bytes_is_refused_and_the_state_is_unchanged(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a = await clients(node, room)
    await a.set_meeting_session_data({"big": "x" * 60_000})
    with pytest.raises(TooLarge, match=r"would be 1200\d\d bytes; the limit is 102400"):
        await a.set_meeting_session_data({"more": "y" * 60_000}, merge_strategy="shallow-merge")
    late = await clients(node, room)
    assert late.meeting_session_state()["data"].keys() == {"big"}


async def test_session_data_survives_comings_and_goings_then_is_dropped_after_the_grace(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a = await clients(node, room)
    await a.set_meeting_session_data({"kept": True})
    b = await clients(node, room)
    await a.leave()
    c = await clients(node, room)
    assert c.meeting_session_state() == {"data": {"kept": True}}
    await b.leave()
    await c.leave()
    await asyncio.sleep(2.0)  # the room grace is 1.5 s here
    fresh = await clients(node, room)
    assert fresh.meeting_session_state() == {"data": {}}


# -- 5. leaving --


async def test_leave_and_disconnect_send_participant_left(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b, c = [await clients(node, room) for _ in range(3)]
    await b.leave()
    left = await a.next_event("participant-left")
    assert (left["participant"]["session_id"], left["reason"]) == (b.session_id, "left")
    await c.close()  # drop the socket without a leave
    left = await a.next_event("participant-left")
    assert (left["participant"]["session_id"], left["reason"]) == (c.session_id, "disconnected")
    assert set(a.participants()) == {"local"}


# -- 6. a bad request in one room does not disturb another --


async def test_bad_input_leaves_other_rooms_working(
    node: NodeProcess, room: str, clients: Any, http: aiohttp.ClientSession
) -> None:
    a, b = await clients(node, room), await clients(node, room)
    rogue = await http.ws_connect(node.ws_url(room + "-rogue"))
    for frame in ["{", '{"type":"join","id":1,"userData":' + "[" * 50 + "]" * 50 + "}", "[]"]:
        await rogue.send_str(frame)
    await rogue.send_str('{"type":"ping","pad":"' + "z" * 140_000 + '"}')
    await a.send_app_message("still fine")
    assert (await b.next_event("app-message"))["data"] == "still fine"
    await rogue.close()


# -- 7. REST --


async def test_rest_app_messages_presence_and_session_data(
    node: NodeProcess, room: str, clients: Any
) -> None:
    a, b, c = [await clients(node, room) for _ in range(3)]
    async with RestClient(node.url) as rest:
        await rest.send_app_message(room, {"to": "all"})
        for client in (a, b, c):
            assert await client.next_event("app-message") == {
                "action": "app-message",
                "data": {"to": "all"},
                "fromId": "API",
            }
        await rest.send_app_message(room, "one", recipient=b.session_id)
        await rest.send_app_message(room, "list", recipient=[a.session_id, c.session_id])
        assert (await b.next_event("app-message"))["data"] == "one"
        assert (await a.next_event("app-message"))["data"] == "list"
        assert (await c.next_event("app-message"))["data"] == "list"

        presence = await rest.presence(room)
        assert presence["total_count"] == 3
        assert {p["id"] for p in presence["data"]} == {
            a.session_id,
            b.session_id,
            c.session_id,
        }

        await rest.set_session_data(room, {"from": "server"})
        await rest.set_session_data(room, {"more": 1}, merge_strategy="shallow-merge")
        # Through haproxy each call may reach another node: replicas converge, not at once.
        expected = {"data": {"from": "server", "more": 1}}
        async with asyncio.timeout(5):
            while await rest.get_session_data(room) != expected:
                await asyncio.sleep(0.05)
        await b.next_event(
            "meeting-session-state-updated",
            predicate=lambda e: e["meetingSessionState"]["data"] == {"from": "server", "more": 1},
        )


@pytest.mark.parametrize(
    ("path", "body", "info"),
    [
        ("send-app-message", b"{nope", "not JSON"),
        ("send-app-message", b"[]", "JSON object"),
        ("send-app-message", b"{}", "'data' is required"),
        ("send-app-message", b'{"data":1,"recipient":7}', "'recipient' must be"),
        ("session-data", b'{"data":[1]}', "must be a JSON object"),
        ("session-data", b'{"data":{},"mergeStrategy":"deep"}', "'mergeStrategy' must be"),
        # nesting: held to the frames' limit (orjson would fail to encode it back at ~255)
        ("send-app-message", b'{"data":' + b"[" * 300 + b"]" * 300 + b"}", "deeper than 32"),
        ("session-data", b'{"data":{"x":' + b"[" * 40 + b"]" * 40 + b"}}", "deeper than 32"),
        ("session-data", b'{"data":' + b"[" * 2000 + b"]" * 2000 + b"}", "deeper than 32"),
        (
            "send-app-message",
            orjson.dumps({"data": 1, "recipient": [f"s{n}" for n in range(257)]}),
            "'recipient' lists 257 session ids; the limit is 256",
        ),
        ("send-app-message", orjson.dumps({"data": 1, "recipient": "s" * 65}), "1-64 characters"),
    ],
)
async def test_rest_bad_bodies_get_400_with_a_clear_message(
    node: NodeProcess, room: str, http: aiohttp.ClientSession, path: str, body: bytes, info: str
) -> None:
    async with http.post(f"{node.url}/v1/rooms/{room}/{path}", data=body) as response:
        assert response.status == 400
        reply = await response.json()
        assert reply["error"] == "invalid-request-error" and info in reply["info"], reply


async def test_rest_to_a_room_with_nobody_in_it(node: NodeProcess, room: str) -> None:
    async with RestClient(node.url) as rest:
        assert await rest.send_app_message(room, "anyone?") == {"sent": True}
        assert (await rest.presence(room))["total_count"] == 0
        assert await rest.get_session_data(room) == {"data": {}}


async def test_a_rooms_participants_are_spread_over_the_nodes(
    node: NodeProcess, room: str, clients: Any, http: aiohttp.ClientSession
) -> None:
    """Guards the premise of the suite: on a multi-node deployment, rooms span nodes."""
    joined = [await clients(node, room) for _ in range(6)]
    per_node = []
    for process in node.nodes:
        async with http.get(f"{process.url}/metrics") as response:
            text = await response.text()
        line = next(x for x in text.splitlines() if x.startswith("roomstate_connections "))
        per_node.append(float(line.split()[1]))
    assert sum(per_node) >= len(joined)
    assert all(count >= 1 for count in per_node), per_node
