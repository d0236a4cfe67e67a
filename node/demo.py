"""A console demo of two replicas of one room converging after concurrent writes."""

from __future__ import annotations

import orjson

from roomstate.crdt import HybridLogicalClock, RoomState


def show(label: str, room: RoomState) -> None:
    users = {sid: p.user_data.value if p.user_data else None for sid, p in room.present().items()}
    print(
        f"  {label}: userData={orjson.dumps(users).decode()} "
        f"sessionData={orjson.dumps(room.session_data.value()).decode()}"
    )


def main() -> None:
    """Two nodes write concurrently, exchange deltas in opposite orders, and agree."""
    a, b = RoomState(), RoomState()
    clock_a, clock_b = HybridLogicalClock("node-a"), HybridLogicalClock("node-b")
    now = 1_700_000_000_000
    where = {"node": "node-a", "incarnation": "1"}
    to_b = [a.join("ann", {"user_name": "Ann"}, where, {"hand": False}, clock_a.tick(now))]
    for delta in to_b:
        b.merge(delta)
    print("Two replicas of one room; node-b's clock runs 40 ms behind node-a's.")
    to_b = [
        a.set_user_data("ann", {"hand": True}, clock_a.tick(now + 5)),
        a.merge_session_data({"topic": "CRDTs", "speaker": "ann"}, clock_a.tick(now + 6)),
    ]
    to_a = [
        b.replace_session_data({"topic": "HLCs"}, clock_b.tick(now - 40 + 7)),
        b.merge_session_data({}, clock_b.tick(now - 40 + 8), ("speaker",)),
    ]
    print("After concurrent writes, before exchanging deltas:")
    show("node-a", a)
    show("node-b", b)
    for delta in reversed(to_a):
        a.merge(delta)
    for delta in to_b:
        b.merge(delta)
    print("After exchanging deltas (node-a receives them in reverse order):")
    show("node-a", a)
    show("node-b", b)
    print(f"Converged: {a == b}")
