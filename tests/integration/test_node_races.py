"""A node's writes when the store fails once, or answers late while something else happens, on
a node in this process (its aiohttp app on a real socket, an in-memory bus the test can make
fail or wait); the clients are real. Each case left a ghost participant, a lost write or a
removed participant with an open connection (found in review)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from roomstate.bus import MemoryBus, Snapshot
from roomstate.crdt import RoomState
from roomstate.edge.identity import LEASE_RENEW_S
from roomstate.errors import BusError
from roomstate.sdk.client import CallClient, ConnectionClosed, Unavailable
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent
from roomstate.wire.protocol import SetMeetingSessionData

from .inprocess import InProcessNode, node_in_process

pytestmark = pytest.mark.integration

ROOM = "races"


class FaultyBus(MemoryBus):
    """The in-memory bus, with rules for its next publishes: `add(match)` makes the next
    publish whose event `match`es wait for `hold` (if given; `reached[match]` is set when it
    is there), then fail with BusError (`fail`) or go on. `hold_snapshot` makes the next
    snapshot wait for `go_on` (`holding` is set when it is there)."""

    def __init__(self) -> None:
        super().__init__()
        self.rules: list[tuple[Callable[[BusEvent], bool], asyncio.Event | None, bool]] = []
        self.reached: dict[Callable[[BusEvent], bool], asyncio.Event] = {}
        self.hold_snapshot = False
        self.holding = asyncio.Event()
        self.go_on = asyncio.Event()

    def add(
        self,
        match: Callable[[BusEvent], bool],
        hold: asyncio.Event | None = None,
        fail: bool = False,
    ) -> None:
        self.reached[match] = asyncio.Event()
        self.rules.append((match, hold, fail))

    async def publish(self, room: str, event: BusEvent, only_if_at: Any = None) -> str | None:
        for i, (match, hold, fail) in enumerate(self.rules):
            if match(event):
                del self.rules[i]
                self.reached[match].set()
                if hold is not None:
                    await hold.wait()
                if fail:
                    raise BusError("the store failed (test)")
                break
        return await super().publish(room, event, only_if_at)

    async def snapshot(self, room: str) -> Snapshot:
        if self.hold_snapshot:
            self.hold_snapshot = False
            self.holding.set()
            await self.go_on.wait()
        return await super().snapshot(room)


async def leave_unstored(it: InProcessNode, bus: FaultyBus) -> CallClient:
    """A participant who joined, then left with a leave the store failed to take. Returns
    her client."""
    ada = CallClient()
    await ada.join(it.url)
    bus.add(removes, fail=True)
    await ada.leave()
    return ada


async def join_and_drop(it: InProcessNode) -> tuple[CallClient, str]:
    """A participant who joined, then dropped: once this returns the node waits for her
    resume. Returns her client and session id."""
    ada = CallClient()
    await ada.join(it.url)
    sid = ada.session_id
    assert sid is not None
    await ada.close()
    for _ in range(200):
        if it.node.sessions.is_away(sid):
            return ada, sid
        await asyncio.sleep(0.01)
    raise AssertionError(f"{sid} is not waited for")


def removes(event: BusEvent) -> bool:
    return event.delta is not None and bool(event.delta.removed)


def moves(event: BusEvent) -> bool:
    return event.delta is not None and any(
        p.location is not None and p.info is None for p in event.delta.participants.values()
    )


async def test_a_leave_that_could_not_be_stored_is_merged_back_after_the_room_closed() -> None:
    # The room closed before the leave was published; when that failed, the upkeep skipped
    # the closed room: the participant stayed present in the store for as long as the node ran.
    bus = FaultyBus()
    async with node_in_process(Settings(), ROOM, bus) as it:
        ada = await leave_unstored(it, bus)
        assert ROOM not in it.node.rooms
        await it.node.membership.restore_lost_rooms()  # the upkeep's merge-back
        async with CallClient() as late:
            joined = await late.join(it.url)
        assert ada.session_id not in joined["participants"], "a ghost"


async def test_a_grace_end_that_could_not_be_stored_is_tried_again() -> None:
    bus = FaultyBus()
    async with (
        node_in_process(Settings(resume_grace_s=0.2), ROOM, bus) as it,
        CallClient() as stay,
    ):
        await stay.join(it.url)
        ada = CallClient()
        await ada.join(it.url)
        bus.add(removes, fail=True)
        await ada.close()  # dropped: leaves when the grace is over, if that is stored
        left = await stay.next_event("participant-left", timeout=5)
        assert left["participant"]["session_id"] == ada.session_id
        assert ada.session_id not in (await bus.snapshot(ROOM)).state.present()


async def test_a_grace_ending_while_a_resume_is_stored_does_not_remove_the_participant() -> None:
    bus = FaultyBus()
    async with (
        node_in_process(Settings(resume_grace_s=30), ROOM, bus) as it,
        CallClient() as stay,
    ):
        await stay.join(it.url)
        ada, sid = await join_and_drop(it)
        go = asyncio.Event()
        bus.add(moves, hold=go)
        resuming = asyncio.ensure_future(ada.join(it.url, resume=ada.resume_token))
        await asyncio.wait_for(bus.reached[moves].wait(), 5)
        await it.node.sessions.grace_over(ROOM, sid)  # the timer fires meanwhile
        go.set()
        joined = await resuming
        assert joined["resumed"] is True
        assert sid in it.node.rooms[ROOM].state.present()
        stored = (await bus.snapshot(ROOM)).state
        assert sid in stored.present(), "removed in the store, resumed here"
        assert stay.events("participant-left") == []
        await ada.leave()


async def test_a_rest_write_stored_while_the_room_opens_here_reaches_its_clients() -> None:
    # The write went through a throwaway replica with this node's origin: the room hosted here
    # meanwhile skipped it as its own, and its clients never saw it.
    bus = FaultyBus()
    async with node_in_process(Settings(), ROOM, bus) as it:
        bus.hold_snapshot = True
        write = SetMeetingSessionData(None, {"from": "rest"}, "replace", ())
        rest = asyncio.ensure_future(it.node.rest_set_session_data(ROOM, write))
        await asyncio.wait_for(bus.holding.wait(), 5)
        async with CallClient() as ada:
            await ada.join(it.url)  # opens the room while the REST write's snapshot waits
            bus.go_on.set()
            await rest
            await ada.next_event(
                "meeting-session-state-updated",
                predicate=lambda e: e["meetingSessionState"]["data"] == {"from": "rest"},
                timeout=5,
            )


class PausingBus(FaultyBus):
    """A bus whose lease confirmation the test sets: a snapshot that waits while the lease
    goes unconfirmed models a node stopped (SIGSTOP) during a join. It is shared (as the Redis
    bus is): other nodes could judge this one lost, so the node checks its lease."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.confirmed_at = time.monotonic()

    def lease_confirmed_at(self, room: str) -> float:
        return self.confirmed_at


async def test_a_join_whose_snapshot_waited_out_the_lease_is_refused() -> None:
    # The lease was checked once, before the snapshot: a node paused during it stored the join
    # under an incarnation the others had buried meanwhile.
    bus = PausingBus()
    async with node_in_process(Settings(), ROOM, bus) as it:
        bus.hold_snapshot = True
        client = CallClient()
        joining = asyncio.ensure_future(client.join(it.url))
        await asyncio.wait_for(bus.holding.wait(), 5)
        bus.confirmed_at = time.monotonic() - 6  # the node was stopped for 6 s meanwhile
        bus.go_on.set()
        with pytest.raises(Unavailable, match="has not renewed its lease"):
            await joining
        assert (await bus.snapshot(ROOM)).state.present() == {}, "nothing stored"
        await client.leave()


async def test_a_grace_end_retried_while_a_resume_is_stored_does_not_remove_it_later() -> None:
    # The timer fired; its removal failed while the resume (which found no grace to claim)
    # stored its move; the retry was armed and removed the resumed participant a second later.
    bus = FaultyBus()
    async with (
        node_in_process(Settings(resume_grace_s=30), ROOM, bus) as it,
        CallClient() as stay,
    ):
        await stay.join(it.url)
        ada, sid = await join_and_drop(it)
        removal_fails, move_goes = asyncio.Event(), asyncio.Event()
        bus.add(removes, hold=removal_fails, fail=True)
        bus.add(moves, hold=move_goes)
        grace = asyncio.ensure_future(it.node.sessions.grace_over(ROOM, sid))  # the timer fires
        await asyncio.wait_for(bus.reached[removes].wait(), 5)
        resuming = asyncio.ensure_future(ada.join(it.url, resume=ada.resume_token))
        await asyncio.wait_for(bus.reached[moves].wait(), 5)
        removal_fails.set()
        await grace
        move_goes.set()
        assert (await resuming)["resumed"] is True
        await asyncio.sleep(LEASE_RENEW_S + 0.3)  # a retry would have run by now
        assert sid in (await bus.snapshot(ROOM)).state.present()
        assert stay.events("participant-left") == []
        await ada.leave()


async def test_a_grace_end_retried_after_its_room_closed_is_still_stored() -> None:
    # The room closed while the removal was out (its last other participant left); the retry
    # found no hosted room and gave up: the participant stayed in the store for good.
    bus = FaultyBus()
    async with node_in_process(Settings(resume_grace_s=30), ROOM, bus) as it:
        bo = CallClient()
        await bo.join(it.url)
        _, sid = await join_and_drop(it)
        removal_fails = asyncio.Event()
        bus.add(removes, hold=removal_fails, fail=True)
        grace = asyncio.ensure_future(it.node.sessions.grace_over(ROOM, sid))
        await asyncio.wait_for(bus.reached[removes].wait(), 5)
        await bo.leave()  # the room closes: nobody here, nobody waited for
        removal_fails.set()
        await grace
        await asyncio.sleep(LEASE_RENEW_S + 0.3)  # the retry
        assert sid not in (await bus.snapshot(ROOM)).state.present(), "a ghost"


async def test_a_replica_merged_back_after_its_room_reopened_reaches_the_new_one() -> None:
    # ada's leave failed and the room closed; bo reopened it from a snapshot listing ada; the
    # upkeep merged the closed replica back under this node's origin, which the reopened room
    # skipped as its own: bo kept seeing ada. And a second failure in the reopened room took
    # the closed replica's place among those to merge back.
    bus = FaultyBus()
    async with node_in_process(Settings(), ROOM, bus) as it:
        ada = await leave_unstored(it, bus)
        async with CallClient() as bo:
            joined = await bo.join(it.url)
            assert ada.session_id in joined["participants"]  # the store still lists her
            bus.add(lambda e: e.delta is not None and bool(e.delta.participants), fail=True)
            with pytest.raises(Unavailable):
                await bo.set_user_data({"x": 1})
            await it.node.membership.restore_lost_rooms()
            assert ada.session_id not in (await bus.snapshot(ROOM)).state.present()
            left = await bo.next_event("participant-left", timeout=5)
            assert left["participant"]["session_id"] == ada.session_id
            assert ada.session_id not in bo.participants()


async def test_a_fence_while_a_resume_is_stored_closes_its_connection() -> None:
    # The move was stored under the old incarnation and the resume answered `resumed`, on a
    # room this node no longer hosted: every later request got not-joined, the socket stayed.
    bus = FaultyBus()
    async with node_in_process(Settings(resume_grace_s=30), ROOM, bus) as it:
        ada, _ = await join_and_drop(it)
        go = asyncio.Event()
        bus.add(moves, hold=go)
        resuming = asyncio.ensure_future(ada.join(it.url, resume=ada.resume_token))
        await asyncio.wait_for(bus.reached[moves].wait(), 5)
        await it.node.membership.fence()  # the lease was lost meanwhile
        go.set()
        with pytest.raises(ConnectionClosed) as closed:
            await resuming
        assert closed.value.close_code == 4002


async def test_a_leave_of_the_old_connection_while_a_resume_is_stored_makes_it_fresh() -> None:
    # The old connection, still open, left while the new one's move was stored: the resume
    # answered `resumed` for a participant the others had seen leave.
    bus = FaultyBus()
    async with node_in_process(Settings(), ROOM, bus) as it, CallClient() as again:
        old = CallClient()
        await old.join(it.url)
        sid = old.session_id
        move_goes, removal_goes = asyncio.Event(), asyncio.Event()
        bus.add(moves, hold=move_goes)
        bus.add(removes, hold=removal_goes)
        resuming = asyncio.ensure_future(again.join(it.url, resume=old.resume_token))
        await asyncio.wait_for(bus.reached[moves].wait(), 5)
        leaving = asyncio.ensure_future(old.leave())  # applied here at once, stored after
        await asyncio.wait_for(bus.reached[removes].wait(), 5)
        move_goes.set()
        joined = await resuming
        removal_goes.set()
        await leaving
        assert joined["resumed"] is False and joined["sessionId"] != sid, joined
        assert sid not in it.node.rooms[ROOM].state.present()


class LosingBus(FaultyBus):
    """A FaultyBus whose store can lose rooms: `lose(rooms)` empties their stored state (as its
    snapshots show it: from then on, only what is published after the loss) and has the next
    `lost_rooms` report them (once, as the Redis bus reports a new shard epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.just_lost: list[str] = []
        self.since_loss: dict[str, RoomState] = {}  # a lost room's state, from the loss on

    def lose(self, rooms: list[str]) -> None:
        for room in rooms:
            self.since_loss[room] = RoomState()
        self.just_lost = list(rooms)

    async def publish(self, room: str, event: BusEvent, only_if_at: Any = None) -> str | None:
        position = await super().publish(room, event, only_if_at)
        if position is not None and event.delta is not None and room in self.since_loss:
            self.since_loss[room].merge(event.delta)
        return position

    async def snapshot(self, room: str) -> Snapshot:
        snapshot = await super().snapshot(room)
        if room not in self.since_loss:
            return snapshot
        return Snapshot(self.since_loss[room].copy(), snapshot.position)

    async def lost_rooms(self, rooms: list[str]) -> list[str]:
        lost, self.just_lost = [r for r in self.just_lost if r in rooms], []
        return lost


async def test_every_lost_room_is_merged_back_when_the_first_merge_back_fails() -> None:
    # The store lost two rooms and refused the first merge-back (a Redis that lost its data
    # refuses writes until the node's lease, lost with it, is registered again). The upkeep
    # stopped at that room and, as the loss is reported once, never merged the second back.
    bus = LosingBus()
    async with node_in_process(Settings(), ROOM, bus) as it:
        other = it.url.replace(f"/rooms/{ROOM}/", f"/rooms/{ROOM}-b/")
        async with CallClient() as ada, CallClient() as bob:
            await ada.join(it.url)
            await bob.join(other)
            bus.lose([ROOM, f"{ROOM}-b"])
            bus.add(lambda e: e.delta is not None, fail=True)  # the first merge-back
            with pytest.raises(BusError):
                await it.node.membership.restore_lost_rooms()
            await it.node.membership.restore_lost_rooms()  # the next round
            for room, who in ((ROOM, ada), (f"{ROOM}-b", bob)):
                stored = (await bus.snapshot(room)).state
                assert who.session_id in stored.participants, f"{room} was not merged back"


def writes_user_data(event: BusEvent) -> bool:
    return event.delta is not None and any(
        p.user_data is not None and p.info is None for p in event.delta.participants.values()
    )


async def test_a_write_of_a_fenced_incarnation_is_not_merged_back_under_the_next() -> None:
    # A userData write was on its way to the store when the node fenced; the store then failed
    # it. The room was queued for merge-back after the fence had emptied the queue, and the
    # next upkeep stored it under the new incarnation, which the store's lease check lets by.
    bus = FaultyBus()
    go = asyncio.Event()
    async with node_in_process(Settings(), ROOM, bus) as it, CallClient() as ada:
        await fenced_during_a_write(it, bus, ada, go)


async def fenced_during_a_write(
    it: InProcessNode, bus: FaultyBus, ada: CallClient, go: asyncio.Event
) -> None:
    await ada.join(it.url)
    sid = ada.session_id
    assert sid is not None
    bus.add(writes_user_data, hold=go, fail=True)
    write = asyncio.create_task(ada.set_user_data({"v": "stale"}))
    await asyncio.wait_for(bus.reached[writes_user_data].wait(), 5)
    await it.node.membership.fence()
    go.set()
    with pytest.raises((ConnectionClosed, Unavailable)):
        await write
    assert not it.node.hosting.unsynced, "a replica of the fenced incarnation was queued"
    await it.node.membership.restore_lost_rooms()
    stored = (await bus.snapshot(ROOM)).state.participants.get(sid)
    assert stored is None or stored.user_data is None or stored.user_data.value != {"v": "stale"}, (
        "the old incarnation's write was stored under the new one"
    )


async def test_a_shutdown_keeps_its_lease_until_the_leaves_are_out() -> None:
    # Shutdown stopped renewing the lease before publishing the leaves: with thousands of
    # participants the last leaves came after it expired, and the store refuses those. Nor may
    # a node that is shutting down fence (it would close its clients with 4002, not 1012).
    bus = FaultyBus()
    go = asyncio.Event()
    async with node_in_process(Settings(), ROOM, bus) as it, CallClient() as ada:
        await ada.join(it.url)
        bus.add(removes, hold=go)  # ada's leave, published by the shutdown
        stopping = asyncio.create_task(it.node.shutdown())
        await asyncio.wait_for(bus.reached[removes].wait(), 5)
        membership = it.node.membership
        assert membership.renewing, "the lease is no longer renewed"
        # the lease is lost meanwhile (another incarnation of this node took it)
        await bus.renew_lease(it.node.node_id, "another-incarnation", 5000, register=True)
        incarnation = it.node.incarnation
        await asyncio.sleep(LEASE_RENEW_S + 0.3)  # a lease round
        assert it.node.incarnation == incarnation, "fenced while shutting down"
        go.set()
        await stopping
        assert not membership.renewing
