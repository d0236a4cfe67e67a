"""R3: a node paused (SIGSTOP) for 10 s, then resumed (SIGCONT), with writes waiting for it.

`tests/integration/test_multi_node.py::test_a_paused_node_fences_itself_and_no_ghost_comes_back`
covers the fencing itself (pause until the others see `node-lost`). This row adds what a pause
must not let through: the writes a client sent to the node while it was stopped, read by the
node after SIGCONT while it still carries its old incarnation. None of them may be stored in
Redis or reach another participant; a join that waited through the pause must not make a ghost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from deploy.local.servers import RedisServer
from roomstate.bus.redis.bus import log_key, state_key
from roomstate.sdk.client import CallClient

from ..integration.deployments import Deployment, start_deployment
from .conftest import join, recv_json

pytestmark = pytest.mark.faults

PAUSE_S = 10.0


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[Deployment]:
    deployment = start_deployment("3-nodes-redis", tmp_path, {"ROOMSTATE_RESUME_GRACE_S": "3"})
    try:
        yield deployment
    finally:
        for node in deployment.nodes:  # a paused node must get SIGCONT before SIGTERM works
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGCONT)
        deployment.stop()


def _stream(redis: RedisServer, room: str) -> list[tuple[str, dict[str, Any]]]:
    """The room's log in Redis: (entry id, decoded event)."""
    entries = redis.command("XRANGE", log_key(room), "-", "+")
    assert isinstance(entries, list)
    result = []
    for entry in entries:
        assert isinstance(entry, list) and isinstance(entry[1], list)
        result.append((str(entry[0]), orjson.loads(str(entry[1][1]))))
    return result


async def try_join(
    http: aiohttp.ClientSession, ws_url: str, name: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """A WebSocket and the reply to its join, `joined` or `error`."""
    ws = await http.ws_connect(ws_url)
    await ws.send_str(orjson.dumps({"type": "join", "id": "join", "userName": name}).decode())
    while True:
        reply = await recv_json(ws, timeout=15)
        if reply.get("id") == "join":
            return ws, reply


def _state(redis: RedisServer, room: str) -> dict[str, str]:
    flat = redis.command("HGETALL", state_key(room))
    assert isinstance(flat, list)
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


async def test_r3_writes_sent_to_a_paused_node_are_not_accepted_under_its_old_incarnation(
    three_nodes: Deployment, room: str, clients: list[CallClient]
) -> None:
    redis = three_nodes.stop_list[0]
    assert isinstance(redis, RedisServer)
    paused_node = three_nodes.nodes[1]
    a, c = CallClient(), CallClient()
    clients += [a, c]
    await a.join(three_nodes.nodes[0].room_url(room), user_name="a")
    await c.join(three_nodes.nodes[2].room_url(room), user_name="c")
    async with aiohttp.ClientSession() as http:
        p, joined = await join(http, paused_node.ws_url(room), userName="p")
        p_sid = joined["sessionId"]
        for watcher in (a, c):  # p's join is stored and delivered: the pause comes after it
            await watcher.next_event(
                "participant-joined", predicate=lambda e: e["participant"]["session_id"] == p_sid
            )
        old = redis.command("GET", "rs:lease:node-1")
        assert isinstance(old, str)
        old_origin = f"node-1/{old}"

        # What is stored before the pause, by entry id: not by time, since p's join can be
        # stored in the same millisecond as the pause on a fast machine.
        stored_before = {entry_id for entry_id, _ in _stream(redis, room)}
        paused_node.proc.send_signal(signal.SIGSTOP)
        # Sent while the node is stopped: they wait in its socket buffer until SIGCONT.
        writes = [
            {"type": "set-user-data", "id": "u", "data": {"stale": True}},
            {"type": "set-meeting-session-data", "id": "s", "data": {"stale": True}},
            {"type": "send-app-message", "id": "m", "data": "stale", "to": "*"},
        ]
        for frame in writes:
            await p.send_str(orjson.dumps(frame).decode())
        # A new client whose handshake and join wait through the pause too, and a backend's
        # REST app message.
        late_task = asyncio.create_task(try_join(http, paused_node.ws_url(room), "late"))
        rest_url = f"{paused_node.url}/v1/rooms/{room}/send-app-message"
        rest_task = asyncio.create_task(http.post(rest_url, json={"data": "stale"}))
        try:
            await asyncio.sleep(PAUSE_S)
        finally:
            paused_node.proc.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()

        replies: dict[str, str] = {}  # request id -> reply type or error code
        close_code = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(8):
                while True:
                    message = await p.receive()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        close_code = p.close_code
                        break
                    frame = orjson.loads(message.data)
                    if frame.get("id") in ("u", "s", "m"):
                        replies[frame["id"]] = frame.get("code") or frame["type"]
        fenced_after = time.monotonic() - resumed_at
        late_ws, late_reply = await asyncio.wait_for(late_task, 10)
        rest_reply = await asyncio.wait_for(rest_task, 10)
        rest_status = rest_reply.status
        rest_reply.release()
        late_sid: str | None = late_reply.get("sessionId")
        await asyncio.sleep(3.0)  # two lease rounds: a ghost would have come and gone

        stream = _stream(redis, room)
        stale_events = [
            (entry_id, event)
            for entry_id, event in stream
            if event["o"] == old_origin and entry_id not in stored_before
        ]
        state = _state(redis, room)
        seen = {
            name: {
                "stale app-message": [e for e in w.events("app-message") if e["data"] == "stale"],
                "stale session data": "stale" in w.meeting_session_state()["data"],
                "p updated": [
                    e
                    for e in w.events("participant-updated")
                    if e["participant"]["session_id"] == p_sid
                ],
                "joined": [e["participant"]["session_id"] for e in w.events("participant-joined")],
                "left": [e["participant"]["session_id"] for e in w.events("participant-left")],
            }
            for name, w in (("a", a), ("c", c))
        }
        print(
            f"\nR3: paused {PAUSE_S:.0f} s; p closed with {close_code} {fenced_after:.2f} s after "
            f"SIGCONT; replies to its writes: {replies}; late join: "
            f"{late_reply.get('type')} {late_reply.get('message', late_sid)!r}; REST app "
            f"message: {rest_status}\n"
            f"R3: events stored under the old incarnation after the pause: "
            f"{[(i, {k: v for k, v in e.items() if k != 'o'}) for i, e in stale_events]}\n"
            f"R3: seen by the others: {seen}"
        )
        assert close_code in (4001, 4002), close_code  # removed or fenced: cut off either way
        assert "ack" not in replies.values(), f"a write acknowledged after the pause: {replies}"
        assert rest_status == 503, f"a REST app message taken after the pause: {rest_status}"
        assert stale_events == [], "events stored under the old incarnation"
        assert not any("stale" in value for value in state.values()), state
        for watcher in (a, c):
            assert [e for e in watcher.events("app-message") if e["data"] == "stale"] == []
            assert "stale" not in watcher.meeting_session_state()["data"]
            assert p_sid not in watcher.participants(), "no ghost came back"
            updated = [
                e["participant"]["session_id"] for e in watcher.events("participant-updated")
            ]
            assert p_sid not in updated
            joins = [e["participant"]["session_id"] for e in watcher.events("participant-joined")]
            left = [e["participant"]["session_id"] for e in watcher.events("participant-left")]
            assert left == [p_sid], f"only p leaves (node-lost), no ghost flicker: {left}"
            assert set(joins) <= {a.session_id, c.session_id, p_sid, late_sid}
            if late_sid is not None:  # joined after the fence, under the new incarnation
                assert late_sid in watcher.participants()
        if late_sid is not None:
            location = state[f"p:{late_sid}:l"].split(" ", 1)[1]
            assert orjson.loads(location)["incarnation"] != old, "a join under the old incarnation"
        await late_ws.close()
        await p.close()
        # The fenced node serves again, under its new incarnation, with the right state.
        fresh, reply = await join(http, paused_node.ws_url(room), userName="fresh")
        assert p_sid not in reply["participants"]
        assert "stale" not in reply["meetingSessionState"]["data"]
        with contextlib.suppress(TimeoutError):
            while True:
                await recv_json(fresh, timeout=0.2)
        await fresh.close()
