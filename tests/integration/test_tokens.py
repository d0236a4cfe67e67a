"""Meeting tokens and the REST API key, against a node started with an API key."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import orjson
import pytest

from roomstate.auth import make_token

from .conftest import API_KEY, NodeProcess

pytestmark = pytest.mark.integration


async def join_with(
    http: aiohttp.ClientSession, node: NodeProcess, room: str, token: str | None, **fields: Any
) -> dict[str, Any]:
    """The reply to a join on a fresh connection (the connection is closed after)."""
    ws = await http.ws_connect(node.ws_url(room))
    frame = {"type": "join", "id": 1, **fields}
    if token is not None:
        frame["token"] = token
    await ws.send_str(orjson.dumps(frame).decode())
    reply = orjson.loads((await ws.receive(timeout=5)).data)
    await ws.close()
    assert isinstance(reply, dict)
    return reply


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_valid_token_joins_with_identity_from_the_token(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, room: str
) -> None:
    token = make_token(
        API_KEY, room, user_name="Host", user_id="u-42", owner=True, exp=int(time.time()) + 60
    )
    reply = await join_with(http, keyed_node, room, token, userName="spoofed")
    assert reply["type"] == "joined", reply
    me = reply["participants"][reply["sessionId"]]
    assert (me["user_name"], me["user_id"], me["owner"]) == ("Host", "u-42", True)


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("none", "unauthorized", "token is required"),
        ("other-room", "forbidden", "another room"),
        ("expired", "unauthorized", "expired"),
        ("not-yet-valid", "unauthorized", "not valid yet"),
        ("wrong-key", "unauthorized", "invalid meeting token"),
        ("tampered", "unauthorized", "invalid meeting token"),
        ("alg-none", "unauthorized", "invalid meeting token"),
    ],
)
async def test_bad_tokens_are_refused_and_nothing_is_delivered(
    http: aiohttp.ClientSession,
    keyed_node: NodeProcess,
    room: str,
    case: str,
    code: str,
    words: str,
) -> None:
    now = int(time.time())
    good = make_token(API_KEY, room, user_name="a")
    header, payload, signature = good.split(".")
    tokens = {
        "none": None,
        "other-room": make_token(API_KEY, room + "-other"),
        "expired": make_token(API_KEY, room, exp=now - 5),
        "not-yet-valid": make_token(API_KEY, room, nbf=now + 600),
        "wrong-key": make_token("another-key-of-at-least-32-bytes-length", room),
        "tampered": f"{header}.{b64(orjson.dumps({'r': room, 'o': True}))}.{signature}",
        "alg-none": b64(orjson.dumps({"alg": "none", "typ": "JWT"})) + f".{payload}.",
    }
    watcher = await http.ws_connect(keyed_node.ws_url(room))
    await watcher.send_str(orjson.dumps({"type": "join", "id": 1, "token": good}).decode())
    assert orjson.loads((await watcher.receive(timeout=5)).data)["type"] == "joined"

    reply = await join_with(http, keyed_node, room, tokens[case])
    assert (reply["type"], reply["code"]) == ("error", code), reply
    assert words in reply["message"]
    await watcher.send_str('{"type":"ping","id":"after"}')
    nxt = orjson.loads((await watcher.receive(timeout=5)).data)
    assert nxt == {"type": "pong", "id": "after"}, "nothing but the pong reached the room"
    await watcher.close()


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {API_KEY}", "Bearer"])
async def test_rest_without_the_right_key_is_401(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, room: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in [
        ("GET", f"/v1/rooms/{room}/presence"),
        ("GET", f"/v1/rooms/{room}/session-data"),
        ("POST", f"/v1/rooms/{room}/send-app-message"),
        ("POST", "/v1/meeting-tokens"),
    ]:
        async with http.request(method, keyed_node.url + path, headers=headers, json={}) as r:
            assert r.status == 401, (method, path)
            assert (await r.json())["error"] == "authorization-error"


async def test_rest_meeting_token_joins_its_room(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, room: str
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"properties": {"room_name": room, "user_name": "Viewer", "is_owner": False}}
    async with http.post(f"{keyed_node.url}/v1/meeting-tokens", json=body, headers=auth) as r:
        assert r.status == 200
        token = (await r.json())["token"]
    reply = await join_with(http, keyed_node, room, token)
    assert reply["participants"][reply["sessionId"]]["user_name"] == "Viewer"
    bad = {"properties": {"room_name": room, "exp": "tomorrow"}}
    async with http.post(f"{keyed_node.url}/v1/meeting-tokens", json=bad, headers=auth) as r:
        assert r.status == 400
        assert (await r.json())["info"] == "'exp' must be an integer (Unix seconds)"
    # a user name a join would refuse is refused here, not put in a token
    long_name = {"properties": {"room_name": room, "user_name": "x" * 257}}
    async with http.post(f"{keyed_node.url}/v1/meeting-tokens", json=long_name, headers=auth) as r:
        assert r.status == 400
        assert (await r.json())["info"] == "'user_name' must be at most 256 characters"


async def test_an_authorization_header_with_non_ascii_bytes_is_401_not_500(
    keyed_node: NodeProcess, room: str
) -> None:
    """A raw socket: HTTP clients refuse to send such a header."""
    host, port = keyed_node.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /v1/rooms/{room}/presence HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    )
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split()[1] == b"401", status_line
