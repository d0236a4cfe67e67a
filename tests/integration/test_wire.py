"""The wire format, pinned with raw WebSocket frames against a node process, and bad input."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import NodeProcess

pytestmark = pytest.mark.integration


async def recv(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0, counts: bool = False
) -> dict[str, Any]:
    """The next frame (`participant-counts-updated` skipped unless `counts`)."""
    while True:
        message = await ws.receive(timeout=timeout)
        assert message.type == aiohttp.WSMsgType.TEXT, (message.type, message.data, message.extra)
        frame = orjson.loads(message.data)
        assert isinstance(frame, dict)
        if counts or frame.get("type") != "participant-counts-updated":
            return frame


async def joined(
    http: aiohttp.ClientSession, node: NodeProcess, room: str, **fields: Any
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await http.ws_connect(node.ws_url(room))
    await ws.send_str(orjson.dumps({"type": "join", "id": "j", **fields}).decode())
    reply = await recv(ws)
    assert reply["type"] == "joined", reply
    return ws, reply


async def test_join_and_app_message_frames_are_exactly_as_documented(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    a, reply = await joined(http, node, room, userName="ann", userData={"hand": False})
    sid = reply["sessionId"]
    assert list(reply) == [
        "type",
        "id",
        "sessionId",
        "participants",
        "participantCounts",
        "meetingSessionState",
        "resumeToken",
        "seq",
    ]
    assert reply["resumeToken"].startswith(reply["sessionId"] + ".")
    me = reply["participants"][sid]
    assert set(me) == {"session_id", "user_id", "user_name", "userData", "joined_at", "owner"}
    assert (me["user_name"], me["userData"], me["owner"]) == ("ann", {"hand": False}, False)
    assert reply["meetingSessionState"] == {"data": {}}
    assert reply["participantCounts"] == {"hidden": 0, "present": 1}

    b, _ = await joined(http, node, room, userName="bob")
    joined_event = await recv(a)
    assert joined_event["type"] == "participant-joined"
    assert joined_event["participant"]["user_name"] == "bob"

    await a.send_str('{"type":"send-app-message","id":7,"data":{"emoji":"+1"},"to":"*"}')
    assert await recv(a) == {"type": "ack", "id": 7}
    message = await recv(b)
    assert isinstance(message.pop("seq"), str), "its position, quoted when resuming"
    assert message == {"type": "app-message", "data": {"emoji": "+1"}, "fromId": sid}
    await a.send_str('{"type":"ping","id":"p"}')
    assert await recv(a) == {"type": "pong", "id": "p"}
    await a.close()
    left = await recv(b)
    assert left["type"] == "participant-left" and left["participant"]["session_id"] == sid
    assert left["reason"] == "disconnected"
    await b.close()


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("not json", "bad-json", "not valid JSON"),
        ("[1, 2]", "bad-json", "JSON object"),
        ('{"id": 1}', "bad-request", "'type'"),
        ('{"type": "dance", "id": 1}', "unknown-type", "'dance'"),
        ('{"type": "send-app-message", "id": 1, "data": 1}', "not-joined", "join"),
        ('{"type": "join", "id": 1, "userName": 5}', "bad-request", "userName"),
        ('{"type": "join", "id": 1, "userData": "' + "x" * 5000 + '"}', "too-large", "5002 bytes"),
        ('{"type":"ping","id":1,"x":' + "[" * 40 + "]" * 40 + "}", "bad-request", "deeper than 32"),
        ('{"type":"ping","id":1,"x":' + "[" * 60000 + "]" * 60000 + "}", "bad-request", "deeper"),
    ],
)
async def test_bad_frames_get_their_documented_error_and_the_connection_stays_open(
    http: aiohttp.ClientSession, node: NodeProcess, room: str, frame: str, code: str, words: str
) -> None:
    ws = await http.ws_connect(node.ws_url(room))
    await ws.send_str(frame)
    error = await recv(ws)
    assert error["type"] == "error" and error["code"] == code, error
    assert words in error["message"]
    await ws.send_str('{"type":"ping","id":"still-there"}')
    assert await recv(ws) == {"type": "pong", "id": "still-there"}
    await ws.close()


async def test_errors_after_join_keep_the_session(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    ws, _ = await joined(http, node, room)
    bad = [
        ('{"type":"join","id":2}', "already-joined"),
        ('{"type":"set-user-data","id":3}', "bad-request"),
        ('{"type":"set-user-data","id":4,"data":"' + "y" * 5118 + '"}', "too-large"),
        ('{"type":"send-app-message","id":5,"data":1,"to":5}', "bad-request"),
        ('{"type":"send-app-message","id":6,"data":"' + "z" * 4095 + '"}', "too-large"),
        ('{"type":"set-meeting-session-data","id":7,"data":[]}', "bad-request"),
        ('{"type":"set-meeting-session-data","id":8,"data":{},"mergeStrategy":"x"}', "bad-request"),
    ]
    for frame, code in bad:
        await ws.send_str(frame)
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", code), (frame[:60], error)
        assert error["id"] == orjson.loads(frame)["id"]
    too_big = await recv_error_for(
        ws, '{"type":"set-user-data","id":9,"data":"' + "y" * 5118 + '"}'
    )
    assert too_big["message"] == "userData is 5120 bytes; the limit is 4096"
    await ws.send_str('{"type":"set-user-data","id":10,"data":{"ok":true}}')
    assert await recv(ws) == {"type": "ack", "id": 10}
    await ws.close()


async def recv_error_for(ws: aiohttp.ClientWebSocketResponse, frame: str) -> dict[str, Any]:
    await ws.send_str(frame)
    error = await recv(ws)
    assert error["type"] == "error", error
    return error


async def test_a_frame_over_128_kib_closes_with_1009_and_the_node_keeps_serving(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    ws, _ = await joined(http, node, room)
    other, _ = await joined(http, node, room)
    assert (await recv(ws))["type"] == "participant-joined"
    await ws.send_str('{"type":"ping","pad":"' + "x" * (128 * 1024) + '"}')
    message = await ws.receive(timeout=5)
    while message.type == aiohttp.WSMsgType.TEXT and "participant-counts-updated" in message.data:
        message = await ws.receive(timeout=5)  # the counts of the join may come first
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1009, message
    left = await recv(other)
    assert left["type"] == "participant-left"
    await other.send_str('{"type":"ping","id":1}')
    assert await recv(other) == {"type": "pong", "id": 1}
    await other.close()


async def test_a_binary_frame_closes_with_1003(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    ws = await http.ws_connect(node.ws_url(room))
    await ws.send_bytes(b'{"type":"ping"}')
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1003


async def test_replies_to_frames_before_a_binary_frame_arrive_before_its_close(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    ws = await http.ws_connect(node.ws_url(room))
    for i in range(20):  # sent together: the node reads them, and the binary frame, at once
        await ws.send_str(f'{{"type":"ping","id":{i}}}')
    await ws.send_bytes(b'{"type":"ping"}')
    for i in range(20):
        assert await recv(ws) == {"type": "pong", "id": i}
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1003


async def test_a_bad_room_name_is_refused_before_the_upgrade(
    http: aiohttp.ClientSession, node: NodeProcess
) -> None:
    async with http.get(f"{node.url}/v1/rooms/{'x' * 65}/ws") as response:
        assert response.status == 400
        assert "1-64 characters" in (await response.json())["info"]
