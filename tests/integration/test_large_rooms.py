"""Large rooms on a real node: hidden participants (token claim p.hp, REST hasPresence), counts,
and raw frames."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import API_KEY, NodeProcess

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.TEXT, (message.type, message.data)
    frame = orjson.loads(message.data)
    assert isinstance(frame, dict)
    return frame


async def token(http: aiohttp.ClientSession, node: NodeProcess, room: str, **props: Any) -> str:
    body = {"properties": {"room_name": room, **props}}
    async with http.post(f"{node.url}/v1/meeting-tokens", json=body, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["token"])


async def join(
    http: aiohttp.ClientSession, node: NodeProcess, room: str, signed: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await http.ws_connect(node.ws_url(room))
    await ws.send_str(orjson.dumps({"type": "join", "id": "j", "token": signed}).decode())
    reply = await recv(ws)
    assert reply["type"] == "joined", reply
    return ws, reply


async def test_a_hidden_participant_is_in_the_room_but_never_listed_or_announced(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, room: str
) -> None:
    host, _ = await join(http, keyed_node, room, await token(http, keyed_node, room, is_owner=True))
    guest, _ = await join(http, keyed_node, room, await token(http, keyed_node, room))
    assert (await recv(host))["type"] == "participant-joined"
    hidden_token = await token(http, keyed_node, room, permissions={"hasPresence": False})
    hidden, reply = await join(http, keyed_node, room, hidden_token)
    sid = reply["sessionId"]
    assert reply["participants"][sid]["permissions"] == {"hasPresence": False}
    assert len(reply["participants"]) == 3
    assert reply["participantCounts"] == {"hidden": 1, "present": 2}

    # The guest hears of it only as counts; the owner sees its userData change, the guest not.
    counts = await recv(guest)
    assert counts == {
        "type": "participant-counts-updated",
        "participantCounts": {"hidden": 1, "present": 2},
    }
    await hidden.send_str('{"type":"set-user-data","id":1,"data":{"hand":true}}')
    assert await recv(hidden) == {"type": "ack", "id": 1}
    seen: list[dict[str, Any]] = []
    while not any(f["type"] == "participant-updated" for f in seen):
        seen.append(await recv(host))
    updated = next(f for f in seen if f["type"] == "participant-updated")
    assert updated["participant"]["session_id"] == sid
    assert updated["participant"]["userData"] == {"hand": True}

    # It can be addressed, and it can speak.
    await host.send_str(
        orjson.dumps({"type": "send-app-message", "id": 2, "data": "hi", "to": sid}).decode()
    )
    message = await recv(hidden)
    assert (message["type"], message["data"]) == ("app-message", "hi")
    await hidden.send_str('{"type":"send-app-message","id":3,"data":"q?"}')
    assert await recv(hidden) == {"type": "ack", "id": 3}
    heard = await recv(guest)
    assert (heard["type"], heard["fromId"]) == ("app-message", sid), "no userData news first"

    async with http.get(f"{keyed_node.url}/v1/rooms/{room}/presence", headers=AUTH) as r:
        presence = await r.json()
    assert presence["total_count"] == 2
    assert sid not in {p["id"] for p in presence["data"]}
    assert presence["participant_counts"] == {"hidden": 1, "present": 2}

    await hidden.close()
    await guest.send_str('{"type":"ping","id":"p"}')
    after = await recv(guest)
    while after["type"] == "participant-counts-updated":
        after = await recv(guest)
    assert after == {"type": "pong", "id": "p"}, "no participant-left about a hidden one"
    for ws in (host, guest):
        await ws.close()


@pytest.mark.parametrize(
    ("permissions", "words"),
    [("no", "'permissions' must be an object"), ({"hasPresence": 0}, "must be a boolean")],
)
async def test_a_bad_has_presence_is_refused_naming_the_field(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, room: str, permissions: Any, words: str
) -> None:
    body = {"properties": {"room_name": room, "permissions": permissions}}
    async with http.post(f"{keyed_node.url}/v1/meeting-tokens", json=body, headers=AUTH) as r:
        assert r.status == 400
        assert words in (await r.json())["info"]
