"""Convergence: replicas with skewed clocks, an unreliable network, and a plain model.

A `RuleBasedStateMachine` runs 3-5 replicas of one room. Each replica has its own HLC whose wall
clock is the shared true time plus a fixed skew within the drift bound. Rules write at a random
replica (join, present or hidden, leave, set userData, replace, shallow-merge, delete keys), and
the network then
delivers, duplicates, reorders or drops the encoded deltas; a dropped delta is made up for later
by a full-state resync (anti-entropy). When every message is delivered and every drop resynced,
all replicas must be equal, and equal to the model: the same writes applied to plain dicts in
stamp order. Each replica also keeps the room logic's `Roster` (who is listed, who is hidden) step
by step, as a node does: its counts must always be the replica's, and converge with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from roomstate.crdt import (
    DEFAULT_MAX_DRIFT_MS,
    HybridLogicalClock,
    RoomState,
    Stamp,
    decode,
    encode,
)
from roomstate.room.roster import Roster

from .strategies import KEYS, canonical, counts, json_values, objects

DRIFT = DEFAULT_MAX_DRIFT_MS


@dataclass
class Replica:
    name: str
    skew_ms: int  # this replica's wall clock minus true time
    clock: HybridLogicalClock
    state: RoomState = field(default_factory=RoomState)
    roster: Roster = field(init=False)  # kept step by step, as the room logic keeps it

    def __post_init__(self) -> None:
        self.roster = Roster(self.state)


@dataclass
class Message:
    sender: int
    receiver: int
    payload: bytes  # an encoded delta, as it would cross the network


class RoomConvergence(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now_ms = 1_700_000_000_000  # true time
        self.replicas: list[Replica] = []
        self.network: list[Message] = []
        self.dropped: list[tuple[int, int]] = []  # (sender, receiver) pairs owing a resync
        self.next_session = 0
        # The model: every write, with its stamp.
        self.joins: dict[str, tuple[Stamp, Any]] = {}
        self.user_data: dict[str, list[tuple[Stamp, Any]]] = {}
        self.removed: set[str] = set()
        self.session_ops: list[tuple[Stamp, str, dict[str, Any], tuple[str, ...]]] = []

    @initialize(skews=st.lists(st.integers(-DRIFT // 2, DRIFT // 2), min_size=3, max_size=5))
    def start(self, skews: list[int]) -> None:
        self.replicas = [
            Replica(f"n{i}", skew, HybridLogicalClock(f"n{i}")) for i, skew in enumerate(skews)
        ]

    # -- time and helpers --

    @rule(ms=st.integers(0, 300))
    def advance_time(self, ms: int) -> None:
        self.now_ms += ms

    def wall(self, replica: Replica) -> int:
        return self.now_ms + replica.skew_ms

    def publish(self, index: int, delta: RoomState) -> None:
        payload = encode(delta)
        for receiver in range(len(self.replicas)):
            if receiver != index:
                self.network.append(Message(index, receiver, payload))

    def visible(self, replica: Replica) -> list[str]:
        return sorted(replica.state.present())

    # -- writes --

    @rule(data=st.data(), user_data=json_values, hidden=st.booleans())
    def join(self, data: st.DataObject, user_data: Any, hidden: bool) -> None:
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        replica = self.replicas[index]
        sid = f"s{self.next_session}"
        self.next_session += 1
        stamp = replica.clock.tick(self.wall(replica))
        info = {"user_name": sid, "joined_at": stamp.wall_ms, "owner": False}
        if hidden:
            info["hidden"] = True  # as the node writes it: the key only for a hidden one
        location = {"node": replica.name, "incarnation": "1"}
        version = replica.state.membership_version
        self.publish(index, replica.state.join(sid, info, location, user_data, stamp))
        replica.roster.track(version, [sid], [])
        self.joins[sid] = (stamp, info)
        self.user_data[sid] = [(stamp, user_data)]

    @rule(data=st.data(), value=json_values)
    def set_user_data(self, data: st.DataObject, value: Any) -> None:
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        replica = self.replicas[index]
        present = self.visible(replica)
        if not present:
            return
        sid = data.draw(st.sampled_from(present))
        stamp = replica.clock.tick(self.wall(replica))
        self.publish(index, replica.state.set_user_data(sid, value, stamp))
        self.user_data[sid].append((stamp, value))

    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        replica = self.replicas[index]
        present = self.visible(replica)
        if not present:
            return
        sid = data.draw(st.sampled_from(present))
        version = replica.state.membership_version
        self.publish(index, replica.state.remove([sid]))
        replica.roster.track(version, [], [sid])
        self.removed.add(sid)

    @rule(
        data=st.data(),
        strategy=st.sampled_from(["replace", "shallow-merge", "delete"]),
        values=objects,
        deletes=st.lists(st.sampled_from(KEYS), max_size=2, unique=True),
    )
    def write_session_data(
        self, data: st.DataObject, strategy: str, values: dict[str, Any], deletes: list[str]
    ) -> None:
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        replica = self.replicas[index]
        stamp = replica.clock.tick(self.wall(replica))
        if strategy == "replace":
            delta = replica.state.replace_session_data(values, stamp)
            deletes = []
        elif strategy == "shallow-merge":
            delta = replica.state.merge_session_data(values, stamp, tuple(deletes))
        else:
            values = {}
            delta = replica.state.merge_session_data({}, stamp, tuple(deletes))
        self.publish(index, delta)
        self.session_ops.append((stamp, strategy, values, tuple(deletes)))

    # -- the network --

    def receive(self, message: Message) -> None:
        replica = self.replicas[message.receiver]
        delta = decode(message.payload, RoomState)
        for stamp in delta.stamps():
            replica.clock.observe(stamp)  # as a node does with what it reads (node/room/room.py)
        version = replica.state.membership_version
        changes = replica.state.merge(delta)
        replica.roster.track(version, changes.joined, changes.left)

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver any pending message: picking at random reorders."""
        self.receive(self.network.pop(data.draw(st.integers(0, len(self.network) - 1))))

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        message = self.network[data.draw(st.integers(0, len(self.network) - 1))]
        self.network.append(Message(message.sender, message.receiver, message.payload))

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        message = self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))
        self.dropped.append((message.sender, message.receiver))

    @precondition(lambda self: self.dropped)
    @rule(data=st.data())
    def resync(self, data: st.DataObject) -> None:
        sender, receiver = self.dropped.pop(data.draw(st.integers(0, len(self.dropped) - 1)))
        self.resync_pair(sender, receiver)

    def resync_pair(self, sender: int, receiver: int) -> None:
        """Anti-entropy: the receiver merges the sender's whole state."""
        self.receive(Message(sender, receiver, encode(self.replicas[sender].state)))

    # -- checks --

    @invariant()
    def removal_is_final_everywhere(self) -> None:
        for replica in self.replicas:
            assert not replica.state.removed & replica.state.participants.keys()
            assert replica.state.removed <= self.removed

    @invariant()
    def the_kept_counts_are_the_replicas_own(self) -> None:
        for replica in self.replicas:
            assert replica.roster.counts() == counts(replica.state), replica.name
            present = replica.state.present().items()
            listed = {sid for sid, p in present if p.info and "hidden" not in p.info.value}
            assert set(replica.roster.listed()) == listed, replica.name

    @invariant()
    def clocks_stay_within_the_drift_bound(self) -> None:
        for replica in self.replicas:
            assert replica.clock.last.wall_ms - self.wall(replica) <= DRIFT

    @rule()
    def settle_and_check(self) -> None:
        """Deliver everything, resync every drop, then every replica equals the model."""
        while self.network:
            self.receive(self.network.pop(0))
        while self.dropped:
            self.resync_pair(*self.dropped.pop(0))
        first = self.replicas[0].state
        for replica in self.replicas[1:]:
            assert canonical(replica.state) == canonical(first), (
                f"{replica.name} differs from {self.replicas[0].name}"
            )
        assert self.observed(first) == self.model()
        # counts converge with the replicas, and are the model's
        model_counts = {"hidden": 0, "present": 0}
        for info, _ in self.model()["participants"].values():
            model_counts["hidden" if info.get("hidden") else "present"] += 1
        for replica in self.replicas:
            assert replica.roster.counts() == model_counts, replica.name

    def teardown(self) -> None:
        if self.replicas:
            self.settle_and_check()

    def observed(self, state: RoomState) -> dict[str, Any]:
        return {
            "participants": {
                sid: (p.info.value if p.info else None, p.user_data.value if p.user_data else None)
                for sid, p in state.present().items()
            },
            "session_data": state.session_data.value(),
        }

    def model(self) -> dict[str, Any]:
        participants = {
            sid: (info, max(self.user_data[sid], key=lambda write: write[0])[1])
            for sid, (_, info) in self.joins.items()
            if sid not in self.removed
        }
        session: dict[str, Any] = {}
        for _, strategy, values, deletes in sorted(self.session_ops, key=lambda op: op[0]):
            if strategy == "replace":
                session = dict(values)
            session.update(values)
            for key in deletes:
                session.pop(key, None)
        return {"participants": participants, "session_data": session}


TestRoomConvergence = RoomConvergence.TestCase
