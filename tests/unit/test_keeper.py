"""The lease keeper's rounds (bus/keeper.py) against a scripted store: which answers make the
node fence, and when the keeper stops renewing on its own."""

from __future__ import annotations

import asyncio
import time

from roomstate.bus import LeaseKeeper, LeaseRound


class Store:
    """Answers renewals from a script (then "held"); records (incarnation, register) calls."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, bool]] = []

    async def renew(self, node_id: str, incarnation: str, ttl_ms: int, register: bool) -> str:
        self.calls.append((incarnation, register))
        if register:
            return "held"
        return self.answers.pop(0) if self.answers else "held"


def keeper(store: Store, rounds: list[LeaseRound], **kw: object) -> LeaseKeeper:
    incarnation = kw.pop("incarnation", lambda: "inc-1")
    return LeaseKeeper(
        node_id="n",
        incarnation=incarnation,  # type: ignore[arg-type]
        renew=store.renew,
        report=rounds.append,
        ttl_ms=200,
        renew_s=0.02,
        retry_s=0.01,
        **kw,  # type: ignore[arg-type]
    )


async def run_for(k: LeaseKeeper, seconds: float) -> None:
    task = asyncio.ensure_future(k.run())
    await asyncio.sleep(seconds)
    task.cancel()


async def test_a_taken_lease_is_reported_once_and_that_incarnation_never_renewed_again() -> None:
    store, rounds = Store("held", "taken"), []
    await run_for(keeper(store, rounds), 0.2)
    assert [r.state for r in rounds[:2]] == ["held", "taken"]
    assert len(rounds) == 2, "the keeper went on renewing an incarnation it gave up"
    assert store.calls == [("inc-1", False), ("inc-1", False)]


async def test_a_missing_lease_renewed_in_time_is_retaken() -> None:
    store, rounds = Store("missing"), []
    await run_for(keeper(store, rounds), 0.05)
    assert rounds[0].state == "held" and rounds[0].retaken
    assert store.calls[:2] == [("inc-1", False), ("inc-1", True)]


async def test_a_missing_lease_after_the_keeper_itself_stood_still_is_given_up() -> None:
    """A paused process: the keeper did not try for longer than the lease lasts."""
    store, rounds = Store("held", "missing"), []
    k = keeper(store, rounds)
    task = asyncio.ensure_future(k.run())
    while not rounds:
        await asyncio.sleep(0.005)
    time.sleep(0.3)  # the whole process stands still (ttl 0.2 s)
    await asyncio.sleep(0.1)
    task.cancel()
    assert [r.state for r in rounds] == ["held", "missing"]
    assert ("inc-1", True) not in store.calls, "a paused incarnation's lease was taken again"


async def test_a_new_incarnation_is_renewed_after_a_given_up_one() -> None:
    current = ["inc-1"]
    store, rounds = Store("taken"), []
    k = keeper(store, rounds, incarnation=lambda: current[0])
    task = asyncio.ensure_future(k.run())
    while not rounds:
        await asyncio.sleep(0.005)
    current[0] = "inc-2"  # the node fenced
    await asyncio.sleep(0.1)
    task.cancel()
    assert rounds[0] == LeaseRound("inc-1", "taken", rounds[0].sent)
    assert {r.incarnation for r in rounds[1:]} == {"inc-2"}
    assert all(r.state == "held" for r in rounds[1:])


async def test_the_keeper_stops_renewing_while_the_node_loop_does_not_turn() -> None:
    store, rounds = Store(), []
    stuck_since = time.monotonic()
    await run_for(keeper(store, rounds, loop_turned_at=lambda: stuck_since, stuck_s=0.05), 0.2)
    assert 0 < len(store.calls) <= 3, "renewals went on for a loop stuck past the bound"


async def test_a_store_that_does_not_answer_is_reported_and_retried() -> None:
    from roomstate.errors import BusError

    class Down(Store):
        async def renew(self, node_id: str, incarnation: str, ttl_ms: int, register: bool) -> str:
            self.calls.append((incarnation, register))
            raise BusError("connection refused")

    store, rounds = Down(), []
    await run_for(keeper(store, rounds), 0.1)
    assert len(rounds) >= 2
    assert all(r.state is None and "connection refused" in r.error for r in rounds)
