"""Webhooks end to end: three real nodes on a real redis-server deliver to a real HTTP receiver
(an aiohttp server in this process): every join, leave and meeting start arrives signed, each
event once after dropping repeats by id; a node killed with -9 while its deliveries are claimed
leaves them to another node; a receiver failing for good sends events to the dead letters."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from deploy.local.servers import RedisCluster, RedisServer, free_port
from roomstate.auth import make_token
from roomstate.bus.redis.keys import SHARDS, webhook_key
from roomstate.sdk.client import CallClient

from .conftest import API_KEY, FAST, NodeProcess, start_node

pytestmark = pytest.mark.integration

KEY = b"webhook-test-key-0123456789abcdef"
SECRET = base64.b64encode(KEY).decode()
LOST = "node-lost"


class Receiver:
    """A backend's webhook endpoint: keeps what it got; answers `status`."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.status = 200
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Webhook-Timestamp", "")
        # The check a backend makes (docs/webhooks.md), written here from the definition.
        mac = hmac.new(KEY, timestamp.encode() + b"." + body, hashlib.sha256).digest()
        if (
            not hmac.compare_digest(
                base64.b64encode(mac).decode(), request.headers.get("X-Webhook-Signature", "")
            )
            or abs(time.time() - int(timestamp)) > 300
        ):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.status != 200:
            return web.Response(status=self.status)
        self.got.append(orjson.loads(body))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def unique(self) -> dict[str, dict[str, Any]]:
        """What arrived, repeats dropped by id."""
        return {event["id"]: event for event in self.got}

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.unique().values() if e["type"] == kind]

    def of(self, kind: str, room: str) -> list[dict[str, Any]]:
        return [
            e for e in self.unique().values() if e["type"] == kind and e["payload"]["room"] == room
        ]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = Receiver()
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path)
    yield server
    server.stop()


def start_nodes(
    tmp: Path,
    redis: RedisServer | RedisCluster,
    receiver: Receiver,
    count: int,
    first: int = 0,
    extra: dict[str, str] | None = None,
    **settings: str,
) -> list[NodeProcess]:
    env = {
        **FAST,
        "ROOMSTATE_WEBHOOK_URL": receiver.url,
        "ROOMSTATE_WEBHOOK_SECRET": SECRET,
        **{f"ROOMSTATE_{k.upper()}": v for k, v in {**(extra or {}), **settings}.items()},
    }
    store = (
        ("--redis", redis.url)
        if isinstance(redis, RedisServer)
        else ("--redis-cluster", redis.seeds)
    )
    return [
        start_node(tmp, {**env, "ROOMSTATE_NODE_ID": f"node-{i}"}, *store)
        for i in range(first, first + count)
    ]


async def wait_for(check: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def pending_of(redis: RedisServer, node_id: str) -> int:
    """Webhook events pending under the consumers of `node_id` (all its incarnations)."""
    total = 0
    for shard in range(SHARDS):
        key = webhook_key(shard)
        if not redis.command("EXISTS", key) or not redis.command("XINFO", "GROUPS", key):
            continue
        consumers: Any = redis.command("XINFO", "CONSUMERS", key, "webhooks") or []
        for consumer in consumers:
            fields = dict(zip(consumer[::2], consumer[1::2], strict=True))
            if str(fields["name"]).startswith(f"{node_id}/"):
                total += int(fields["pending"])
    return total


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer | RedisCluster]:
    started: RedisServer | RedisCluster = (
        RedisServer.start(tmp_path) if request.param == "redis" else RedisCluster.start(tmp_path)
    )
    yield started
    started.stop()


def position(event: dict[str, Any]) -> tuple[int, int]:
    """Where the store recorded `event` in its shard's stream (its id ends with it)."""
    ms, seq = event["id"].rsplit("-", 2)[-2:]
    return int(ms), int(seq)


def assert_in_each_rooms_order(receiver: Receiver) -> None:
    """Each room's events first arrived in the order the store recorded them (but the two
    kinds sent when due: a session-data.updated a second after, a meeting.ended after the
    grace)."""
    rooms: dict[str, list[dict[str, Any]]] = {}
    for event in receiver.unique().values():  # (in the order of their first arrival)
        if event["type"] not in ("session-data.updated", "meeting.ended"):
            rooms.setdefault(event["payload"]["room"], []).append(event)
    for room, events in rooms.items():
        arrived = [(position(e), e["type"]) for e in events]
        assert arrived == sorted(arrived, key=lambda a: a[0]), (room, arrived)


async def test_every_join_leave_and_meeting_start_arrives_signed_once(
    tmp_path: Path, store: RedisServer | RedisCluster, receiver: Receiver
) -> None:
    # (a 2 s claim timeout: a meeting.ended in its room's grace is looked at again that soon)
    timeouts = {"webhook_claim_s": "2", "webhook_timeout_s": "1"}
    nodes = start_nodes(tmp_path, store, receiver, 3, api_key=API_KEY, **timeouts)
    clients = [CallClient() for _ in range(6)]
    try:
        sids: list[str] = []
        for i, client in enumerate(clients):  # user-0 owns the room
            token = make_token(API_KEY, "hooks", user_name=f"user-{i}", owner=i == 0)
            await client.join(nodes[i % 3].room_url("hooks"), token=token)
            sids.append(str(client.session_id))
        await wait_for(lambda: len(receiver.of("participant.joined", "hooks")) == 6, 10)
        for i in range(10):  # coalesced: one session-data.updated a second at most
            await clients[i % 6].set_meeting_session_data({"poll": i})
            await asyncio.sleep(0.05)

        def final_data() -> bool:
            updates = receiver.of("session-data.updated", "hooks")
            return any(u["payload"]["meeting_session_data"] == {"poll": 9} for u in updates)

        await wait_for(final_data, 10)
        await clients[1].leave()
        await clients[0].update_participant(sids[2], {"eject": True})  # held by node-2
        for client in clients[3:5]:
            await client.close()  # dropped: they leave as "disconnected" after resume grace
        await wait_for(lambda: len(receiver.of("participant.left", "hooks")) == 4, 15)
        nodes[2].proc.terminate()  # user-5 leaves with it; it hands its leases on
        assert nodes[2].proc.wait(15) == 0
        await clients[0].leave()
        await wait_for(lambda: len(receiver.of("participant.left", "hooks")) == 6, 15)
        emptied_at = time.time()
        # ended once the room's grace (1.5 s) passed: within a claim timeout or two after
        await wait_for(lambda: receiver.of("meeting.ended", "hooks"), 15)
        await asyncio.sleep(1)  # anything sent twice by then is dropped by id
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            node.stop()
    assert receiver.bad_signatures == 0
    [started] = receiver.of("meeting.started", "hooks")
    assert started["payload"]["meeting_id"].startswith("hooks-")
    [ended] = receiver.of("meeting.ended", "hooks")
    assert ended["payload"]["meeting_id"] == started["payload"]["meeting_id"]
    assert ended["event_ts"] >= emptied_at + 1.5 - 0.5  # not before the grace passed
    updates = sorted(receiver.of("session-data.updated", "hooks"), key=lambda u: u["event_ts"])
    assert 1 <= len(updates) <= 3
    gaps = [b["event_ts"] - a["event_ts"] for a, b in itertools.pairwise(updates)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    joined = receiver.of("participant.joined", "hooks")
    assert sorted(e["payload"]["session_id"] for e in joined) == sorted(sids)
    assert {e["payload"]["user_name"] for e in joined} == {f"user-{i}" for i in range(6)}
    assert [e["payload"]["owner"] for e in joined if e["payload"]["session_id"] == sids[0]] == [
        True
    ]
    left = receiver.of("participant.left", "hooks")
    reasons = {e["payload"]["session_id"]: e["payload"]["reason"] for e in left}
    assert reasons == {
        sids[0]: "left",
        sids[1]: "left",
        sids[2]: "ejected",
        sids[3]: "disconnected",
        sids[4]: "disconnected",
        sids[5]: "node-shutdown",
    }  # ("node-lost": the kill test)
    assert all(e["payload"]["duration"] >= 0 for e in left)
    assert all(e["version"] == "1.0.0" and e["event_ts"] > 0 for e in receiver.got)
    assert_in_each_rooms_order(receiver)


async def test_a_killed_nodes_claimed_deliveries_are_made_by_another_node(
    tmp_path: Path, redis: RedisServer, receiver: Receiver
) -> None:
    receiver.status = 500  # every node's deliveries stay claimed, retried
    # node-0 alone first: it claims deliveries (the others would race it for them)
    timeouts = {"webhook_claim_s": "2", "webhook_timeout_s": "1", "webhook_retry_s": "120"}
    nodes = start_nodes(tmp_path, redis, receiver, 1, extra=timeouts)
    clients = [CallClient() for _ in range(40)]
    try:
        for i, client in enumerate(clients[:30]):  # 30 rooms: spread over the shards and lanes
            await client.join(nodes[0].room_url(f"kill-{i}"))
        await clients[0].set_meeting_session_data({"poll": "final"})  # its update: claimed too
        # (generous: on a loaded machine the first deliveries can take a while to be claimed)
        await wait_for(lambda: pending_of(redis, "node-0") > 0, 30)
        nodes += start_nodes(tmp_path, redis, receiver, 2, first=1, extra=timeouts)
        for i, client in zip(range(0, 30, 3), clients[30:], strict=True):
            await client.join(nodes[1].room_url(f"kill-{i}"))  # hosted by a node that lives
        os.kill(nodes[0].proc.pid, signal.SIGKILL)
        claimed = pending_of(redis, "node-0")
        assert claimed > 0, "the killed node had claimed deliveries"
        killed_at = time.monotonic()
        receiver.status = 200
        rooms = {f"kill-{i}" for i in range(30)}

        sids = {str(client.session_id) for client in clients}

        def all_joins() -> bool:  # every one: those the killed node had claimed too
            joined = receiver.of_type("participant.joined")
            return sids <= {e["payload"]["session_id"] for e in joined}

        await wait_for(all_joins, 2 + 10 + 5)  # the claim timeout, a retry, and slack
        took = time.monotonic() - killed_at
        lost = {f"kill-{i}" for i in range(0, 30, 3)}  # the killed node's participants' rooms

        def all_lost() -> bool:
            left = receiver.of_type("participant.left")
            return lost <= {e["payload"]["room"] for e in left if e["payload"]["reason"] == LOST}

        await wait_for(all_lost, 20)  # the lease's 5 s, the other nodes' check, delivery
        updates = receiver.of("session-data.updated", "kill-0")
        assert [u["payload"]["meeting_session_data"] for u in updates] == [{"poll": "final"}]
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            node.stop()
    starts = {e["payload"]["room"] for e in receiver.unique().values()
              if e["type"] == "meeting.started"}  # fmt: skip
    assert rooms <= starts
    assert receiver.bad_signatures == 0
    print(f"node-0 had {claimed} claimed deliveries; all delivered {took:.1f} s after kill -9")


async def test_a_receiver_failing_for_good_fills_the_dead_letters_which_replay(
    tmp_path: Path, redis: RedisServer, receiver: Receiver
) -> None:
    receiver.status = 500
    [node] = start_nodes(tmp_path, redis, receiver, 1, webhook_retry_s="2")
    client = CallClient()
    try:
        await client.join(node.room_url("dead"), user_name="ann")
        async with aiohttp.ClientSession() as http:
            letters: list[dict[str, Any]] = []

            async def dead() -> None:
                async with http.get(f"{node.url}/v1/webhooks/dead-letters") as response:
                    assert response.status == 200
                    letters[:] = (await response.json())["data"]

            async with asyncio.timeout(15):
                while len(letters) < 2:
                    await dead()
                    await asyncio.sleep(0.2)
            assert {d["event"]["type"] for d in letters} == {
                "meeting.started",
                "participant.joined",
            }
            assert all("answered 500" in d["error"] for d in letters)
            receiver.status = 200
            for letter in letters:
                url = f"{node.url}/v1/webhooks/dead-letters/{letter['id']}/replay"
                async with http.post(url) as response:
                    assert response.status == 200
                async with http.post(url) as response:
                    assert response.status == 404
            await wait_for(lambda: len(receiver.unique()) == 2, 10)
            assert set(receiver.unique()) == {d["event"]["id"] for d in letters}
            await dead()
            assert letters == []
    finally:
        await client.leave()
        node.stop()


async def test_a_receiver_down_for_30_s_gets_everything_sent_meanwhile_in_each_rooms_order(
    tmp_path: Path, redis: RedisServer, receiver: Receiver
) -> None:
    nodes = start_nodes(tmp_path, redis, receiver, 3, webhook_claim_s="5", webhook_timeout_s="2")
    await receiver.stop()  # connection refused from now on
    # 6 rooms (over several shards), each with a participant on every node
    clients = [CallClient() for _ in range(18)]
    try:
        down_at = time.monotonic()
        for i, client in enumerate(clients):
            await client.join(nodes[i // 6].room_url(f"down-{i % 6}"))
        for client in clients[::2]:
            await client.leave()
        # node-2 dies meanwhile: what it held goes to the others, after what they had
        os.kill(nodes[2].proc.pid, signal.SIGKILL)
        for client in clients[12:]:
            await client.close()
        for client in clients[1:12:4]:
            await client.leave()  # after node-2's: later in their rooms
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        await receiver.start()

        def everything() -> bool:
            kinds = [e["type"] for e in receiver.unique().values()]
            # 9 left, 3 more left, node-2's 3 others lost
            return kinds.count("participant.joined") == 18 and kinds.count("participant.left") == 15

        await wait_for(everything, 20)  # the longest retry delay (2.5 s here) and slack
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            node.stop()
    assert sum(e["type"] == "meeting.started" for e in receiver.unique().values()) == 6
    reasons = [e["payload"]["reason"] for e in receiver.of_type("participant.left")]
    assert reasons.count(LOST) == 3
    assert receiver.bad_signatures == 0
    assert_in_each_rooms_order(receiver)
