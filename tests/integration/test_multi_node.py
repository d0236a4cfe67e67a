"""Multi-node behaviour that needs nodes to die: kill -9, SIGTERM. Three nodes on one Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from deploy.local.servers import RedisServer
from roomstate.bus.redis.bus import RedisBus
from roomstate.sdk.client import CallClient, RestClient, Unavailable
from roomstate.settings import Settings

from .conftest import FAST, NodeProcess, start_node
from .deployments import Deployment, start_deployment

pytestmark = pytest.mark.integration


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[Deployment]:
    # A 3 s resume window: short enough to wait out, long enough for a resume on a busy machine.
    deployment = start_deployment("3-nodes-redis", tmp_path, {"ROOMSTATE_RESUME_GRACE_S": "3"})
    yield deployment
    deployment.stop()


async def spread(
    deployment: Deployment, room: str, per_node: int, made: list[CallClient]
) -> list[list[CallClient]]:
    """`per_node` participants joined through each node, grouped by node."""
    groups: list[list[CallClient]] = []
    for process in deployment.nodes:
        group = []
        for _ in range(per_node):
            client = CallClient()
            made.append(client)
            await client.join(process.room_url(room))
            group.append(client)
        groups.append(group)
    return groups


async def wait_for_leaves(watchers: list[CallClient], sids: set[str], timeout: float) -> None:
    """Until every watcher has seen every one of `sids` leave."""
    async with asyncio.timeout(timeout):
        while not all(
            sids <= {e["participant"]["session_id"] for e in w.events("participant-left")}
            for w in watchers
        ):
            await asyncio.sleep(0.05)


async def resume_after_a_drop(
    client: CallClient, sender: CallClient, url: str, missed: Any
) -> dict[str, Any]:
    """`client` drops, `sender` sends `missed` meanwhile, `client` resumes through `url` (a
    room URL): the `joined` reply."""
    token = client.resume_token
    await client.close()
    await sender.send_app_message(missed)
    return await client.join(url, resume=token)


async def test_a_killed_nodes_participants_leave_within_8_s_and_no_one_else(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    groups = await spread(three_nodes, room, 3, clients)
    victims = {c.session_id for c in groups[1]}
    survivors = groups[0] + groups[2]
    async with asyncio.timeout(5):
        while not all(len(c.participants()) == 9 for c in survivors):
            await asyncio.sleep(0.02)

    killed_at = time.monotonic()
    os.kill(three_nodes.nodes[1].proc.pid, signal.SIGKILL)
    await wait_for_leaves(survivors, {sid for sid in victims if sid}, timeout=8)
    elapsed = time.monotonic() - killed_at
    print(f"\nghost removal after kill -9: {elapsed:.2f} s")  # reported in the issue notes
    await asyncio.sleep(1.5)  # a second lease round: nobody else may go
    for watcher in survivors:
        left = watcher.events("participant-left")
        assert {e["participant"]["session_id"] for e in left} == victims
        assert {e["reason"] for e in left} == {"node-lost"}
        assert len(watcher.participants()) == 6


async def test_sigterm_makes_a_nodes_participants_leave_within_1_s(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    groups = await spread(three_nodes, room, 2, clients)
    leaving = {c.session_id for c in groups[2] if c.session_id}
    watchers = groups[0] + groups[1]
    sent_at = time.monotonic()
    three_nodes.nodes[2].proc.send_signal(signal.SIGTERM)
    await wait_for_leaves(watchers, leaving, timeout=1.0)
    print(f"\ngraceful leave after SIGTERM: {time.monotonic() - sent_at:.3f} s")
    for client in groups[2]:
        closed: Any = await client.next_event("left-meeting", timeout=5)
        assert closed["closeCode"] == 1012
    assert three_nodes.nodes[2].proc.wait(10) == 0


async def test_state_survives_a_redis_restart_without_persistence(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    """Redis loses everything; the nodes notice (shard epochs), merge their replicas back
    (anti-entropy), and a late joiner and every client see the whole state again."""
    groups = await spread(three_nodes, room, 1, clients)
    a, b, c = (group[0] for group in groups)
    await a.set_user_data({"name": "a"})
    await b.set_meeting_session_data({"topic": "before"})
    await c.set_meeting_session_data({"c": 1}, "shallow-merge")
    redis = three_nodes.stop_list[0]
    store = RedisBus(Settings(redis=redis.url))  # type: ignore[attr-defined]
    restarted_at = time.monotonic()
    redis.kill()  # type: ignore[attr-defined]
    redis.restart()  # type: ignore[attr-defined]
    await store.start()
    async with asyncio.timeout(15):
        while True:
            stored = (await store.snapshot(room)).state
            if (
                stored.session_data.value() == {"topic": "before", "c": 1}
                and len(stored.present()) == 3
            ):
                break
            await asyncio.sleep(0.05)
    print(f"\nstate back in Redis after its restart: {time.monotonic() - restarted_at:.2f} s")
    user_data = stored.present()[a.session_id or ""].user_data
    assert user_data is not None and user_data.value == {"name": "a"}
    await store.close()
    late = CallClient()
    clients.append(late)
    await late.join(three_nodes.nodes[1].room_url(room + ""))
    # Until a's node has registered its lease in the new Redis (its next renewal), the store
    # fences its writes and the client gets the retryable `unavailable`: retry, as a client does.
    async with asyncio.timeout(5):
        while True:
            try:
                await a.set_meeting_session_data({"topic": "after"}, "shallow-merge")
                break
            except Unavailable as exc:
                assert "FENCED" in str(exc) or "lease" in str(exc), exc
                await asyncio.sleep(0.1)
    for client in (a, b, c, late):
        await client.next_event(
            "meeting-session-state-updated",
            timeout=5,
            predicate=lambda e: e["meetingSessionState"]["data"] == {"topic": "after", "c": 1},
        )


async def test_while_redis_is_down_writes_get_an_error_and_readyz_fails(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    groups = await spread(three_nodes, room, 1, clients)
    writer = groups[0][0]
    await writer.set_user_data({"before": True})
    redis = three_nodes.stop_list[0]
    redis.pause()  # type: ignore[attr-defined]  # unreachable, as a partition would make it
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="not stored"):
            await writer.set_meeting_session_data({"lost": True})
        print(f"\nwrite refused after {time.monotonic() - started:.2f} s with Redis unreachable")
        assert time.monotonic() - started < 2.0
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(5):
                while True:
                    async with http.get(f"{three_nodes.nodes[0].url}/readyz") as response:
                        if response.status == 503:
                            break
                    await asyncio.sleep(0.1)
            # REST says "retry later" too: 503, not 400 or 500.
            url = f"{three_nodes.nodes[0].url}/v1/rooms/{room}/session-data"
            async with http.post(url, json={"data": {"rest": True}}) as response:
                assert response.status == 503
                assert (await response.json())["error"] == "unavailable"
    finally:
        redis.resume()  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        while True:
            try:
                await writer.set_meeting_session_data({"after": True})
                break
            except Unavailable:
                await asyncio.sleep(0.2)
    other = groups[1][0]
    await other.next_event(
        "meeting-session-state-updated",
        predicate=lambda e: e["meetingSessionState"]["data"] == {"after": True},
    )


async def test_resume_on_another_node_keeps_the_session_and_replays_missed_messages(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    groups = await spread(three_nodes, room, 1, clients)
    a, b, c = (group[0] for group in groups)
    await a.set_user_data({"kept": True})
    await b.send_app_message("seen before")
    await a.next_event("app-message")
    sid, token = a.session_id, a.resume_token
    await a.close()  # the network drops; the grace period here is 3 s
    for n in range(5):
        await b.send_app_message({"missed": n})
    await c.set_meeting_session_data({"while": "away"})
    started = time.monotonic()
    reply = await a.join(three_nodes.nodes[2].room_url(room), resume=token)
    replayed = [(await a.next_event("app-message"))["data"] for _ in range(5)]
    print(f"\nresumed on another node, 5 messages replayed, in {time.monotonic() - started:.3f} s")
    assert (reply["sessionId"], reply["resumed"], reply["replayed"]) == (sid, True, True)
    assert replayed == [{"missed": n} for n in range(5)]
    assert a.participants()["local"]["userData"] == {"kept": True}
    assert a.meeting_session_state() == {"data": {"while": "away"}}
    await b.send_app_message("after")
    assert (await a.next_event("app-message"))["data"] == "after"
    await asyncio.sleep(3.5)  # past the grace period: nobody saw a leave or a join
    for other in (b, c):
        assert other.events("participant-left") == [], "no leave for a resumed participant"
        joins = [e["participant"]["session_id"] for e in other.events("participant-joined")]
        # `joined` goes out before the join is stored, so a participant-joined for `a` may
        # still come after the others' own joins; a resume must not add a second one.
        assert joins.count(sid) <= 1, "no join flicker on resume"


async def test_a_resume_after_the_grace_period_is_a_fresh_join(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    groups = await spread(three_nodes, room, 1, clients)
    a, b = groups[0][0], groups[1][0]
    sid, token = a.session_id, a.resume_token
    await a.close()
    left = await b.next_event("participant-left", timeout=5)
    assert (left["participant"]["session_id"], left["reason"]) == (sid, "disconnected")
    reply = await a.join(three_nodes.nodes[1].room_url(room), resume=token)
    assert reply["resumed"] is False and reply["sessionId"] != sid
    assert "replayed" not in reply


async def test_a_gap_beyond_the_log_gives_a_snapshot_and_says_nothing_was_replayed(
    tmp_path: Path, room: str, clients: list[CallClient]
) -> None:
    deployment = start_deployment("3-nodes-redis", tmp_path, {"ROOMSTATE_RESUME_GRACE_S": "60"})
    try:
        groups = await spread(deployment, room, 1, clients)
        a, b = groups[0][0], groups[1][0]
        await b.send_app_message("first")
        await a.next_event("app-message")
        token = a.resume_token
        await a.close()
        async with RestClient(deployment.nodes[1].url) as rest:
            for n in range(1300):  # the log keeps about the last 1,000
                await rest.send_app_message(room, n, recipient=b.session_id or "")
            await rest.set_session_data(room, {"state": "latest"})
        reply = await a.join(deployment.nodes[2].room_url(room), resume=token)
        assert (reply["resumed"], reply["replayed"]) == (True, False)
        assert reply["meetingSessionState"] == {"data": {"state": "latest"}}
        await asyncio.sleep(0.3)
        assert [e["data"] for e in a.events("app-message")] == ["first"], "no partial replay"
        # The next drop replays again: the client resumes from that joined's position, not
        # from its last app message, which the log no longer holds.
        reply = await resume_after_a_drop(a, b, deployment.nodes[1].room_url(room), "after the gap")
        assert (reply["resumed"], reply["replayed"]) == (True, True)
        assert (await a.next_event("app-message"))["data"] == "after the gap"
    finally:
        deployment.stop()


async def test_a_paused_node_fences_itself_and_no_ghost_comes_back(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    groups = await spread(three_nodes, room, 1, clients)
    a, paused, c = (group[0] for group in groups)
    process = three_nodes.nodes[1].proc
    process.send_signal(signal.SIGSTOP)
    try:
        left = await a.next_event("participant-left", timeout=10)
        assert (left["participant"]["session_id"], left["reason"]) == (
            paused.session_id,
            "node-lost",
        )
    finally:
        process.send_signal(signal.SIGCONT)
    closed = await paused.next_event("left-meeting", timeout=5)
    assert closed["closeCode"] in (4001, 4002), closed  # removed / fenced: either cuts it off
    await asyncio.sleep(2.0)
    for survivor in (a, c):
        assert paused.session_id not in survivor.participants(), "no ghost came back"
    fresh = CallClient()
    clients.append(fresh)
    await fresh.join(three_nodes.nodes[1].room_url(room))  # the fenced node serves again
    assert {a.session_id, c.session_id} <= set(fresh.participants())
    assert paused.session_id not in fresh.participants()


async def test_resume_replays_what_was_missed_even_with_no_message_before_the_drop(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    """`joined` carries the log position its snapshot stands at: the start for `resumeAfter`."""
    groups = await spread(three_nodes, room, 1, clients)
    a, b = groups[0][0], groups[1][0]
    assert a.last_seq is not None
    url = three_nodes.nodes[1].room_url(room)
    reply = await resume_after_a_drop(a, b, url, "while you were away")
    assert (reply["resumed"], reply["replayed"]) == (True, True)
    assert (await a.next_event("app-message"))["data"] == "while you were away"


async def test_a_resume_on_another_node_cuts_off_the_old_connection_still_open(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    """A client resumes elsewhere while its old socket still looks open (it switched networks
    before the old one timed out): the old node closes that socket with 4003, as a resume on the
    same node does, and the session goes on through the new one."""
    groups = await spread(three_nodes, room, 1, clients)
    a, b = groups[0][0], groups[1][0]
    again = CallClient()
    clients.append(again)
    reply = await again.join(three_nodes.nodes[2].room_url(room), resume=a.resume_token)
    assert (reply["sessionId"], reply["resumed"]) == (a.session_id, True)
    closed = await a.next_event("left-meeting", timeout=5)
    assert closed["closeCode"] == 4003, closed
    await b.send_app_message("after the move")
    assert (await again.next_event("app-message"))["data"] == "after the move"
    await asyncio.sleep(3.5)  # past the resume grace: a wrong "disconnected" leave comes then
    assert b.events("participant-left") == [], "the session stayed in the room"
    assert a.session_id in b.participants()


async def test_a_rest_write_through_a_node_not_hosting_the_room_is_newer_than_the_stored_one(
    tmp_path: Path, room: str
) -> None:
    """A node that answers a REST write for a room it does not host stamps it after everything
    in the room's snapshot, even with its clock behind the node that wrote last (within the
    drift bound): the write is not lost to an older-looking stamp."""
    redis = RedisServer.start(tmp_path)
    nodes: list[NodeProcess] = []
    try:
        for name, offset in (("ahead", "400"), ("behind", "0")):
            env = {**FAST, "ROOMSTATE_NODE_ID": name, "ROOMSTATE_CLOCK_OFFSET_MS": offset}
            nodes.append(start_node(tmp_path, env, "--redis", redis.url))
        ahead, behind = nodes
        async with RestClient(ahead.url) as first, RestClient(behind.url) as second:
            await first.set_session_data(room, {"v": 1})
            assert await second.set_session_data(room, {"v": 2}) == {"data": {"v": 2}}
            assert await first.get_session_data(room) == {"data": {"v": 2}}
    finally:
        for process in nodes:
            process.stop()
        redis.stop()


async def test_a_writer_gets_its_ack_before_any_session_update_that_has_its_write(
    tmp_path: Path, room: str
) -> None:
    """The SDKs fold an acknowledged session-data write into the state they last got from the
    node. So no `meeting-session-state-updated` that already reflects the write may reach the
    writer before its `ack`: folded in after it, the write would undo newer writes of others
    in the writer's view. Here the batched update falls due while the write waits for Redis
    (writes paused with `CLIENT PAUSE ... WRITE`)."""
    deployment = start_deployment("redis", tmp_path)  # FAST: updates batched at 300 ms
    redis = deployment.stop_list[0]
    assert isinstance(redis, RedisServer)
    try:
        ws_url = deployment.nodes[0].ws_url(room)
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:

            async def request(frame: dict[str, Any]) -> None:
                await ws.send_str(orjson.dumps(frame).decode())

            async def frames_until(kind: str, request_id: int) -> list[dict[str, Any]]:
                seen = []
                while not seen or (seen[-1]["type"], seen[-1].get("id")) != (kind, request_id):
                    seen.append(orjson.loads((await ws.receive(timeout=5)).data))
                return seen

            await request({"type": "join", "id": 1})
            await frames_until("joined", 1)
            await request({"type": "set-meeting-session-data", "id": 2, "data": {"n": 1}})
            await frames_until("ack", 2)  # the first write's update goes out at once
            # The next one is batched: its update is due 300 ms after the first
            # (ROOMSTATE_SESSION_DATA_INTERVAL_MS), while this write waits for Redis.
            redis.command("CLIENT", "PAUSE", "700", "WRITE")
            await request({"type": "set-meeting-session-data", "id": 3, "data": {"n": 2}})
            before_ack = await frames_until("ack", 3)
            updates = [
                f["meetingSessionState"]["data"]
                for f in before_ack
                if f["type"] == "meeting-session-state-updated"
            ]
            assert {"n": 2} not in updates, before_ack
            later = orjson.loads((await ws.receive(timeout=5)).data)
            assert later == {
                "type": "meeting-session-state-updated",
                "meetingSessionState": {"data": {"n": 2}},
            }
    finally:
        deployment.stop()
