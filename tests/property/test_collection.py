"""Forgetting removals (docs/crdt.md): the laws still hold with collection, under the rule.

`CollectingConvergence` is the convergence machine (test_convergence.py) with time made explicit:
every message remembers when it was sent, and each replica may `collect` at its own clock
whenever the rule allows it: nothing sent before the new floor (less the drift bound) is still
on its way to anyone, or owed by a resync. Besides the writes, deliveries, duplicates, drops and
resyncs of the base machine, a replica may lose its data (a store restarted empty: every other
replica merges its state back), and an old copy of a replica may be merged back into another:
into one with a floor at any age, into one without only while younger than half the horizon
(a node out of touch that long fences). Checked:

- no replica shows again a participant whose removal it had seen;
- merge stays commutative, associative and idempotent between the replicas, tombstones aside;
- after settling, all replicas show the same state, and the model's.

`TooEarly` collects whenever it likes; Hypothesis must find a run where that breaks convergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from roomstate.crdt import RoomState, Stamp, decode, encode, from_obj, to_obj
from roomstate.room.roster import Roster

from .strategies import canonical, json_values, objects
from .test_convergence import DRIFT, Message, RoomConvergence

KEEP_MS = 1000  # the horizon of these runs (the node's is 120 s)


def shown(state: RoomState) -> bytes:
    """A state as canonical bytes without what collection may forget: the removed ids and the
    session-data tombstones (what replicas show, and every record they hold)."""
    obj = to_obj(state)
    obj["r"] = []
    obj["m"]["d"] = {}
    return canonical(from_obj(obj, RoomState))


def joined(a: RoomState, *others: RoomState) -> RoomState:
    result = a.copy()
    for other in others:
        result.merge(other)
    return result


@dataclass
class Timed(Message):
    sent_ms: int = 0  # true time the message (or the write a resync owes) was sent


class CollectingConvergence(RoomConvergence):
    bounded = True  # collect only as the rule allows

    def __init__(self) -> None:
        super().__init__()
        # for each entry of `dropped`, when its message was sent (-inf: a whole state, after a
        # loss: all of it is owed)
        self.owed_since: list[float] = []
        self.holders: dict[str, int] = {}  # session id -> the replica that joined it
        self.knew: dict[int, set[str]] = {}  # replica -> every id it has seen removed
        self.old: list[tuple[int, int, bytes]] = []  # (saved at, from replica, encoded state)

    # -- time --

    def may_collect(self, index: int) -> bool:
        """The rule: nothing sent before the new floor (less the drift bound) is still on its
        way to anyone; and a replica that lost its data has every other one merged back."""
        floor = self.wall(self.replicas[index]) - KEEP_MS
        owed = [receiver for (_, receiver), sent in zip(self.dropped, self.owed_since, strict=True)
                if sent == -math.inf]  # fmt: skip
        finite = [s for s in self.owed_since if s != -math.inf]
        sent = [m.sent_ms for m in self.network if isinstance(m, Timed)] + finite
        return index not in owed and floor <= min(sent, default=math.inf) - DRIFT

    def owe(self, sender: int, receiver: int, sent_ms: float) -> None:
        self.dropped.append((sender, receiver))
        self.owed_since.append(sent_ms)

    # -- the network, with send times --

    def publish(self, index: int, delta: RoomState) -> None:
        payload = encode(delta)
        for receiver in range(len(self.replicas)):
            if receiver != index:
                self.network.append(Timed(index, receiver, payload, self.now_ms))

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        message = self.network[data.draw(st.integers(0, len(self.network) - 1))]
        assert isinstance(message, Timed)
        self.network.append(
            Timed(message.sender, message.receiver, message.payload, message.sent_ms)
        )

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        message = self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))
        assert isinstance(message, Timed)
        self.owe(message.sender, message.receiver, message.sent_ms)

    @precondition(lambda self: self.dropped)
    @rule(data=st.data())
    def resync(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.dropped) - 1))
        sender, receiver = self.dropped.pop(index)
        self.owed_since.pop(index)
        self.resync_pair(sender, receiver)

    # -- writes as nodes make them --

    @rule(data=st.data(), user_data=json_values, hidden=st.booleans())
    def join(self, data: st.DataObject, user_data: Any, hidden: bool) -> None:
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        before = self.next_session
        super().join(data, user_data, hidden)
        self.holders[f"s{before}"] = index

    @rule(data=st.data(), value=json_values)
    def set_user_data(self, data: st.DataObject, value: Any) -> None:
        """Only the node holding a participant writes its userData, and not once it is
        removed (a node-lost removal fences the holder)."""
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        replica = self.replicas[index]
        mine = [
            sid
            for sid in self.visible(replica)
            if self.holders.get(sid) == index and sid not in self.removed
        ]
        if not mine:
            return
        sid = data.draw(st.sampled_from(mine))
        stamp = replica.clock.tick(self.wall(replica))
        self.publish(index, replica.state.set_user_data(sid, value, stamp))
        self.user_data[sid].append((stamp, value))

    # -- collection, loss, old replicas --

    @rule(data=st.data())
    def collect(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        replica = self.replicas[index]
        now = self.wall(replica)
        if self.bounded and not self.may_collect(index):
            return  # something older than the floor may still arrive: not allowed now
        replica.state.collect(now, KEEP_MS, DRIFT)

    @rule(ms=st.integers(300, 1500))
    def advance_time_a_lot(self, ms: int) -> None:
        self.now_ms += ms

    @rule(ms=st.integers(0, 2 * KEEP_MS))
    def catch_up_then_collect_everywhere(self, ms: int) -> None:
        """The network catches up, time passes, and every replica collects."""
        self.heal()
        self.now_ms += ms
        for replica in self.replicas:
            replica.state.collect(self.wall(replica), KEEP_MS, DRIFT)

    def heal(self) -> None:
        """Deliver every message, and every resync owed."""
        while self.network:
            self.receive(self.network.pop(0))
        while self.dropped:
            self.owed_since.pop(0)
            self.resync_pair(*self.dropped.pop(0))

    @rule(data=st.data())
    def lose_data(self, data: st.DataObject) -> None:
        """A replica restarts empty (a store without persistence): the others merge back."""
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        senders = [sender for sender, _ in self.dropped] + [m.sender for m in self.network]
        if index in senders:
            return  # others have yet to get some of its writes: it must lose only copies
        replica = self.replicas[index]
        replica.state = RoomState()
        replica.roster = Roster(replica.state)
        self.knew[index] = set()
        for sender in range(len(self.replicas)):
            if sender != index:
                self.owe(sender, index, -math.inf)

    @rule(data=st.data())
    def save_old_replica(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        self.old = [*self.old[-3:], (self.now_ms, index, encode(self.replicas[index].state))]

    @precondition(lambda self: self.old)
    @rule(data=st.data())
    def merge_old_replica_back(self, data: st.DataObject) -> None:
        saved_at, _, payload = data.draw(st.sampled_from(self.old))
        index = data.draw(st.integers(0, len(self.replicas) - 1))
        replica = self.replicas[index]
        if replica.state.floor_ms == 0 and self.now_ms - saved_at > KEEP_MS // 2:
            return  # a node out of touch for half the horizon fences instead
        delta = decode(payload, RoomState)
        for stamp in delta.stamps():
            replica.clock.observe(stamp)
        version = replica.state.membership_version
        changes = replica.state.merge(delta)
        replica.roster.track(version, changes.joined, changes.left)

    # -- checks --

    @invariant()
    def no_one_comes_back(self) -> None:
        for index, replica in enumerate(self.replicas):
            knew = self.knew.setdefault(index, set())
            knew |= replica.state.removed
            back = knew & replica.state.present().keys()
            assert not back, f"{replica.name} shows {sorted(back)} again"

    @rule(data=st.data())
    def merge_laws_hold_between_replicas(self, data: st.DataObject) -> None:
        if not self.bounded:
            return
        pick = st.integers(0, len(self.replicas) - 1)
        a, b, c = (self.replicas[data.draw(pick)].state for _ in range(3))
        assert shown(joined(a, b)) == shown(joined(b, a)), "commutative"
        assert shown(joined(joined(a, b), c)) == shown(joined(a, joined(b, c))), "associative"
        assert shown(joined(a, a)) == shown(a), "idempotent"

    @rule()
    def settle_and_check(self) -> None:
        self.heal()
        first = self.replicas[0].state
        for replica in self.replicas[1:]:
            assert shown(replica.state) == shown(first), (
                f"{replica.name} differs from {self.replicas[0].name}"
            )
        assert self.observed(first) == self.model()
        model_counts = {"hidden": 0, "present": 0}
        for info, _ in self.model()["participants"].values():
            model_counts["hidden" if info.get("hidden") else "present"] += 1
        for replica in self.replicas:
            assert replica.roster.counts() == model_counts, replica.name


TestCollectingConvergence = CollectingConvergence.TestCase


class TooEarly(CollectingConvergence):
    bounded = False


def test_collecting_too_early_is_caught() -> None:
    """Without the rule's bound, some run ends with replicas that differ or a participant back:
    the bound is what keeps convergence."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            TooEarly,
            settings=settings(
                max_examples=2000,
                stateful_step_count=40,
                database=None,
                derandomize=True,  # the same runs every time: a pass never hangs on luck
                phases=[Phase.generate],
                deadline=None,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            ),
        )


# -- the model test, with collection between deliveries --


@given(
    writes=st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]), json_values), max_size=8),
    removed=st.sets(st.sampled_from(["s1", "s2", "s3"])),
    session=objects,
    deleted=st.sets(st.sampled_from(["k1", "k2", "k3"])),
    data=st.data(),
)
def test_room_value_equals_the_model_with_collection_between_deliveries(
    writes: list[tuple[str, Any]],
    removed: set[str],
    session: dict[str, Any],
    deleted: set[str],
    data: st.DataObject,
) -> None:
    """Writes made at times 0..n (joins first, removals last), delivered in any order with the
    replica collecting between deliveries whenever its floor stays below every write still to
    come: the value is the model's, and each delivery of an old write again changes nothing."""
    n = len(writes)
    deltas: list[tuple[int, RoomState]] = []  # (when made, delta)
    for i, sid in enumerate(("s1", "s2", "s3")):
        stamp = Stamp(1000 * i, 0, "a")
        delta = RoomState().join(sid, {"user_name": sid}, {"node": "a"}, None, stamp)
        deltas.append((1000 * i, delta))
    for i, (sid, value) in enumerate(writes):
        made = 3000 + 1000 * i
        deltas.append((made, RoomState().set_user_data(sid, value, Stamp(made, 0, "a"))))
    made = 3000 + 1000 * n
    deltas.append((made, RoomState().merge_session_data(session, Stamp(made, 0, "a"))))
    deletion = RoomState().merge_session_data({}, Stamp(made + 1000, 0, "a"), tuple(deleted))
    deltas.append((made + 1000, deletion))
    deltas.append((made + 2000, RoomState().remove(removed)))
    data.draw(st.randoms(use_true_random=False)).shuffle(deltas)

    replica, delivered, now = RoomState(), [], 0
    for i, (made, delta) in enumerate(deltas):
        replica.merge(delta)
        delivered.append(delta)
        coming = [when for when, _ in deltas[i + 1 :]]
        now = data.draw(st.integers(max(now, made), max(now, made) + 3 * KEEP_MS), label="now")
        if now - KEEP_MS <= min(coming, default=math.inf):
            replica.collect(now, KEEP_MS, max_drift_ms=0)
        old = data.draw(st.sampled_from(delivered), label="late duplicate")
        before = shown(replica)
        replica.merge(old)
        assert shown(replica) == before, "an old write, again, changed the state"

    model: dict[str, Any] = {sid: None for sid in ("s1", "s2", "s3")}
    for sid, value in writes:
        model[sid] = value
    for sid in removed:
        del model[sid]
    seen = {sid: p.user_data.value if p.user_data else None for sid, p in replica.present().items()}
    assert seen == model
    assert replica.session_data.value() == {k: v for k, v in session.items() if k not in deleted}


def test_a_stale_replica_merged_into_a_store_that_lost_its_data_brings_back_the_forgotten() -> None:
    """Why a node out of touch for half the horizon must fence: the one resurrection the floor
    cannot stop. A store that lost its data has no floor; the fresh replicas forgot the removal;
    only a replica older than the horizon still holds the participant."""
    store, fresh = RoomState(), RoomState()
    fresh.join("s1", {"user_name": "s1"}, {"node": "a"}, None, Stamp(0, 0, "a"))
    stale = fresh.copy()
    fresh.remove(["s1"])
    fresh.collect(100, KEEP_MS, max_drift_ms=0)  # dated at 100
    fresh.collect(100 + 2 * KEEP_MS, KEEP_MS, max_drift_ms=0)  # forgotten
    assert not fresh.removed
    store.merge(fresh)
    store.merge(stale)  # merged back after the loss
    assert "s1" in store.present(), "the stale replica brings s1 back"
    fresh.merge(stale)
    assert "s1" not in fresh.present(), "a replica with a floor refuses it"
