"""The load generator's receive side (bench/harness/loadgen.py), fed frames by hand: what it
counts as a delivery, and which latencies it records."""

from __future__ import annotations

from typing import Any

from bench.harness.common import make_key
from bench.harness.loadgen import Generator, Step

MS = 1_000_000
T0 = 1_000 * MS
RATE = 100.0  # msgs/s over every sender: message m is due at T0 + m * 10 ms


def generator(
    kind: str, participants: list[dict[str, Any]], senders: dict[str, list[int]]
) -> Generator:
    config = {"proto": "roomstate", "kind": kind, "payload": 256, "gen_index": 0,
              "total_senders": sum(len(r) for r in senders.values()),
              "participants": participants, "room_senders": senders}  # fmt: skip
    return Generator(config)


def person(gid: int, room: str, rank: int | None, node: int = 0) -> dict[str, Any]:
    return {"gid": gid, "room": room, "url": "ws://x", "node": node, "recv": True, "rank": rank}


def start(gen: Generator, warmup_s: float = 0.0) -> Step:
    step = Step({"step": 1, "t0": T0, "rate": RATE, "warmup_s": warmup_s, "duration_s": 1.0,
                 "drain_s": 1.0})  # fmt: skip
    gen._prepare(step)
    gen.step = step
    return step


def frame(sender: int, seq: int, total_senders: int, node: int = 0) -> bytes:
    sched = T0 + int((seq * total_senders + sender) * (1e9 / RATE))
    key = make_key(sched, 0, 1, sender, seq, node)
    return b'{"type":"x","participant":{"userData":{"k":"' + key.encode() + b'","p":""}}}'


def test_a_batched_update_ends_the_wait_of_the_writes_it_supersedes() -> None:
    # One writer (rank 0) in a room; the receiver gets writes 0 and 3 only (1 and 2 were
    # coalesced away): writes 1 and 2 waited until write 3 arrived, and count so.
    gen = generator("userdata", [person(0, "r", 0), person(1, "r", None)], {"r": [0]})
    step = start(gen)
    receiver = gen.people[1]
    gen._handle(receiver, frame(0, 0, 1))  # (received "now": latencies are large, but exact)
    gen._handle(receiver, frame(0, 3, 1))
    assert len(step.same_us) == 4, "writes 0, 1, 2 and 3"
    # the superseded ones were due 10 and 20 ms before write 3: they waited that much longer
    lat = sorted(step.same_us)
    assert lat[-1] - lat[0] >= 30_000 - 1_000  # write 0 waited 30 ms longer than write 3
    assert step.unique == 2 and receiver.got == 2, "two updates received"


def test_an_app_message_of_another_room_is_misrouted_not_a_delivery() -> None:
    people = [person(0, "a", 0), person(1, "a", None), person(2, "b", 1), person(3, "b", None)]
    gen = generator("app", people, {"a": [0], "b": [1]})
    step = start(gen)
    gen._handle(gen.people[1], frame(1, 0, 2))  # room b's message, at a member of room a
    assert (step.misrouted, step.unique) == (1, 0)
    gen._handle(gen.people[1], frame(0, 0, 2))  # its own room's
    assert (step.misrouted, step.unique) == (1, 1)
