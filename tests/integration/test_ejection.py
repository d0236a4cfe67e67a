"""Owner controls across nodes: an owner ejects a participant held by another node, a
non-owner is refused, and tokens with eje / ejt eject on time on whichever node holds the
connection. Three nodes on one Redis, with an API key (joins need tokens)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from roomstate.auth import make_token
from roomstate.sdk.client import BadRequest, CallClient, Forbidden

from .conftest import API_KEY
from .deployments import Deployment, start_deployment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = start_deployment(
        "3-nodes-redis", tmp_path_factory.mktemp("eject"), {"ROOMSTATE_API_KEY": API_KEY}
    )
    yield deployment
    deployment.stop()


async def joined(
    clients: list[CallClient], nodes: Deployment, at: int, room: str, name: str, **claims: Any
) -> CallClient:
    """A participant named `name` joined through node `at` with a token of `claims`."""
    client = CallClient()
    clients.append(client)
    token = make_token(API_KEY, room, user_name=name, **claims)
    await client.join(nodes.nodes[at].room_url(room), token=token)
    return client


async def sees_all(clients: list[CallClient], count: int) -> None:
    async with asyncio.timeout(5):
        while not all(len(c.participants()) == count for c in clients):
            await asyncio.sleep(0.02)


def left_reason(client: CallClient, sid: str | None) -> Any:
    for event in client.events("participant-left"):
        if event["participant"]["session_id"] == sid:
            return event.get("reason")
    return None


async def test_an_owner_ejects_a_participant_held_by_another_node(
    nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    owner = await joined(clients, nodes, 0, room, "host", owner=True)
    guest = await joined(clients, nodes, 1, room, "guest")
    watcher = await joined(clients, nodes, 2, room, "watcher")
    await sees_all([owner, guest, watcher], 3)
    sid, resume = guest.session_id, guest.resume_token
    assert sid is not None

    await owner.update_participant(sid, {"eject": True})

    error = await guest.next_event("error")
    assert error["error"]["type"] == "ejected" and "ejected" in error["errorMsg"]
    assert error["closeCode"] == 4004
    assert (await guest.next_event("left-meeting"))["reason"] == "ejected"
    for other in (owner, watcher):
        left = await other.next_event(
            "participant-left", predicate=lambda e: e["participant"]["session_id"] == sid
        )
        assert left["reason"] == "ejected"
        assert sid not in other.participants()
    # The ejected session cannot be taken up again: a resume becomes a fresh session.
    await guest.close()
    again = await guest.join(
        nodes.nodes[2].room_url(room),
        token=make_token(API_KEY, room, user_name="guest"),
        resume=resume,
    )
    assert again.get("resumed") is not True and again["sessionId"] != sid


async def test_a_non_owner_is_refused_and_a_participant_admin_may_eject(
    nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    plain = await joined(clients, nodes, 0, room, "plain")
    streamer = await joined(clients, nodes, 1, room, "streamer", can_admin=["streaming"])
    admin = await joined(clients, nodes, 2, room, "admin", can_admin=["participants"])
    await sees_all([plain, streamer, admin], 3)
    target = plain.session_id
    assert target is not None

    with pytest.raises(Forbidden, match="canAdmin includes 'participants'"):
        await streamer.update_participant(target, {"eject": True})
    with pytest.raises(Forbidden):
        await plain.update_participant(str(admin.session_id), {"eject": True})
    with pytest.raises(BadRequest, match="no participant 'nobody' is in the room"):
        await admin.update_participant("nobody", {"eject": True})
    await asyncio.sleep(0.3)
    assert plain.events("error") == [] and len(admin.participants()) == 3

    await admin.update_participant(target, {"eject": True})
    assert (await plain.next_event("left-meeting"))["reason"] == "ejected"
    await streamer.next_event(
        "participant-left", predicate=lambda e: e["participant"]["session_id"] == target
    )
    assert left_reason(streamer, target) == "ejected"


async def test_eject_after_elapsed_ejects_on_time_on_the_node_it_resumed_on(
    nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    watcher = await joined(clients, nodes, 0, room, "watcher")
    started = time.monotonic()
    timed = await joined(clients, nodes, 1, room, "timed", eject_after_elapsed=3)
    sid = timed.session_id
    await sees_all([watcher, timed], 2)
    await asyncio.sleep(1.5 - (time.monotonic() - started))
    # It drops and resumes on node 2 before its time: node 2 holds the connection and ejects it,
    # at the time set by the join (a resume does not start the count again).
    resume = timed.resume_token
    await timed.close()
    token = make_token(API_KEY, room, user_name="timed", eject_after_elapsed=3)
    back = await timed.join(nodes.nodes[2].room_url(room), token=token, resume=resume)
    assert back["resumed"] is True and time.monotonic() - started < 2.5

    error = await timed.next_event("error", timeout=6)
    elapsed = time.monotonic() - started
    assert error["error"]["type"] == "ejected"
    assert 2.8 <= elapsed <= 4.2, elapsed
    left = await watcher.next_event(
        "participant-left", predicate=lambda e: e["participant"]["session_id"] == sid
    )
    assert left["reason"] == "ejected"
    # node 1, which held it first, let go of it: nothing more about it
    await asyncio.sleep(0.5)
    assert len(watcher.events("participant-left")) == 1


async def test_eject_at_token_exp_ejects_when_the_token_expires(
    nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    watcher = await joined(clients, nodes, 2, room, "watcher")
    exp = int(time.time()) + 3
    expiring = await joined(clients, nodes, 0, room, "expiring", exp=exp, eject_at_token_exp=True)
    lasting = await joined(clients, nodes, 1, room, "lasting", exp=exp)  # no ejt: stays
    sid = expiring.session_id
    await sees_all([watcher, expiring, lasting], 3)

    assert (await expiring.next_event("left-meeting", timeout=6))["reason"] == "ejected"
    assert exp - 0.2 <= time.time() <= exp + 1.5
    left = await watcher.next_event(
        "participant-left", predicate=lambda e: e["participant"]["session_id"] == sid
    )
    assert left["reason"] == "ejected"
    await asyncio.sleep(1.0)
    assert lasting.events("error") == [] and str(lasting.session_id) in watcher.participants()


async def test_a_participant_dropped_and_waiting_to_resume_can_be_ejected(
    nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    owner = await joined(clients, nodes, 0, room, "host", owner=True)
    guest = await joined(clients, nodes, 1, room, "guest")
    await sees_all([owner, guest], 2)
    sid, resume = guest.session_id, guest.resume_token
    assert sid is not None
    await guest.close()  # dropped: node 1 keeps it for the resume grace (1.5 s)
    await owner.update_participant(sid, {"eject": True})
    left = await owner.next_event(
        "participant-left", predicate=lambda e: e["participant"]["session_id"] == sid
    )
    assert left["reason"] == "ejected"
    again = await guest.join(
        nodes.nodes[1].room_url(room),
        token=make_token(API_KEY, room, user_name="guest"),
        resume=resume,
    )
    assert again.get("resumed") is not True and again["sessionId"] != sid
    await asyncio.sleep(2.0)  # past the grace: node 1 sends no second leave for it
    assert [left_reason(owner, sid)] == ["ejected"]
    assert len(owner.events("participant-left")) == 1


async def test_tokens_minted_over_rest_carry_the_eject_fields(
    nodes: Deployment, room: str, clients: list[CallClient], http: aiohttp.ClientSession
) -> None:
    async def minted(**properties: Any) -> str:
        async with http.post(
            f"{nodes.url}/v1/meeting-tokens",
            json={"properties": {"room_name": room, **properties}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as answer:
            assert answer.status == 200, await answer.text()
            return str((await answer.json())["token"])

    admin, timed, other = CallClient(), CallClient(), CallClient()
    clients.extend([admin, timed, other])
    await admin.join(
        nodes.nodes[0].room_url(room),
        token=await minted(user_name="admin", permissions={"canAdmin": ["participants"]}),
    )
    started = time.monotonic()
    await timed.join(
        nodes.nodes[1].room_url(room), token=await minted(user_name="t", eject_after_elapsed=2)
    )
    await other.join(nodes.nodes[2].room_url(room), token=await minted(user_name="other"))
    await sees_all([admin, timed, other], 3)
    await admin.update_participant(str(other.session_id), {"eject": True})
    assert (await other.next_event("left-meeting"))["reason"] == "ejected"
    assert (await timed.next_event("left-meeting", timeout=5))["reason"] == "ejected"
    assert 1.8 <= time.monotonic() - started <= 3.5
