"""Large rooms end to end on every deployment of the semantic suite: hidden participants, the
owners' view of them, participant counts, and participant events batched per loop turn.

The same tests run on the four deployments of test_single_node.py (tests/integration/
deployments.py), each started once for this module with an API key: hidden participants need
meeting tokens (``p: {"hp": false}``). Each room's participants are spread over the nodes, so
what a hidden participant does crosses the bus. Clients are the Python SDK's `CallClient`; where
the SDK hides what the node sent (a `participant-events` frame is unpacked into single events),
raw WebSocket frames are read.

Nothing waits a fixed time except to show that something did NOT arrive: the tests wait for
events or for a state, with a bound (`WITHIN_S`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from roomstate.auth import make_token
from roomstate.sdk.client import CallClient

from .conftest import API_KEY
from .deployments import TOPOLOGIES, Deployment, start_deployment

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The bound on waiting for a state that must come: the counts interval (1 s, the default) twice
# over, with room for a loaded test machine. A wait, never a measure of speed.
WITHIN_S = 5.0
PARTICIPANT_EVENTS = ("participant-joined", "participant-updated", "participant-left")
PAGE_BYTES = 1024  # about five participants


@pytest.fixture(scope="module", params=TOPOLOGIES)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One keyed deployment per topology, shared by the module's tests (rooms differ)."""
    # a small page size: a roster of a few participants already comes in pages
    env = {"ROOMSTATE_API_KEY": API_KEY, "ROOMSTATE_ROSTER_PAGE_BYTES": str(PAGE_BYTES)}
    started = start_deployment(request.param, tmp_path_factory.mktemp(request.param), env)
    yield started
    started.stop()


def token(room: str, *, hidden: bool = False, owner: bool = False) -> str:
    return make_token(API_KEY, room, owner=owner, has_presence=not hidden)


@pytest.fixture
async def join(deployment: Deployment, room: str) -> AsyncIterator[Callable[..., Any]]:
    """`await join(hidden=..., owner=...)`: a client joined to the test's room on the next
    entry point (so the room spans the nodes); all are closed at the end."""
    made: list[CallClient] = []

    async def joined(*, hidden: bool = False, owner: bool = False) -> CallClient:
        client = CallClient()
        made.append(client)
        await client.join(deployment.room_url(room), token=token(room, hidden=hidden, owner=owner))
        return client

    yield joined
    for client in made:
        await client.close()


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait until `check()` holds, at most `WITHIN_S`."""
    deadline = time.monotonic() + WITHIN_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WITHIN_S} s: {what}")
        await asyncio.sleep(0.02)


async def counts_become(clients: list[CallClient], hidden: int, present: int) -> None:
    expected = {"hidden": hidden, "present": present}
    for client in clients:
        await eventually(
            lambda c=client: c.participant_counts() == expected,  # type: ignore[misc]
            f"{client.session_id} counts {expected}, has {client.participant_counts()}",
        )


def about(client: CallClient, session_id: str | None) -> list[str]:
    """The participant events `client` received about `session_id`, by name."""
    return [
        name
        for name in PARTICIPANT_EVENTS
        for event in client.events(name)
        if event["participant"]["session_id"] == session_id
    ]


def others(client: CallClient) -> set[str]:
    return {sid for sid in client.participants() if sid != "local"}


async def quiet(seconds: float = 0.5) -> None:
    """Let in-flight frames arrive (only where a test checks that something did NOT arrive)."""
    await asyncio.sleep(seconds)


# -- hidden participants --


async def test_a_hidden_participant_is_in_joined_only_for_itself(join: Any) -> None:
    host = await join(owner=True)
    guest = await join()
    hidden = await join(hidden=True)
    local = hidden.participants()["local"]
    assert local["session_id"] == hidden.session_id
    assert local["permissions"]["hasPresence"] is False
    assert others(hidden) == {host.session_id, guest.session_id}
    shown = hidden.participants().items()
    assert all(p["permissions"]["hasPresence"] for sid, p in shown if sid != "local")
    await counts_become([host, guest, hidden], hidden=1, present=2)
    for present in (host, guest):
        assert hidden.session_id not in present.participants()

    # A present participant joining later: not told of it either, but counts it; the hidden
    # one hears of the newcomer as of any present participant.
    late = await join()
    assert hidden.session_id not in late.participants()
    assert late.participant_counts() == {"hidden": 1, "present": 3}
    event = await hidden.next_event(
        "participant-joined", predicate=lambda e: e["participant"]["session_id"] == late.session_id
    )
    assert event["participant"]["permissions"]["hasPresence"] is True
    assert others(hidden) == {host.session_id, guest.session_id, late.session_id}
    await counts_become([host, guest, hidden, late], hidden=1, present=3)


async def test_nobody_is_told_of_a_hidden_participants_join_or_leave(
    join: Any, deployment: Deployment, room: str, http: aiohttp.ClientSession
) -> None:
    host, guest = await join(owner=True), await join()
    first, second = await join(hidden=True), await join(hidden=True)
    await counts_become([host, guest, first, second], hidden=2, present=2)
    # the REST presence lists the present ones only, and counts both kinds
    async with http.get(f"{deployment.url}/v1/rooms/{room}/presence", headers=AUTH) as r:
        presence = await r.json()
    assert presence["total_count"] == 2
    assert {p["id"] for p in presence["data"]} == {host.session_id, guest.session_id}
    assert presence["participant_counts"] == {"hidden": 2, "present": 2}

    await first.leave()
    await second.close()  # dropped: removed once its resume grace (1 s) is over
    await counts_become([host, guest], hidden=0, present=2)
    await quiet()
    for present in (host, guest):
        assert about(present, first.session_id) == []
        assert about(present, second.session_id) == []
        assert others(present) == {host.session_id, guest.session_id} - {present.session_id}


async def test_only_owners_get_a_hidden_participants_user_data_updates(join: Any) -> None:
    # over three nodes: the owners and the guests on two of them, the hidden one on the third
    guest, host, hidden = await join(), await join(owner=True), await join(hidden=True)
    cohost, guest2 = await join(owner=True), await join()
    await counts_become([guest, host, cohost, guest2], hidden=1, present=4)

    await hidden.set_user_data({"hand": "up"})
    for owner in (host, cohost):
        update = await owner.next_event(
            "participant-updated",
            predicate=lambda e: e["participant"]["session_id"] == hidden.session_id,
        )
        assert update["participant"]["userData"] == {"hand": "up"}
        assert update["participant"]["permissions"]["hasPresence"] is False
        assert hidden.session_id not in owner.participants()
    # Sent after the update, through the same room log: once it is in, an update to the
    # guests would have come before it (nothing overtakes a participant event).
    await hidden.send_app_message("after the hand")
    for plain in (guest, guest2):
        heard = await plain.next_event("app-message")
        assert heard == {
            "action": "app-message",
            "data": "after the hand",
            "fromId": hidden.session_id,
        }
        assert about(plain, hidden.session_id) == []
        assert hidden.session_id not in plain.participants()
    assert hidden.participants()["local"]["userData"] == {"hand": "up"}


async def test_app_messages_reach_a_hidden_participant_and_come_from_it(join: Any) -> None:
    ann, bob, hidden = await join(), await join(), await join(hidden=True)
    await counts_become([ann, bob, hidden], hidden=1, present=2)
    assert hidden.session_id is not None and ann.session_id is not None

    await ann.send_app_message("to everyone")
    await ann.send_app_message("to the hidden one", to=hidden.session_id)
    await ann.send_app_message("sentinel")
    assert [(await hidden.next_event("app-message"))["data"] for _ in range(3)] == [
        "to everyone",
        "to the hidden one",
        "sentinel",
    ]
    await bob.next_event("app-message", predicate=lambda e: e["data"] == "sentinel")
    assert [e["data"] for e in bob.events("app-message")] == ["to everyone", "sentinel"]

    await hidden.send_app_message({"q": "a question"})
    await hidden.send_app_message("for ann", to=ann.session_id)
    for listener in (ann, bob):
        heard = await listener.next_event(
            "app-message", predicate=lambda e: isinstance(e["data"], dict)
        )
        assert heard == {
            "action": "app-message",
            "data": {"q": "a question"},
            "fromId": hidden.session_id,
        }
    direct = await ann.next_event("app-message", predicate=lambda e: e["data"] == "for ann")
    assert direct["fromId"] == hidden.session_id
    await quiet()
    assert all(e["fromId"] != hidden.session_id for e in hidden.events("app-message"))
    assert "for ann" not in [e["data"] for e in bob.events("app-message")]


async def test_a_hidden_participants_session_data_write_reaches_everyone(join: Any) -> None:
    ann, bob, hidden = await join(), await join(), await join(hidden=True)
    await hidden.set_meeting_session_data({"poll": "open"})
    for client in (ann, bob, hidden):
        await client.next_event(
            "meeting-session-state-updated",
            predicate=lambda e: e["meetingSessionState"]["data"] == {"poll": "open"},
        )
    # and the other way: a present participant's write reaches the hidden one
    await ann.set_meeting_session_data({"votes": 3}, merge_strategy="shallow-merge")
    for client in (hidden, bob, ann):
        await client.next_event(
            "meeting-session-state-updated",
            predicate=lambda e: e["meetingSessionState"]["data"] == {"poll": "open", "votes": 3},
        )
        assert client.meeting_session_state() == {"data": {"poll": "open", "votes": 3}}


# -- participant events batched per loop turn --


class Observer:
    """A raw WebSocket participant: every frame the node sends it, and the roster they make."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, joined: dict[str, Any]) -> None:
        self.ws = ws
        self.session_id: str = joined["sessionId"]
        self.roster = {sid for sid in joined["participants"] if sid != self.session_id}
        self.counts: dict[str, int] = joined["participantCounts"]
        self.frames: list[dict[str, Any]] = []
        self.pages = 1  # frames the roster of `joined` came in

    @classmethod
    async def join(cls, http: aiohttp.ClientSession, url: str, signed: str) -> Observer:
        ws = await http.ws_connect(url)
        await ws.send_str(orjson.dumps({"type": "join", "id": "j", "token": signed}).decode())
        reply = orjson.loads((await ws.receive(timeout=WITHIN_S)).data)
        assert reply["type"] == "joined", reply
        pages = 1
        more = reply.get("paged") is True
        while more:  # the rest of the roster comes first, before any other frame
            page = orjson.loads((await ws.receive(timeout=WITHIN_S)).data)
            assert page["type"] == "participants-page", page
            assert len(orjson.dumps(page["participants"])) <= PAGE_BYTES
            reply["participants"].update(page["participants"])
            pages, more = pages + 1, page["last"] is not True
        observer = cls(ws, reply)
        observer.pages = pages
        return observer

    def apply(self, event: dict[str, Any]) -> None:
        sid = event["participant"]["session_id"]
        if sid == self.session_id:
            return  # (a batch lists the recipient's own events too)
        if event["type"] == "participant-left":
            self.roster.discard(sid)
        elif event["type"] == "participant-joined":
            self.roster.add(sid)

    async def read_until(self, done: Callable[[Observer], bool], what: str) -> None:
        deadline = time.monotonic() + WITHIN_S
        while not done(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not within {WITHIN_S} s: {what}; frames {self.frames}")
            try:
                message = await self.ws.receive(timeout=left)
            except TimeoutError:
                continue
            assert message.type == aiohttp.WSMsgType.TEXT, (message.type, message.data)
            frame = orjson.loads(message.data)
            self.frames.append(frame)
            if frame["type"] == "participant-events":
                for event in frame["events"]:
                    self.apply(event)
            elif frame["type"] in PARTICIPANT_EVENTS:
                self.apply(frame)
            elif frame["type"] == "participant-counts-updated":
                self.counts = frame["participantCounts"]


async def test_a_burst_of_joins_ends_with_every_roster_and_count_right(
    join: Any, deployment: Deployment, room: str, http: aiohttp.ClientSession
) -> None:
    # raw observers, one per entry point (on each node), an owner and a plain one
    observers = [
        await Observer.join(http, deployment.ws_url(room), token(room, owner=i % 2 == 0))
        for i in range(max(2, len(deployment.entries)))
    ]
    watcher = await join()  # and one through the SDK
    kinds = [False, True, False, False, True, False, True, False]  # hidden?
    burst = await asyncio.gather(*(join(hidden=hidden) for hidden in kinds))

    present = {o.session_id for o in observers} | {watcher.session_id}
    present |= {c.session_id for c, hidden in zip(burst, kinds, strict=True) if not hidden}
    counts = {"hidden": kinds.count(True), "present": len(present)}
    for observer in observers:
        await observer.read_until(
            lambda o: o.roster == present - {o.session_id} and o.counts == counts,
            f"observer {observer.session_id}: roster and counts",
        )
    everyone = [watcher, *burst]
    for client in everyone:
        expected = present - {client.session_id}
        await eventually(
            lambda c=client, e=expected: others(c) == e,  # type: ignore[misc]
            f"{client.session_id}'s roster",
        )
    await counts_become(everyone, **counts)

    # Batched or single, each participant event is the frame it would be alone, and none is
    # about a hidden participant.
    hidden_ids = {c.session_id for c, hidden in zip(burst, kinds, strict=True) if hidden}
    for observer in observers:
        for frame in observer.frames:
            if frame["type"] == "participant-events":
                assert len(frame["events"]) >= 2, frame
                events = frame["events"]
            elif frame["type"] in PARTICIPANT_EVENTS:
                events = [frame]
            else:
                continue
            for event in events:
                assert event["type"] == "participant-joined", event
                assert set(event) == {"type", "participant"}, event
                assert event["participant"]["session_id"] not in hidden_ids, event
        await observer.ws.close()


# -- a roster over the page size --


async def test_a_roster_over_the_page_size_reaches_a_late_joiner_whole(
    join: Any, deployment: Deployment, room: str, http: aiohttp.ClientSession
) -> None:
    present = [await join() for _ in range(9)]
    await join(hidden=True)
    expected = {client.session_id for client in present}
    late = await join()  # through the SDK: its roster comes in pages, unpacked
    await eventually(lambda: others(late) == expected, "the late joiner's roster")
    observer = await Observer.join(http, deployment.ws_url(room), token(room))
    await observer.read_until(
        lambda o: o.roster == expected | {late.session_id}, "the raw joiner's roster"
    )
    assert observer.pages >= 2, "nine present participants pass a 1 KiB page"
