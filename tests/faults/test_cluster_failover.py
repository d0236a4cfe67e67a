"""R6: a Redis Cluster master killed (kill -9) under load, and a failover that loses writes.

The cluster has 3 masters and 3 replicas (cluster-node-timeout 2 s); three nodes run with
`--redis-cluster`. The master killed is the one that owns the slot of `rs:lease:node-0` (a fixed
choice; the nodes keep a copy of their lease per shard); it holds about a third of the shards.

`test_r6_…_under_load` (reliability.md, R6): in room V, whose shard is on that master, one member
per node writes all the time (app message to everyone, a session-data key of its own, its
userData, in turn, one at a time); in three rooms on the other masters, a cross-node probe sends
an app message every 20 ms. Checks:

- V works again within 6 s of the kill: for each member, from some write on every write is
  acked and its app messages reach both others; the figure is from the kill to the first such
  write's delivery;
- the probes' p99 stays under 50 ms throughout (from 1 s before the kill until V works again
  plus 3 s), and no probe message is refused or lost;
- no acked write is silently lost: after the writes stop, Redis's state of V holds every acked
  session-data key and each member's last userData, and every client's state equals Redis's;
- no false `node-lost`: nobody leaves.

`test_r6_…_lost_by_the_failover_are_restored`: the same kill, with the master's replica held
behind so that the failover certainly loses the latest acked writes. The replica is stopped
(SIGSTOP), a 20 MB value is written to the master (it waits in the master's replication buffer,
past what the kernel takes), then in a quiet room Q a session-data key and a userData are
written and acked, the master is killed and the replica resumed: it becomes master without them.
Checks that the nodes, which all hold those writes, put them back in Redis (within 10 s of the
failover), and that every client and Redis then agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from deploy.local.servers import RedisCluster, RedisServer
from roomstate.bus.redis.bus import RedisBus, log_key
from roomstate.sdk.client import CallClient, ClientError
from roomstate.settings import Settings

from .conftest import FAST, NodeProcess, full_only, p99, start_node

pytestmark = [pytest.mark.faults, full_only]  # ~30 s each: a cluster of 6 and a failover

WORKS_WITHIN_S = 6.0  # the dead master's rooms work again within this
P99_MS = 50.0  # the other rooms' p99 throughout
HEAL_WITHIN_S = 10.0  # writes the failover lost are back in Redis within this
WRITE_EVERY_S = 0.05  # pause between a V member's writes
PROBE_EVERY_S = 0.02  # pause between a probe's app messages
FILLER_BYTES = 20_000_000  # held in the master's replication buffer: more than the kernel takes


class KnownBug(AssertionError):
    """A criterion that failed because of a bug found by this suite (all fixed now: see
    docs/reliability.md, R6); kept apart from the other assertions for its message."""


@dataclass
class Deployment:
    cluster: RedisCluster
    nodes: list[NodeProcess]
    victim: RedisServer  # the master to kill: it holds node-0's lease key

    def rooms_on(self, master: RedisServer | None, count: int, prefix: str) -> list[str]:
        """`count` fresh room names whose shard is on `master` (None: not on the victim)."""
        rooms: list[str] = []
        n = 0
        while len(rooms) < count:
            n += 1
            name = f"{prefix}-{n}"
            owner = self.cluster.master_of(log_key(name))
            if (master is None and owner is not self.victim) or owner is master:
                rooms.append(name)
        return rooms


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    cluster = RedisCluster.start(tmp_path, 3, 1)
    nodes: list[NodeProcess] = []
    try:
        for i in range(3):
            env = {**FAST, "ROOMSTATE_NODE_ID": f"node-{i}"}
            nodes.append(start_node(tmp_path, env, "--redis-cluster", cluster.seeds))
        victim = cluster.master_of("rs:lease:node-0")
        yield Deployment(cluster, nodes, victim)
    finally:
        for started in nodes:
            started.stop()
        cluster.stop()


@dataclass
class Write:
    kind: str  # "message", "session" or "user"
    n: int
    sent: float
    done: float = 0.0
    outcome: str = ""  # "ack" or an error code


@dataclass
class Member:
    """A participant of V that writes all the time and records what it receives."""

    name: str
    client: CallClient
    writes: list[Write] = field(default_factory=list)
    received: dict[tuple[str, int], float] = field(default_factory=dict)  # (from, n) -> when
    _task: asyncio.Task[None] | None = None

    def on_message(self, event: dict[str, Any]) -> None:
        data = event.get("data")
        if isinstance(data, dict) and "from" in data:
            self.received[(data["from"], data["n"])] = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        kinds = ("message", "session", "user")
        n = 0
        while True:
            n += 1
            write = Write(kinds[n % 3], n, time.monotonic())
            self.writes.append(write)
            try:
                if write.kind == "message":
                    await self.client.send_app_message({"from": self.name, "n": n})
                elif write.kind == "session":
                    await self.client.set_meeting_session_data(
                        {f"{self.name}-{n}": n}, "shallow-merge"
                    )
                else:
                    await self.client.set_user_data({"n": n})
                write.outcome = "ack"
            except ClientError as exc:
                write.outcome = exc.code
            write.done = time.monotonic()
            await asyncio.sleep(WRITE_EVERY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writes = [w for w in self.writes if w.outcome]


@dataclass
class Probe:
    """App messages every 20 ms from a sender on one node to a receiver on another."""

    room: str
    sender: CallClient
    receiver: CallClient
    sent: dict[int, float] = field(default_factory=dict)  # n -> when sent
    arrived: dict[int, float] = field(default_factory=dict)  # n -> when received
    refused: list[tuple[float, str]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def on_message(self, event: dict[str, Any]) -> None:
        data = event.get("data")
        if isinstance(data, dict) and "probe" in data:
            self.arrived[data["probe"]] = time.monotonic()

    def start(self) -> None:
        self.receiver.on("app-message", self.on_message)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while True:
            n += 1
            self.sent[n] = time.monotonic()
            try:
                await self.sender.send_app_message({"probe": n}, to=self.receiver.session_id or "")
            except ClientError as exc:
                self.refused.append((time.monotonic(), f"{exc.code}: {exc.message[:120]}"))
            await asyncio.sleep(PROBE_EVERY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def latencies_ms(self, start: float, end: float) -> list[float]:
        return [
            (self.arrived[n] - sent) * 1000
            for n, sent in self.sent.items()
            if start <= sent < end and n in self.arrived
        ]

    def lost(self, end: float) -> list[int]:
        """Messages sent before `end` that never arrived."""
        return [n for n, sent in self.sent.items() if sent < end and n not in self.arrived]


async def joined(url: str, name: str, made: list[CallClient]) -> CallClient:
    client = CallClient()
    made.append(client)
    await client.join(url, user_name=name, user_data={"me": name})
    return client


async def see_each_other(clients: list[CallClient], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not all(len(c.participants()) == len(clients) for c in clients):
            await asyncio.sleep(0.02)


async def sample_cpu(nodes: list[NodeProcess], into: list[tuple[float, float]]) -> None:
    """Every 0.5 s, the nodes' summed CPU % over the last 0.5 s (diagnostics)."""
    procs = [psutil.Process(n.proc.pid) for n in nodes]
    for proc in procs:
        proc.cpu_percent()
    while True:
        await asyncio.sleep(0.5)
        with contextlib.suppress(psutil.Error):
            into.append((time.monotonic(), sum(proc.cpu_percent() for proc in procs)))


def works_again_at(member: Member, others: list[Member], killed_at: float) -> float:
    """When `member`'s room worked again for it: from the first write of its final run of
    acked writes sent after the kill, the time that write's app message (or the next one) had
    reached both others. inf if the run never starts, or a message in it is not delivered."""
    after = [w for w in member.writes if w.sent >= killed_at]
    failed = [i for i, w in enumerate(after) if w.outcome != "ack"]
    run = after[failed[-1] + 1 :] if failed else after
    messages = [w for w in run if w.kind == "message"]
    if not messages:
        return float("inf")
    for message in messages:
        if not all((member.name, message.n) in o.received for o in others):
            return float("inf")
    first = messages[0]
    delivered = max(o.received[(member.name, first.n)] for o in others)
    return max(run[0].done, delivered)


def acked_again_at(member: Member, killed_at: float) -> float:
    """When the first write of `member`'s final run of acked writes after the kill was acked."""
    after = [w for w in member.writes if w.sent >= killed_at]
    failed = [i for i, w in enumerate(after) if w.outcome != "ack"]
    run = after[failed[-1] + 1 :] if failed else after
    return run[0].done if run else float("inf")


async def agreement(
    store: RedisBus, room: str, members: list[Member], timeout: float
) -> tuple[float, str, list[str]]:
    """(seconds until Redis's state of `room` holds every acked write and every client's state
    equals it, or inf; what still differed at the end; the acked session keys Redis lacks)."""
    started = time.monotonic()
    problem = ""
    lacking: list[str] = []
    while time.monotonic() - started < timeout:
        state = (await store.snapshot(room)).state
        data = state.session_data.value()
        people = {
            str((p.info.value or {}).get("user_name") if p.info else None): (
                p.user_data.value if p.user_data else None
            )
            for p in state.present().values()
        }
        problem = ""
        lacking = []
        for m in members:
            acked = {
                f"{m.name}-{w.n}": w.n
                for w in m.writes
                if w.kind == "session" and w.outcome == "ack"
            }
            lost = sorted(k for k, v in acked.items() if data.get(k) != v)
            lacking += lost
            local = (m.client.participants().get("local") or {}).get("userData")
            if problem:
                continue  # the first problem is reported; `lacking` is for every member
            if lost:
                problem = f"Redis lacks {len(lost)} acked keys of {m.name}, e.g. {lost[:3]}"
            elif people.get(m.name) != local:
                problem = f"{m.name}'s userData: Redis {people.get(m.name)}, client {local}"
            elif m.client.meeting_session_state()["data"] != data:
                problem = f"{m.name}'s session data differs from Redis's"
            elif {
                str(p.get("user_name")): p.get("userData")
                for key, p in m.client.participants().items()
                if key != "local"
            } != {k: v for k, v in people.items() if k != m.name}:
                problem = f"{m.name}'s view of the others differs from Redis's"
        if not problem:
            return time.monotonic() - started, "", []
        await asyncio.sleep(0.1)
    return float("inf"), problem, lacking


# -- the kill under load --


async def test_r6_a_cluster_master_killed_under_load(deployment: Deployment) -> None:
    nodes, victim = deployment.nodes, deployment.victim
    (room_v,) = deployment.rooms_on(victim, 1, f"r6v-{time.monotonic_ns() % 10**6}")
    others = deployment.rooms_on(None, 3, f"r6o-{time.monotonic_ns() % 10**6}")
    made: list[CallClient] = []
    members: list[Member] = []
    probes: list[Probe] = []
    lefts: list[tuple[float, dict[str, Any]]] = []
    cpu: list[tuple[float, float]] = []  # (when, the three nodes' CPU % summed over 0.5 s)
    store = RedisBus(Settings(redis_cluster=deployment.cluster.seeds))
    try:
        for i, node in enumerate(nodes):
            member = Member(f"v{i}", await joined(node.room_url(room_v), f"v{i}", made))
            member.client.on("app-message", member.on_message)
            members.append(member)
        await see_each_other([m.client for m in members])
        for i, room in enumerate(others):
            sender = await joined(nodes[i].room_url(room), "probe-sender", made)
            receiver = await joined(nodes[(i + 1) % 3].room_url(room), "probe-receiver", made)
            probes.append(Probe(room, sender, receiver))
        for probe in probes:
            await see_each_other([probe.sender, probe.receiver])
        for client in made:
            client.on("participant-left", lambda e: lefts.append((time.monotonic(), e)))
        for worker in [*members, *probes]:
            worker.start()
        await asyncio.sleep(2.0)

        cpu_task = asyncio.create_task(sample_cpu(nodes, cpu))
        killed_at = time.monotonic()
        victim.kill()
        deadline = killed_at + 2 * WORKS_WITHIN_S  # long enough to report a figure past it
        works_at = float("inf")
        while time.monotonic() < deadline:  # until V works again for every member
            await asyncio.sleep(0.25)
            ends = [
                works_again_at(m, [o for o in members if o is not m], killed_at) for m in members
            ]
            if max(ends) < time.monotonic() - 1.0:  # and has kept working for a second
                works_at = max(ends)
                break
        await asyncio.sleep(3.0)
        end = time.monotonic()
        cpu_task.cancel()
        for worker in [*members, *probes]:
            await worker.stop()
        failover_ok = await asyncio.to_thread(deployment.cluster.is_ok)
        await store.start()
        agreed_s, problem, lacking = await agreement(store, room_v, members, 5.0)
    finally:
        for worker in [*members, *probes]:
            await worker.stop()
        for client in made:
            await client.close()
        await store.close()

    works_s = works_at - killed_at
    acked_again_s = max(acked_again_at(m, killed_at) for m in members) - killed_at
    window = [lat for p in probes for lat in p.latencies_ms(killed_at - 1.0, end)]
    before = [lat for p in probes for lat in p.latencies_ms(killed_at - 2.0, killed_at)]
    lost = sum(len(p.lost(end - 0.5)) for p in probes)
    refused = [t - killed_at for p in probes for t, _ in p.refused]
    refused_codes = dict(
        Counter(re.sub(r"[0-9.]+ s", "N s", c) for p in probes for _, c in p.refused)
    )
    v_failed = [w.sent - killed_at for m in members for w in m.writes if w.outcome != "ack"]
    v_errors = sorted({w.outcome for m in members for w in m.writes if w.outcome != "ack"})
    acked = sum(w.outcome == "ack" for m in members for w in m.writes)
    left = [(round(t - killed_at, 1), e.get("reason")) for t, e in lefts]
    print(
        f"\nR6 kill -9 of master :{victim.port} (node-0's lease, room {room_v}): "
        f"cluster failed over: {failover_ok}; V's writes acked again {acked_again_s:.2f} s "
        f"after; V works again (acked and delivered) {works_s:.2f} s after; "
        f"{len(v_failed)} V writes refused {v_errors} from {min(v_failed, default=0):.2f} s "
        f"to {max(v_failed, default=0):.2f} s"
    )
    print(
        f"R6 other rooms: p99 {p99(window):.1f} ms, max {max(window, default=0):.1f} ms over "
        f"{len(window)} messages from 1 s before the kill to {end - killed_at:.1f} s after "
        f"(before the kill: p99 {p99(before):.1f} ms, median "
        f"{statistics.median(before) if before else float('nan'):.1f} ms); {len(refused)} "
        f"refused {refused_codes} from {min(refused, default=0):.2f} s to "
        f"{max(refused, default=0):.2f} s; {lost} lost"
    )
    slow: dict[float, int] = {}  # 0.5 s buckets after the kill: slowest probe message (ms)
    for probe in probes:
        for n, sent in probe.sent.items():
            if n in probe.arrived and (probe.arrived[n] - sent) * 1000 >= P99_MS:
                bucket = round((sent - killed_at) * 2) / 2
                slow[bucket] = max(slow.get(bucket, 0), round((probe.arrived[n] - sent) * 1000))
    print(f"R6 other rooms, slowest message over 50 ms (s after kill, ms): {sorted(slow.items())}")
    print(
        "R6 the nodes' CPU % (summed) by 0.5 s after the kill: "
        f"{[(round(t - killed_at, 1), round(c)) for t, c in cpu]}"
    )
    undelivered = []
    for m in members:  # acked app messages that did not arrive, by receiver
        for o in members:
            missing = [
                round(w.sent - killed_at, 2)
                for w in m.writes
                if w.kind == "message" and w.outcome == "ack" and (m.name, w.n) not in o.received
            ]
            if o is not m and missing:
                undelivered.append(
                    f"{m.name} -> {o.name}: {len(missing)} from {missing[0]} s to {missing[-1]} s"
                )
    print(f"R6 acked V messages that never arrived: {undelivered or 'none'}")
    print(
        f"R6 {acked} acked writes in V; Redis holds every acked session-data key: "
        f"{not lacking}; Redis and every client agree {agreed_s:.2f} s after the writes "
        f"stopped {problem}; participant-left seen (s, reason): {left or 'none'}"
    )
    assert failover_ok, "the cluster did not fail over"
    assert acked_again_s <= WORKS_WITHIN_S, f"V's writes acked again only {acked_again_s:.2f} s"
    assert not lacking, f"acked session-data writes missing from Redis: {lacking[:5]}"
    bugs = []
    if works_s > WORKS_WITHIN_S:
        bugs.append(f"V works again {works_s:.2f} s after the kill; undelivered {undelivered}")
    if p99(window) >= P99_MS or refused or lost:
        bugs.append(f"other rooms: p99 {p99(window):.1f} ms, {len(refused)} refused, {lost} lost")
    if agreed_s == float("inf"):
        bugs.append(f"clients and Redis disagree: {problem}")
    if left:
        bugs.append(f"participants left: {left}")
    if bugs:
        raise KnownBug("; ".join(bugs))


# -- a failover that certainly loses acked writes --


async def test_r6_acked_writes_lost_by_the_failover_are_restored(deployment: Deployment) -> None:
    nodes, victim, cluster = deployment.nodes, deployment.victim, deployment.cluster
    (room_q,) = deployment.rooms_on(victim, 1, f"r6q-{time.monotonic_ns() % 10**6}")
    (replica,) = cluster.replicas_of(victim)
    made: list[CallClient] = []
    members: list[Member] = []
    store = RedisBus(Settings(redis_cluster=cluster.seeds))
    try:
        for i, node in enumerate(nodes):
            members.append(Member(f"q{i}", await joined(node.room_url(room_q), f"q{i}", made)))
        await see_each_other([m.client for m in members])
        q0, q1, q2 = members
        await q0.client.set_meeting_session_data({"before": 1}, "shallow-merge")
        await asyncio.sleep(0.5)  # replicated

        replica.pause()
        filler = log_key(room_q) + ":filler"  # same hash tag: same slot, same master
        assert cluster.master_of(filler) is victim
        await asyncio.to_thread(victim.command, "SET", filler, "x" * FILLER_BYTES, timeout=20)
        await q0.client.set_meeting_session_data({"lost": 1}, "shallow-merge")
        await q1.client.set_user_data({"lost": 1})
        await q2.client.next_event(
            "meeting-session-state-updated",
            predicate=lambda e: "lost" in e["meetingSessionState"]["data"],
        )
        victim.kill()
        replica.resume()
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.wait_ok, 30)
        failover_s = time.monotonic() - killed_at

        await store.start()
        events = await store.read_range(room_q, "0-0") or []
        original = [
            e
            for _, e in events
            if e.delta is not None
            and set(e.delta.session_data.entries) == {"lost"}
            and not e.delta.participants
        ]
        print(
            f"\nR6 lossy failover: cluster ok {failover_s:.2f} s after the kill; the write's "
            f"own event {'survived' if original else 'was lost'}"
        )
        assert not original, "the failover did not lose the write: nothing to check"

        healed_s = float("inf")
        started = time.monotonic()
        while time.monotonic() - started < HEAL_WITHIN_S:
            state = (await store.snapshot(room_q)).state
            q1_data = [
                p.user_data.value
                for p in state.present().values()
                if p.info and p.info.value.get("user_name") == "q1" and p.user_data
            ]
            if state.session_data.value().get("lost") == 1 and q1_data == [{"lost": 1}]:
                healed_s = time.monotonic() - started
                break
            await asyncio.sleep(0.1)
        views = [m.client.meeting_session_state()["data"] for m in members]
        stored = (await store.snapshot(room_q)).state.session_data.value()
    finally:
        if replica.paused:
            replica.resume()
        for client in made:
            await client.close()
        await store.close()

    print(
        f"R6 lossy failover: Redis has the lost writes back {healed_s:.2f} s after the "
        f"failover; Redis's session data {stored}; the clients' {views}"
    )
    assert all(view.get("lost") == 1 for view in views), "a client lost an acked write"
    if healed_s > HEAL_WITHIN_S:
        raise KnownBug(
            f"acked writes lost by the failover not restored in {HEAL_WITHIN_S:g} s: "
            f"Redis {stored}, clients {views}"
        )
