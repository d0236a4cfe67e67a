"""Hidden participants and counts, as properties of the replicas and of the room logic.

- Replicas that merged the same deltas (joins present or hidden, removals) in any order count
  the same, and count what a plain model counts.
- The room logic on two nodes sharing one log: participants join (present or hidden, owners or
  not), write userData and leave at either node, in random loop turns, with the log delivered
  to the other node at random moments. Each local participant is an SDK `CallState` fed the
  frames its node sends it (`participant-events` batches included). Whatever the interleaving:
  nobody is told of a hidden participant's join or leave, only owners of its userData, and once
  everything is delivered every participant's roster, userData and counts are the room's.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from roomstate.crdt import HybridLogicalClock, RoomState, Stamp
from roomstate.room import Output, Room, RoomConfig
from roomstate.room.roster import Roster
from roomstate.sdk.state import CallState
from roomstate.wire.events import decode_event, encode_event

from .strategies import counts

# -- replicas --

SIDS = ("s1", "s2", "s3", "s4", "s5")


@given(
    hidden=st.sets(st.sampled_from(SIDS)),
    removed=st.sets(st.sampled_from(SIDS)),
    data=st.data(),
)
def test_counts_are_the_same_whatever_order_the_deltas_came_in(
    hidden: set[str], removed: set[str], data: st.DataObject
) -> None:
    stamps = data.draw(
        st.lists(
            st.builds(Stamp, st.integers(0, 20), st.integers(0, 3), st.sampled_from("ab")),
            min_size=len(SIDS),
            max_size=len(SIDS),
            unique=True,
        )
    )
    deltas = []
    for sid, stamp in zip(SIDS, stamps, strict=True):
        info: dict[str, Any] = {"user_name": sid, "owner": False}
        if sid in hidden:
            info["hidden"] = True
        deltas.append(RoomState().join(sid, info, {"node": "a", "incarnation": "1"}, None, stamp))
    deltas.append(RoomState().remove(removed))
    replicas = []
    for _ in range(2):
        order = list(deltas)
        data.draw(st.randoms(use_true_random=False)).shuffle(order)
        replica = RoomState()
        for delta in order:
            replica.merge(delta)
        replicas.append(replica)

    live = set(SIDS) - removed
    model = {"hidden": len(live & hidden), "present": len(live - hidden)}
    assert counts(replicas[0]) == counts(replicas[1]) == model
    assert Roster(replicas[0]).counts() == Roster(replicas[1]).counts() == model


# -- the room logic on two nodes --

NODES = ("n1", "n2")
CONFIG = RoomConfig(user_data_interval_ms=50, session_data_interval_ms=50, counts_interval_ms=100)
# a storm's participant events batched per window, not per loop turn
WINDOWED = RoomConfig(
    user_data_interval_ms=50,
    session_data_interval_ms=50,
    counts_interval_ms=100,
    membership_batch_ms=40,
)
STEPS = st.one_of(
    st.tuples(st.just("join"), st.sampled_from(NODES), st.booleans(), st.booleans()),
    st.tuples(st.just("user-data"), st.integers(0, 20), st.integers(0, 3)),
    st.tuples(st.just("leave"), st.integers(0, 20)),
    st.tuples(st.just("deliver"), st.sampled_from(NODES)),
    st.tuples(st.just("turn")),  # the loop turn ends: the nodes send what is due now
    st.tuples(st.just("advance"), st.integers(1, 150)),
)


class Node:
    def __init__(self, name: str, config: RoomConfig) -> None:
        self.name = name
        origin = f"{name}/i1"
        self.room = Room("webinar", RoomState(), HybridLogicalClock(name), origin, config)
        self.read = 0  # how much of the shared log this node has read
        self.clients: dict[str, CallState] = {}  # its local participants' SDK states


class TwoNodes:
    """Two nodes' `Room`s sharing one log, and every local participant's view of the room."""

    def __init__(self, config: RoomConfig = CONFIG) -> None:
        self.now = 1_700_000_000_000
        self.nodes = {name: Node(name, config) for name in NODES}
        self.log: list[bytes] = []  # encoded bus events, in the order stored
        self.hidden: set[str] = set()
        self.owners: set[str] = set()
        self.live: dict[str, str] = {}  # session id -> its node, for those still in the room
        self.joined = 0

    # -- steps --

    def join(self, node: Node, hidden: bool, owner: bool) -> None:
        self.joined += 1
        sid = f"s{self.joined}"
        client = CallState()
        request = client.join()
        client.encode(request)
        info: dict[str, Any] = {"user_id": sid, "user_name": sid, "owner": owner}
        if hidden:
            info["hidden"] = True
            self.hidden.add(sid)
        if owner:
            self.owners.add(sid)
        out = node.room.join(sid, info, {"node": node.name, "incarnation": "i1"}, None, self.now)
        node.clients[sid] = client
        self.live[sid] = node.name
        # as the node does (edge/sessions.py): the joined frame first, then the output
        client.receive_frame(orjson.loads(node.room.joined_frames(request.id, sid)[0]))
        self.check_events(sid, client)
        self.run(node, out)

    def set_user_data(self, pick: int, value: int) -> None:
        if not self.live:
            return
        sid = sorted(self.live)[pick % len(self.live)]
        node = self.nodes[self.live[sid]]
        client = node.clients[sid]
        request = client.set_user_data(value)
        client.encode(request)
        self.run(node, node.room.set_user_data(sid, value, self.now))
        client.receive_frame({"type": "ack", "id": request.id})

    def leave(self, pick: int) -> None:
        if not self.live:
            return
        sid = sorted(self.live)[pick % len(self.live)]
        node = self.nodes[self.live.pop(sid)]
        del node.clients[sid]
        self.run(node, node.room.leave(sid, "left", self.now))

    def deliver(self, node: Node) -> None:
        if node.read < len(self.log):
            event = decode_event(self.log[node.read])
            node.read += 1
            self.run(node, node.room.receive(event, self.now, f"{node.read}-0"), publish=False)

    def turn(self) -> None:
        for node in self.nodes.values():
            deadline = node.room.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.run(node, node.room.poll(self.now))

    def settle(self) -> None:
        """Deliver the whole log everywhere, then let every timer run out."""
        for _ in range(20):
            for node in self.nodes.values():
                while node.read < len(self.log):
                    self.deliver(node)
            self.turn()
            self.now += 1000
            self.turn()
            if all(n.room.next_deadline() is None for n in self.nodes.values()) and all(
                n.read == len(self.log) for n in self.nodes.values()
            ):
                return
        raise AssertionError("the rooms never settled")

    # -- plumbing and checks --

    def run(self, node: Node, out: Output, publish: bool = True) -> None:
        for recipients, frame in out.sends:
            decoded = orjson.loads(frame)
            for sid in recipients:
                client = node.clients[sid]
                self.check_news(sid, client, decoded)
                client.receive_frame(decoded)
                self.check_events(sid, client)
        if publish:
            self.log.extend(encode_event(event) for event in out.publish)

    def check_news(self, sid: str, client: CallState, frame: dict[str, Any]) -> None:
        """A join or leave a participant is told of is news to it: no one it lists already
        joins, no one it does not list leaves (a batch's entries about itself aside)."""
        entries = frame["events"] if frame["type"] == "participant-events" else [frame]
        listed = set(client.participants())
        for entry in entries:
            subject = entry.get("participant", {}).get("session_id")
            if entry["type"] == "participant-joined" and subject != sid:
                assert subject not in listed, f"{sid} told again that {subject} joined"
                listed.add(subject)
            elif entry["type"] == "participant-left" and subject != sid:
                assert subject in listed, f"{sid} told {subject} left, never told it joined"
                listed.discard(subject)

    def check_events(self, sid: str, client: CallState) -> None:
        for name, event in client.events_received():
            if not name.startswith("participant-") or name == "participant-counts-updated":
                continue
            subject = event["participant"]["session_id"]
            assert subject != sid, f"{sid} was told of itself: {name}"
            if subject in self.hidden:
                assert name == "participant-updated", f"{sid} was told {name} of {subject}"
                assert sid in self.owners, f"{sid}, not an owner, got userData of {subject}"

    def check_settled(self) -> None:
        listed = {sid for sid in self.live if sid not in self.hidden}
        model = {"hidden": len(self.live.keys() & self.hidden), "present": len(listed)}
        for node in self.nodes.values():
            room = node.room
            assert room.participant_counts() == model, node.name
            assert set(room.participants()) == listed, node.name
            for sid, client in node.clients.items():
                view = client.participants()
                assert view["local"]["session_id"] == sid
                assert set(view) - {"local"} == listed - {sid}, f"{sid}'s roster"
                for other in listed - {sid}:
                    assert view[other]["userData"] == room.participant(other)["userData"], (
                        f"{sid}'s view of {other}'s userData"
                    )
                assert client.participant_counts() == model, f"{sid}'s counts"


@given(steps=st.lists(STEPS, max_size=40))
# Found by this test: s2's `joined` counted s1, who left in the same interval; the next counts
# equalled the last ones broadcast, so none went out and s2 kept {"present": 2}.
@example(
    steps=[("join", "n1", False, False), ("turn",), ("join", "n1", False, False), ("leave", 0)]
)
def test_hidden_participants_stay_unlisted_and_every_view_converges(
    steps: list[tuple[Any, ...]],
) -> None:
    run(TwoNodes(), steps)


@given(steps=st.lists(STEPS, max_size=40))
def test_with_a_batch_window_every_view_converges_too(steps: list[tuple[Any, ...]]) -> None:
    run(TwoNodes(WINDOWED), steps)


def run(world: TwoNodes, steps: list[tuple[Any, ...]]) -> None:
    for step in steps:
        kind = step[0]
        if kind == "join":
            world.join(world.nodes[step[1]], hidden=step[2], owner=step[3])
        elif kind == "user-data":
            world.set_user_data(step[1], step[2])
        elif kind == "leave":
            world.leave(step[1])
        elif kind == "deliver":
            world.deliver(world.nodes[step[1]])
        elif kind == "turn":
            world.turn()
        else:
            world.now += step[1]
            world.turn()  # the timers due by now fire
    world.settle()
    world.check_settled()
