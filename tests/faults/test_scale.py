"""R1 and R10: a node killed with `kill -9` under many participants; three nodes and Redis behind
haproxy, clients that reconnect through haproxy and resume.

The clients are light: one raw aiohttp WebSocket each, parsing only the frames the checks need,
so that hundreds of them cost the test process little CPU (the machine has two cores, shared
with the nodes, Redis and haproxy).

What a node promises when another dies (architecture.md, Membership): its lease expires after 5 s
and the surviving nodes then remove exactly the participants whose record still names the dead
node's incarnation (`participant-left`, reason `node-lost`). A participant that resumed on
another node before that is kept: nobody sees it leave. One that comes back after it was removed
is a new participant (a fresh join: new session id, `resumed: false`). So "the survivors see all
200 leave" and "the 200 resume" cannot both hold for one participant: R1 sends half of the
victims back at once (they must be kept, unseen) and half after 9 s (they must be seen leaving
within 8 s, then come back as new participants).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from deploy.local.servers import Haproxy, RedisServer
from roomstate.bus.redis.bus import state_key

from ..integration.deployments import Deployment, start_deployment
from .conftest import full_only

pytestmark = pytest.mark.faults

LEAVE_BOUND_S = 8.0  # R1: survivors see a dead node's (unresumed) participants leave by then
BACK_BOUND_S = 30.0  # R1, R10: every client of the dead node is back by then
SLOW_AWAY_S = 9.0  # R1: the late half of the victims stays away this long (past the lease)


# -- a light client --


@dataclass(eq=False)
class Peer:
    """One participant over a raw WebSocket: its session, what it saw, when it dropped and
    came back."""

    name: str
    room: str
    sid: str | None = None
    token: str | None = None
    seq: str | None = None  # log position of the last app message (or of the joined snapshot)
    present: set[str] = field(default_factory=set)  # the participants as this client sees them
    left: dict[str, tuple[float, str]] = field(default_factory=dict)  # sid -> (when, reason)
    messages: list[Any] = field(default_factory=list)  # app-message data, in arrival order
    reply: dict[str, Any] = field(default_factory=dict)  # the last `joined` (minus the roster)
    dropped_at: float | None = None
    returns: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (when, joined)
    closes: list[int | None] = field(default_factory=list)  # close code of each drop
    attempts: int = 0  # connection attempts after the drop
    failures: list[str] = field(default_factory=list)  # why attempts failed (with when)
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task[None] | None = None
    dropped: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, http: aiohttp.ClientSession, base: str, resume: bool = False) -> None:
        """Open a WebSocket to `base` and join (or resume); raise if refused or too slow."""
        frame: dict[str, Any] = {"type": "join", "id": "j", "userName": self.name}
        if resume:
            frame.update(resume=self.token, resumeAfter=self.seq)
        ws = await http.ws_connect(f"{base}/v1/rooms/{self.room}/ws", autoping=True)
        try:
            await ws.send_str(orjson.dumps(frame).decode())
            message = await ws.receive(timeout=10)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed before joined: {message.type} {ws.close_code}")
            reply = orjson.loads(message.data)
            if reply.get("type") != "joined":
                raise ConnectionError(f"join refused: {reply}")
        except BaseException:
            await ws.close()
            raise
        participants = reply.pop("participants")
        self.present = set(participants)
        self.reply = reply
        self.sid, self.token = reply["sessionId"], reply.get("resumeToken")
        if not reply.get("resumed"):
            self.seq = reply.get("seq")
        self.ws, self.dropped = ws, asyncio.Event()
        self.reader = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = message.data
                if data.startswith('{"type":"participant-'):
                    frame = orjson.loads(data)
                    # one loop turn's membership events come batched, in order
                    for event in frame.get("events", [frame]):
                        self._membership(event)
                elif data.startswith('{"type":"app-message"'):
                    frame = orjson.loads(data)
                    self.messages.append(frame["data"])
                    self.seq = frame["seq"]
        finally:
            self.dropped_at = time.monotonic()
            self.dropped.set()

    def _membership(self, event: dict[str, Any]) -> None:
        sid = event.get("participant", {}).get("session_id")
        if event["type"] == "participant-joined":
            self.present.add(sid)
        elif event["type"] == "participant-left":
            self.present.discard(sid)
            self.left[sid] = (time.monotonic(), event.get("reason", ""))

    async def come_back(
        self, http: aiohttp.ClientSession, base: str, rng: random.Random, away: float = 0.0
    ) -> None:
        """Like a client SDK: whenever the connection drops, resume through `base` with
        full-jitter exponential backoff (attempt n waits uniform(0, min(8, 0.5 * 2**n)) s),
        the first time after staying away `away` s. Runs until cancelled."""
        while True:
            await self.dropped.wait()
            self.closes.append(self.ws.close_code if self.ws is not None else None)
            await asyncio.sleep(away)
            away, attempt = 0.0, 0
            while True:
                await asyncio.sleep(rng.uniform(0, min(8.0, 0.5 * 2**attempt)))
                attempt += 1
                self.attempts += 1
                try:
                    await asyncio.wait_for(self.connect(http, base, resume=True), 15)
                except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                    self.failures.append(f"{time.monotonic():.2f} {exc!r}"[:300])
                    continue
                self.returns.append((time.monotonic(), self.reply))
                break

    @property
    def back_at(self) -> float | None:
        """When it first came back after the drop."""
        return self.returns[0][0] if self.returns else None

    @property
    def first_reply(self) -> dict[str, Any]:
        return self.returns[0][1] if self.returns else {}

    def kept(self, old_sid: str | None) -> bool:
        """Came back as the same participant, and was never cut off again."""
        reply = self.first_reply
        return (
            reply.get("resumed") is True
            and reply.get("sessionId") == old_sid
            and len(self.returns) == 1
            and not self.dropped.is_set()
        )

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(BaseException):
                await self.reader


# -- the deployment --


@dataclass
class Fleet:
    deployment: Deployment
    redis: RedisServer
    lb: Haproxy

    @property
    def nodes(self) -> list[str]:
        return [n.url for n in self.deployment.nodes]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Three nodes on one Redis, haproxy in front; the resume window is the default 15 s."""
    deployment = start_deployment("3-nodes-redis", tmp_path, {"ROOMSTATE_RESUME_GRACE_S": "15"})
    try:
        backends = [("127.0.0.1", int(n.url.rsplit(":", 1)[1])) for n in deployment.nodes]
        lb = Haproxy.start(tmp_path, backends)
        deployment.stop_list.append(lb)
        lb.wait_for_states()
        redis = deployment.stop_list[0]
        assert isinstance(redis, RedisServer)
        yield Fleet(deployment, redis, lb)
    finally:
        deployment.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    await asyncio.gather(*(p.close() for p in made), return_exceptions=True)


async def join_all(
    http: aiohttp.ClientSession, placed: list[tuple[Peer, str]], parallel: int = 20
) -> None:
    """Join every (peer, base URL), `parallel` at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(peer: Peer, base: str) -> None:
        async with gate:
            await peer.connect(http, base)

    await asyncio.gather(*(one(peer, base) for peer, base in placed))


async def wait_for(check: Any, timeout: float, what: str) -> float:
    """Poll `check()` until true; the seconds it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None
    return time.monotonic() - started


async def settle(check: Any, timeout: float) -> float | None:
    """Poll `check()` until true: the seconds it took, or None if it never was."""
    try:
        return await wait_for(check, timeout, "")
    except AssertionError:
        return None


def took_text(seconds: float | None) -> str:
    return f"after {seconds:.2f} s" if seconds is not None else "NOT within the time"


def fenced(fleet: Fleet) -> list[str]:
    """The nodes' "fencing" log lines (a node that lost its lease)."""
    return [
        line.split(" WARNING ")[0][11:] + " " + line.rsplit(" fencing ", 1)[1]
        for node in fleet.deployment.nodes
        for line in node.log.read_text(errors="replace").splitlines()
        if "lease lost: fencing" in line
    ]


def kill(fleet: Fleet, index: int) -> float:
    """`kill -9` a node; the monotonic time it died."""
    proc = fleet.deployment.nodes[index].proc
    proc.kill()
    proc.wait(5)
    return time.monotonic()


def stored_count(redis: RedisServer, room: str) -> int:
    return int(str(redis.command("HGET", state_key(room), "n")))


async def presence(http: aiohttp.ClientSession, base: str, room: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/v1/rooms/{room}/presence") as response:
        assert response.status == 200
        body = await response.json()
    data: list[dict[str, Any]] = body["data"]
    return data


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s"


# -- R1 --


@pytest.mark.parametrize(
    "per_node", [pytest.param(200, marks=full_only, id="600"), pytest.param(20, id="60")]
)
async def test_r1_kill_9_a_node_holding_a_third_of_a_room(
    fleet: Fleet,
    http: aiohttp.ClientSession,
    peers: list[Peer],
    room: str,
    per_node: int,
) -> None:
    total = 3 * per_node
    placed = [(Peer(f"p{i}", room), fleet.nodes[i % 3]) for i in range(total)]
    peers += [peer for peer, _ in placed]
    started = time.monotonic()
    await join_all(http, placed)
    everyone = {p.sid for p in peers}
    took = await wait_for(
        lambda: all(p.present == everyone for p in peers), 60, f"{total} joined, seen by all"
    )
    print(
        f"\nR1 ({total}): {total} joined, {per_node} per node, everyone sees everyone "
        f"{time.monotonic() - started:.1f} s after the first join (last events {took:.1f} s)"
    )
    victims = [peer for peer, base in placed if base == fleet.nodes[1]]
    survivors = [peer for peer, base in placed if base != fleet.nodes[1]]
    fast, slow = victims[: per_node // 2], victims[per_node // 2 :]
    old = {p.name: p.sid for p in victims}
    rng = random.Random(1)
    returns = [asyncio.create_task(p.come_back(http, fleet.lb.url, rng)) for p in fast] + [
        asyncio.create_task(p.come_back(http, fleet.lb.url, rng, away=SLOW_AWAY_S)) for p in slow
    ]

    killed_at = kill(fleet, 1)
    try:
        await settle(lambda: all(p.back_at for p in victims), BACK_BOUND_S)
        back = [p.back_at - killed_at for p in victims if p.back_at is not None]
        back_fast = [p.back_at - killed_at for p in fast if p.back_at is not None]
        back_slow = [p.back_at - killed_at for p in slow if p.back_at is not None]
        settled = await settle(lambda: all(p.present == {q.sid for q in peers} for p in peers), 15)
        await asyncio.sleep(1.5)  # another lease round: nobody else may leave
    finally:
        for task in returns:
            task.cancel()
    everyone = {p.sid for p in peers}
    not_back = [p for p in victims if p.back_at is None]
    kept = [p for p in victims if p.kept(old[p.name])]
    false_resumes = [p for p in victims if p.first_reply.get("resumed") and p not in kept]
    slow_new = [p for p in slow if p.first_reply.get("resumed") is False and p.sid != old[p.name]]
    gone = {old[p.name] for p in victims if p not in kept}  # removed: everyone must see it
    seen_leaving = [
        max((when - killed_at for sid, (when, _) in p.left.items() if sid in gone), default=0)
        for p in survivors
    ]
    reasons = {reason for p in survivors for sid, (_, reason) in p.left.items()}
    rest = [await presence(http, base, room) for base in (fleet.nodes[0], fleet.nodes[2])]
    names = [[p["userName"] for p in listing] for listing in rest]
    print(
        f"R1 ({total}): kill -9 of a node with {per_node}: survivors saw {len(gone)} leave "
        f"within {max(seen_leaving):.2f} s (reasons {sorted(reasons)}), anyone else leave: "
        f"{len({sid for p in survivors for sid in p.left} - gone)}; {len(back)}/{per_node} "
        f"back, within {max(back, default=0):.2f} s (early half {spread(back_fast)}; late half "
        f"{spread(back_slow)}); early half resumed in place "
        f"{sum(p in kept for p in fast)}/{len(fast)} (replayed "
        f"{sum(p.first_reply.get('replayed') is True for p in kept)}), late half new sessions "
        f"{len(slow_new)}/{len(slow)}; resumed, then removed after all: {len(false_resumes)}; "
        f"rosters whole again {took_text(settled)}; REST presence {[len(n) for n in names]} "
        f"({[len(set(n)) for n in names]} distinct names), Redis count "
        f"{stored_count(fleet.redis, room)}; fencing: {fenced(fleet) or 'none'}"
    )
    for peer in not_back[:5]:
        print(f"  not back: {peer.name}, dropped {peer.dropped_at}: {peer.failures[-3:]}")
    for peer in false_resumes[:5]:
        print(f"  resumed then cut off: {peer.name} {old[peer.name]} closes {peer.closes}")
    assert not_back == [], f"{len(not_back)} of {per_node} not back within {BACK_BOUND_S} s"
    assert false_resumes == [], "a participant told `resumed: true` must not be removed"
    assert all(set(p.left) == gone for p in survivors), "survivors see exactly the removed leave"
    assert max(seen_leaving) <= LEAVE_BOUND_S
    assert reasons <= {"node-lost"}
    assert max(back) <= BACK_BOUND_S
    assert all(p in kept for p in fast), "a participant back before the lease expired is kept"
    assert len(slow_new) == len(slow), "one back after its removal is a new participant"
    assert len(everyone) == total
    for listing in names:
        assert len(listing) == total and len(set(listing)) == total, "no duplicates"
    assert settled is not None, "every client's roster is the whole room again"
    assert stored_count(fleet.redis, room) == total


# -- R10 --

R10_ROOMS = 50
R10_PER_ROOM = 20  # clients of the doomed node per room: 1,000 in all
REPLAY_SHARE = 0.95


@full_only  # ~1,100 WebSockets in this process
async def test_r10_a_thousand_clients_of_a_killed_node_come_back_most_by_replay(
    fleet: Fleet, http: aiohttp.ClientSession, peers: list[Peer], room: str
) -> None:
    """1,000 clients on one node (50 rooms of 20, each room also watched from the two other
    nodes), `kill -9`; each client resumes through haproxy with full-jitter backoff and
    `resumeAfter`. The app messages sent while they are away must come by replay, once."""
    doomed, b, c = fleet.nodes[1], fleet.nodes[0], fleet.nodes[2]
    rooms = [f"{room}-{k}" for k in range(R10_ROOMS)]
    victims = [Peer(f"v{k}-{i}", name) for k, name in enumerate(rooms) for i in range(R10_PER_ROOM)]
    senders = [Peer(f"s{k}", name) for k, name in enumerate(rooms)]  # on B
    watchers = [Peer(f"w{k}", name) for k, name in enumerate(rooms)]  # on C
    peers += victims + senders + watchers
    started = time.monotonic()
    await join_all(
        http,
        [(p, b) for p in senders] + [(p, c) for p in watchers] + [(p, doomed) for p in victims],
        parallel=50,
    )

    def rosters_whole() -> bool:
        members: dict[str, set[str | None]] = {}
        for p in peers:
            members.setdefault(p.room, set()).add(p.sid)
        return all(p.present == members[p.room] for p in peers)

    await wait_for(rosters_whole, 60, "every roster complete")

    async def broadcast(label: str) -> None:
        await asyncio.gather(
            *(s.send({"type": "send-app-message", "data": label, "to": "*"}) for s in senders)
        )

    await broadcast("pre")
    await wait_for(lambda: all("pre" in v.messages for v in victims), 30, "pre delivered")
    print(
        f"\nR10: {len(peers)} clients joined ({len(victims)} on the doomed node) and got a "
        f"first message in {time.monotonic() - started:.1f} s"
    )
    old = {p.name: p.sid for p in victims}
    rng = random.Random(10)
    returns = [asyncio.create_task(v.come_back(http, fleet.lb.url, rng)) for v in victims]

    killed_at = kill(fleet, 1)
    try:
        await asyncio.sleep(0.5)
        await broadcast("during-1")
        await asyncio.sleep(1.0)
        await broadcast("during-2")
        await settle(lambda: all(v.back_at for v in victims), BACK_BOUND_S - 1.5)
        back = [v.back_at - killed_at for v in victims if v.back_at is not None]
        settled = await settle(rosters_whole, 15)
        await broadcast("after")
        await settle(lambda: all("after" in v.messages for v in victims), 10)
        await asyncio.sleep(1.0)
    finally:
        for task in returns:
            task.cancel()

    not_back = [v for v in victims if v.back_at is None]
    kept = [v for v in victims if v.kept(old[v.name])]
    replayed = [v for v in kept if v.first_reply.get("replayed") is True]
    fresh = [v for v in victims if v.first_reply.get("resumed") is False]
    false_resumes = [v for v in victims if v.first_reply.get("resumed") and v not in kept]
    expected = ["pre", "during-1", "during-2", "after"]
    wrong = [(v.name, v.messages) for v in replayed if v.messages != expected]
    gone = {old[v.name] for v in victims if v not in kept}
    others_left = {sid for p in senders + watchers for sid in p.left} - gone
    attempts = sorted(v.attempts for v in victims)
    share = len(replayed) / len(victims)

    def when(group: list[Peer]) -> str:
        return spread([v.back_at - killed_at for v in group if v.back_at is not None])

    print(
        f"R10: kill -9 of a node with {len(victims)} clients: {len(back)} back, within "
        f"{max(back, default=0):.2f} s ({spread(back)}); resumed in place {len(kept)}, by "
        f"replay {len(replayed)} ({share:.1%}; {when(replayed)}), as new sessions {len(fresh)} "
        f"({when(fresh)}), resumed then removed after all {len(false_resumes)}; connection "
        f"attempts median {statistics.median(attempts):g}, max {attempts[-1]}; replayed "
        f"clients without exactly {expected}: {len(wrong)}; anyone else seen leaving: "
        f"{len(others_left)}; rosters whole {took_text(settled)}; fencing: "
        f"{fenced(fleet) or 'none'}"
    )
    for v in not_back[:5]:
        print(f"  not back: {v.name}: {v.failures[-3:]}")
    for name, got in wrong[:5]:
        print(f"  {name} got {got}")
    for v in false_resumes[:5]:
        print(f"  resumed then cut off: {v.name} {old[v.name]} closes {v.closes}")
    assert not_back == [], f"{len(not_back)} not back within {BACK_BOUND_S} s"
    assert max(back) <= BACK_BOUND_S
    assert share >= REPLAY_SHARE, f"only {share:.1%} resumed by replay"
    assert wrong == [], "a replayed client missed a message or got one twice"
    assert false_resumes == [], "a participant told `resumed: true` must not be removed"
    assert others_left == set(), "no one else leaves"
    assert settled is not None, "every roster is whole again"
