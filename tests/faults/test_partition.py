"""R7: one node cut off from Redis (a black hole for 10 s), and the same link slowed by 500 ms.

Node A reaches Redis through a `TcpProxy`; nodes B and C connect to Redis directly. Clients a1
and a2 are on A, b1 on B, c1 on C, all in one room. a1 keeps writing (session data, userData and
app messages in turn, one at a time) through the whole scenario, and every reply is journaled.

Checks (issue 7, row R7):

- no ack for a write that was not stored: every write a1 got an `ack` for is in Redis afterwards
  (in the room's log, and a session-data key also in the stored state);
- during the cut, each write gets its error (`unavailable`) within 2 s;
- after healing, A's participants are whole again within 5 s and stay so: B, C and Redis see
  each of them once, with its userData, they see B's and C's, and a1's writes are acked again.
  A cut of 10 s is longer than the 5 s lease, so B and C judge A lost (`node-lost`) meanwhile,
  and removal is final: A then closes its clients (4001) and they join again as the browser SDK
  does (a resume, which becomes a fresh join, with their userData). The figure is the time from
  healing until the last moment the room became whole (observed for 8 s);
- 500 ms of latency each way alone causes no `node-lost`: nobody anywhere sees a
  `participant-left`, and no client is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploy.local.servers import RedisReplyError, RedisServer
from roomstate.bus.redis.bus import RedisBus
from roomstate.sdk.client import CallClient, ClientError, ConnectionClosed, NotJoined
from roomstate.settings import Settings

from .conftest import FAST, NodeProcess, TcpProxy, start_node

pytestmark = pytest.mark.faults

CUT_S = 10.0  # how long node A is cut off from Redis
DELAY_S = 0.5  # latency added each way by the proxy in the latency variant
DELAY_FOR_S = 10.0  # how long the latency lasts
ERROR_WITHIN_S = 2.0  # a write during the cut gets its error within this
WHOLE_WITHIN_S = 5.0  # after healing, A's participants are back within this
OBSERVE_S = 8.0  # how long the room is watched after healing (more than a lease period)
WRITE_EVERY_S = 0.1  # pause between a1's writes
RECONNECT_S = 0.25  # a dropped client joins again after this (the browser SDK's first backoff)


@dataclass
class Partition:
    redis: RedisServer
    proxy: TcpProxy  # between node A and Redis
    a: NodeProcess  # reaches Redis through the proxy
    b: NodeProcess
    c: NodeProcess


@pytest.fixture
def partition(tmp_path: Path) -> Iterator[Partition]:
    redis = RedisServer.start(tmp_path)
    proxy = TcpProxy(redis.port).start_in_thread()
    nodes: list[NodeProcess] = []
    try:
        for name, url in (("node-a", proxy.url), ("node-b", redis.url), ("node-c", redis.url)):
            env = {**FAST, "ROOMSTATE_NODE_ID": name}
            nodes.append(start_node(tmp_path, env, "--redis", url))
        yield Partition(redis, proxy, *nodes)
    finally:
        proxy.delay = 0.0
        if proxy.cut_off:
            proxy.heal()  # so that node A can leave cleanly
        for started in nodes:
            started.stop()
        proxy.stop_thread()
        redis.stop()


# -- participants that come back after a drop, and a journal of a1's writes --


@dataclass
class Member:
    """A participant that joins again after its connection drops, as the browser SDK does: a
    resume (a fresh join if the node removed it meanwhile) with its current userData."""

    name: str
    url: str
    user_data: Any
    client: CallClient = field(default_factory=CallClient)
    closes: list[tuple[float, Any]] = field(default_factory=list)  # (when, close code)
    up: asyncio.Event = field(default_factory=asyncio.Event)  # joined on the current socket
    _task: asyncio.Task[None] | None = None

    async def join(self) -> None:
        await self.client.join(self.url, user_name=self.name, user_data=self.user_data)
        self.up.set()
        self._task = asyncio.create_task(self._keep_joined())

    async def _keep_joined(self) -> None:
        while True:
            left = await self.client.next_event("left-meeting", timeout=3600)
            self.up.clear()
            self.closes.append((time.monotonic(), left.get("closeCode")))
            token = self.client.resume_token
            user_data = self.user_data_now()
            await self.client.close()
            while True:
                await asyncio.sleep(RECONNECT_S)
                with contextlib.suppress(ClientError):
                    await self.client.join(
                        self.url, user_name=self.name, user_data=user_data, resume=token
                    )
                    break
            self.up.set()

    def user_data_now(self) -> Any:
        return (self.client.participants().get("local") or {}).get("userData")

    def others(self) -> list[tuple[str, Any]]:
        """(user name, userData) of each participant this client sees, itself excluded."""
        return sorted(
            (str(p.get("user_name")), p.get("userData"))
            for key, p in self.client.participants().items()
            if key != "local"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()


@dataclass
class Write:
    kind: str  # "session", "user" or "message"
    n: int
    sid: str | None  # the writer's session id when it sent it
    sent: float
    done: float = 0.0
    outcome: str = ""  # "ack", a wire error code, or a client-side one (connection-closed)


@dataclass
class Writer:
    """a1's writes, one at a time, each journaled with its outcome and reply time."""

    member: Member
    kinds: tuple[str, ...] = ("session", "user", "message")  # taken in turn
    writes: list[Write] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while True:
            await self.member.up.wait()
            client = self.member.client
            n += 1
            kind = self.kinds[n % len(self.kinds)]
            write = Write(kind, n, client.session_id, time.monotonic())
            self.writes.append(write)
            try:
                if kind == "session":
                    await client.set_meeting_session_data({f"w{n}": n}, "shallow-merge")
                elif kind == "user":
                    await client.set_user_data({"n": n})
                else:
                    await client.send_app_message({"n": n})
                write.outcome = "ack"
            except (ConnectionClosed, NotJoined) as exc:
                write.outcome = exc.code
                await asyncio.sleep(0.05)  # the member is joining again
            except ClientError as exc:
                write.outcome = exc.code
            write.done = time.monotonic()
            await asyncio.sleep(WRITE_EVERY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writes = [w for w in self.writes if w.outcome]  # not one cut short by the stop

    def acked(self) -> list[Write]:
        return [w for w in self.writes if w.outcome == "ack"]

    def sent_between(self, start: float, end: float) -> list[Write]:
        return [w for w in self.writes if start <= w.sent < end]


async def start_members(partition: Partition, room: str) -> dict[str, Member]:
    where = {"a1": partition.a, "a2": partition.a, "b1": partition.b, "c1": partition.c}
    members = {name: Member(name, n.room_url(room), {"me": name}) for name, n in where.items()}
    try:
        for member in members.values():
            await member.join()
        async with asyncio.timeout(5):  # everyone sees everyone
            while not all(len(m.others()) == 3 for m in members.values()):
                await asyncio.sleep(0.02)
    except BaseException:
        seen = {m.name: m.others() for m in members.values()}
        for member in members.values():
            await member.stop()
        raise AssertionError(f"the members do not all see each other: {seen}") from None
    return members


def record_lefts(members: dict[str, Member]) -> list[tuple[str, float, dict[str, Any]]]:
    """Every participant-left any member sees: (watcher, when, event)."""
    lefts: list[tuple[str, float, dict[str, Any]]] = []
    for name, member in members.items():

        def seen(event: dict[str, Any], name: str = name) -> None:
            lefts.append((name, time.monotonic(), event))

        member.client.on("participant-left", seen)
    return lefts


async def stored_people(store: RedisBus, room: str) -> list[tuple[str, Any]]:
    """(user name, userData) of each participant Redis has present in the room."""
    state = (await store.snapshot(room)).state
    return sorted(
        (
            str((p.info.value or {}).get("user_name") if p.info else None),
            p.user_data.value if p.user_data else None,
        )
        for p in state.present().values()
    )


async def acked_but_not_stored(store: RedisBus, room: str, writer: Writer) -> list[Write]:
    """The writes a1 got an ack for that are not in the room's log (or, for a session-data
    key, not in the stored state)."""
    events = await store.read_range(room, "0-0")
    assert events is not None, "the room's log is gone"
    assert len(events) < 900, "the log may have been trimmed (it keeps ~1,000): fewer writes"
    session_keys: dict[str, Any] = {}
    user_values: set[tuple[str, Any]] = set()
    messages: set[Any] = set()
    for _, event in events:
        if event.message is not None and isinstance(event.message.data, dict):
            messages.add(event.message.data.get("n"))
        if event.delta is None:
            continue
        for key, entry in event.delta.session_data.entries.items():
            session_keys[key] = entry.value
        for sid, p in event.delta.participants.items():
            if p.user_data is not None and isinstance(p.user_data.value, dict):
                user_values.add((sid, p.user_data.value.get("n")))
    stored = (await store.snapshot(room)).state.session_data.value()
    missing = []
    for w in writer.acked():
        if w.kind == "session":
            found = session_keys.get(f"w{w.n}") == w.n and stored.get(f"w{w.n}") == w.n
        elif w.kind == "user":
            found = (w.sid or "", w.n) in user_values
        else:
            found = w.n in messages
        if not found:
            missing.append(w)
    return missing


async def converged(members: dict[str, Member], store: RedisBus, room: str) -> float:
    """Seconds until every client's session data equals Redis's (inf: not within 5 s)."""
    started = time.monotonic()
    while time.monotonic() - started < 5.0:
        stored = (await store.snapshot(room)).state.session_data.value()
        views = [m.client.meeting_session_state()["data"] for m in members.values()]
        if all(view == stored for view in views):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return float("inf")


async def watch(predicate: Callable[[], Any], seconds: float) -> list[tuple[float, bool]]:
    """Evaluate an async predicate every 50 ms for `seconds`; its changes: (when, value)."""
    changes: list[tuple[float, bool]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = bool(await predicate())
        if not changes or changes[-1][1] != value:
            changes.append((time.monotonic(), value))
        await asyncio.sleep(0.05)
    return changes


# -- the cut-off --


async def test_r7_a_node_cut_off_from_redis_for_10_s(partition: Partition, room: str) -> None:
    members = await start_members(partition, room)
    a1, a2, b1, c1 = (members[name] for name in ("a1", "a2", "b1", "c1"))
    lefts = record_lefts(members)
    writer = Writer(a1)
    store = RedisBus(Settings(redis=partition.redis.url))
    await store.start()

    async def whole() -> bool:
        """A's participants are back: seen once each with their userData by B, C and Redis;
        they see B's and C's; a1 has had a write acked since the heal."""
        if not (a1.up.is_set() and a2.up.is_set()):
            return False
        want = sorted((m.name, m.user_data_now()) for m in (a1, a2))
        for watcher in (b1, c1):
            if [p for p in watcher.others() if p[0] in ("a1", "a2")] != want:
                return False
        for member in (a1, a2):
            if not {"b1", "c1"} <= {name for name, _ in member.others()}:
                return False
        if not any(w.outcome == "ack" and w.sent > healed_at for w in writer.writes):
            return False
        stored = await stored_people(store, room)
        return [p for p in stored if p[0] in ("a1", "a2")] == want

    try:
        writer.start()
        await asyncio.sleep(1.0)
        cut_at = time.monotonic()
        partition.proxy.cut()
        await asyncio.sleep(CUT_S)
        writer.kinds = ("session", "message")  # userData stays put while the room is watched
        partition.proxy.heal()
        healed_at = time.monotonic()
        changes = await watch(whole, OBSERVE_S)
        await writer.stop()
        agreed_s = await converged(members, store, room)
        missing = await acked_but_not_stored(store, room, writer)
    finally:
        await writer.stop()
        for member in members.values():
            await member.stop()
        await store.close()

    during = writer.sent_between(cut_at, healed_at)
    errors = [w for w in during if w.outcome != "ack"]
    slowest = max((w.done - w.sent for w in during), default=0.0)
    is_whole = bool(changes) and changes[-1][1]
    whole_s = changes[-1][0] - healed_at if is_whole else float("inf")
    flips = [(round(t - healed_at, 2), value) for t, value in changes]
    closes = {m.name: [(round(t - healed_at, 2), code) for t, code in m.closes] for m in (a1, a2)}
    node_lost = sorted(
        (watcher, e["participant"].get("user_name"), round(t - cut_at, 1))
        for watcher, t, e in lefts
        if e.get("reason") == "node-lost"
    )
    print(
        f"\nR7 cut-off {CUT_S:g} s: a1 sent {len(during)} writes during the cut: "
        f"{len(errors)} errors {sorted({w.outcome for w in errors})}, "
        f"{len(during) - len(errors)} acked; the slowest replies after "
        f"{sorted(round(w.done - w.sent, 3) for w in during)[-4:]} s"
    )
    print(f"R7 node-lost seen (watcher, who, s after the cut): {node_lost}")
    print(f"R7 A's clients closed (s after healing, code): {closes}")
    print(f"R7 whole (s after healing, value): {flips}; whole for good {whole_s:.2f} s after")

    print(
        f"R7 {len(writer.acked())} acked writes of {len(writer.writes)}, {len(missing)} of them "
        f"not in Redis; every client's session data equal to Redis's {agreed_s:.2f} s after "
        "the writes stopped"
    )
    assert not missing, f"acked but not stored in Redis: {missing[:5]}"
    assert errors, "no write failed while node A was cut off"
    assert whole_s <= WHOLE_WITHIN_S, f"A's participants whole again only {whole_s:.2f} s after"
    assert agreed_s < 5.0, "the clients' session data and Redis's do not agree"
    # Once back, nobody is removed again (a node that serves joins before it has re-taken its
    # lease gets them removed as node-lost: seen before the lease retry went to 0.2 s).
    assert all(len(c) <= 1 for c in closes.values()), f"closed again after rejoining: {closes}"
    assert slowest <= ERROR_WITHIN_S, f"a write during the cut got its reply after {slowest:.3f} s"


# -- 500 ms of latency --


async def test_r7_500_ms_of_latency_to_redis_causes_no_node_lost(
    partition: Partition, room: str
) -> None:
    members = await start_members(partition, room)
    lefts = record_lefts(members)
    writer = Writer(members["a1"])
    store = RedisBus(Settings(redis=partition.redis.url))
    await store.start()
    ttls: list[tuple[float, int]] = []  # (when, PTTL of A's lease): diagnostics only

    async def lease_ttl() -> bool:
        with contextlib.suppress(OSError, RedisReplyError):
            ttl = await asyncio.to_thread(partition.redis.command, "PTTL", "rs:lease:node-a")
            ttls.append((time.monotonic(), int(ttl or 0)))  # type: ignore[arg-type]
        return True

    try:
        writer.start()
        await asyncio.sleep(1.0)
        slow_at = time.monotonic()
        partition.proxy.delay = DELAY_S
        await watch(lease_ttl, DELAY_FOR_S)
        partition.proxy.delay = 0.0
        fast_at = time.monotonic()
        await watch(lease_ttl, 6.0)  # a lease that lapsed during the delay shows by now
        await writer.stop()
        agreed_s = await converged(members, store, room)
        missing = await acked_but_not_stored(store, room, writer)
    finally:
        await writer.stop()
        for member in members.values():
            await member.stop()
        await store.close()

    during = writer.sent_between(slow_at, fast_at)
    acked = sorted(w.done - w.sent for w in during if w.outcome == "ack")
    failed = sorted({w.outcome for w in during if w.outcome != "ack"})
    closes = [
        (m.name, round(t - slow_at, 2), code) for m in members.values() for t, code in m.closes
    ]
    left = [
        (watcher, e["participant"].get("user_name"), e.get("reason"), round(t - slow_at, 1))
        for watcher, t, e in lefts
    ]
    lowest = min(((ttl, t) for t, ttl in ttls if slow_at <= t <= fast_at), default=(0, 0.0))
    renewed = [t for (_, before), (t, ttl) in itertools.pairwise(ttls) if ttl > before]
    gaps = [b - a for a, b in itertools.pairwise(renewed) if slow_at <= b <= fast_at]
    print(
        f"\nR7 latency {DELAY_S * 1000:.0f} ms each way for {DELAY_FOR_S:g} s: a1 sent "
        f"{len(during)} writes, {len(acked)} acked (reply median "
        f"{statistics.median(acked) if acked else float('nan'):.2f} s, max "
        f"{max(acked, default=float('nan')):.2f} s), failed: {failed or 'none'}"
    )
    print(
        f"R7 latency: A's lease PTTL lowest {lowest[0]} ms at {lowest[1] - slow_at:.1f} s "
        f"(-2: gone); longest gap between renewals {max(gaps, default=0.0):.1f} s"
    )
    print(f"R7 latency: participant-left seen (watcher, who, reason, s): {left or 'none'}")
    print(f"R7 latency: clients closed (who, s, code): {closes or 'none'}")

    print(
        f"R7 latency: {len(missing)} acked writes not in Redis; every client's session data "
        f"equal to Redis's after {agreed_s:.2f} s"
    )
    assert not missing, f"acked but not stored in Redis: {missing[:5]}"
    assert acked, "no write acked during the latency"
    assert agreed_s < 5.0, "the clients' session data and Redis's do not agree"
    assert not left and not closes, f"false node-lost: {left}; clients closed: {closes}"
