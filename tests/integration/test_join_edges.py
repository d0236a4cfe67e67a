"""Joins at the edges of a node's life, on a node in this process (its aiohttp app on a real
socket, the in-memory bus: the test can make the log read wait, or mark the node as shutting
down); the clients are real WebSocket clients on its socket.

A resume holds the client's live frames while the node reads the room's log (the missed app
messages are replayed first). The `joined` snapshot stands at the moment the frames are held:
a change made during the read reaches the client once, as the event that follows the snapshot,
never both inside the snapshot and again as an event (a second participant-joined for someone
already listed, or an older state applied over a newer one until the next update).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from deploy.local.servers import slow_websocket_server
from roomstate.bus import MemoryBus
from roomstate.sdk.client import CallClient, RequestTimeout
from roomstate.settings import Settings
from roomstate.wire.events import BusEvent

from .inprocess import node_in_process

pytestmark = pytest.mark.integration

ROOM = "join-edges"


class SlowLogBus(MemoryBus):
    """The in-memory bus, whose log reads wait until the test lets them go on."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()  # a read has started
        self.go_on = asyncio.Event()

    async def read_range(self, room: str, after: str) -> list[tuple[str, BusEvent]] | None:
        self.reading.set()
        await self.go_on.wait()
        return await super().read_range(room, after)


async def frames_until_quiet(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            message = await ws.receive(timeout=0.5)
        except TimeoutError:
            return frames
        frames.append(orjson.loads(message.data))


async def test_a_participant_joining_during_a_resume_is_announced_once() -> None:
    bus = SlowLogBus()
    async with (
        node_in_process(Settings(), ROOM, bus) as it,
        aiohttp.ClientSession() as http,
        CallClient() as other,
    ):
        ws = await http.ws_connect(it.url)
        await ws.send_str(orjson.dumps({"type": "join", "id": 1, "userName": "ada"}).decode())
        joined = orjson.loads((await ws.receive(timeout=5)).data)
        await ws.close()  # dropped without a leave: the session waits to be resumed

        ws = await http.ws_connect(it.url)
        resume = {"resume": joined["resumeToken"], "resumeAfter": joined["seq"]}
        await ws.send_str(orjson.dumps({"type": "join", "id": 2, **resume}).decode())
        await asyncio.wait_for(bus.reading.wait(), 5)
        await other.join(it.url, user_name="bo")  # while the node reads the log back
        await other.set_user_data({"hand": True})
        bus.go_on.set()

        frames = await frames_until_quiet(ws)
        await ws.close()

    assert frames[0]["type"] == "joined" and frames[0]["resumed"] is True, frames[0]
    bo = other.session_id
    listed = bo in frames[0]["participants"]
    # a batch's entries are the frames they would be alone
    events = [e for f in frames[1:] for e in f.get("events", [f])]
    announced = [f["type"] for f in events if f.get("participant", {}).get("session_id") == bo]
    assert not (listed and "participant-joined" in announced), (
        f"bo is in the snapshot and announced again: {announced}"
    )
    assert listed or announced[:1] == ["participant-joined"], (listed, announced)
    seen = frames[0]["participants"].get(bo, {}).get("userData")
    for frame in events:
        if frame.get("participant", {}).get("session_id") == bo:
            seen = frame["participant"]["userData"]
    assert seen == {"hand": True}, "the last word on bo is its last userData"


async def test_a_join_reaching_a_node_that_is_shutting_down_is_refused() -> None:
    # (it used to be taken after shutdown had closed the others: never sent 1012, it stayed
    # until the process ended and then left as `node-lost` on the other nodes)
    async with node_in_process(Settings(), ROOM) as it, aiohttp.ClientSession() as http:
        it.node.draining = True  # what `shutdown` sets first
        ws = await http.ws_connect(it.url)
        await ws.send_str(orjson.dumps({"type": "join", "id": 1, "userName": "late"}).decode())
        reply = orjson.loads((await ws.receive(timeout=5)).data)
        await ws.close()
    assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
    assert "shutting down" in reply["message"]
    assert it.node.connections == {}


async def test_a_join_without_a_reply_gives_up_at_the_timeout_connecting_included() -> None:
    # the handshake took 1.5 s and the join's own 2 s came after it: 3.5 s (and a node that
    # never finished the handshake held the client for aiohttp's 5 minutes)
    client = CallClient(timeout=2.0)
    with slow_websocket_server(handshake_s=1.5) as url:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.join(url)
        took = time.monotonic() - started
    assert took < 3.0, took
    await client.leave()


async def test_after_leave_the_client_shows_no_session_data() -> None:
    async with node_in_process(Settings(), ROOM) as it:
        client = CallClient()
        await client.join(it.url)
        await client.set_meeting_session_data({"topic": "crdts"})
        assert client.meeting_session_state()["data"] == {"topic": "crdts"}
        await client.leave()
    assert client.meeting_session_state()["data"] == {}, "the room's, only while in it"


async def test_frames_held_during_a_resume_count_toward_the_send_queue_limit() -> None:
    # They were held without a bound while the log was read: a busy room could pile up more
    # for one client than the limit that cuts off a client that does not read.
    bus = SlowLogBus()
    settings = Settings(send_queue_bytes=20_000, rate_per_s=10_000, rate_burst=10_000)
    async with (
        node_in_process(settings, ROOM, bus) as it,
        aiohttp.ClientSession() as http,
        CallClient() as other,
    ):
        ws = await http.ws_connect(it.url)
        await ws.send_str(orjson.dumps({"type": "join", "id": 1, "userName": "ada"}).decode())
        joined = orjson.loads((await ws.receive(timeout=5)).data)
        await ws.close()

        ws = await http.ws_connect(it.url)
        resume = {"resume": joined["resumeToken"], "resumeAfter": joined["seq"]}
        await ws.send_str(orjson.dumps({"type": "join", "id": 2, **resume}).decode())
        await asyncio.wait_for(bus.reading.wait(), 5)
        await other.join(it.url, user_name="bo")
        try:
            for _ in range(30):  # 30 KB for ada while her frames are held
                await other.send_app_message("x" * 1000)
            closed = await ws.receive(timeout=5)
        finally:
            bus.go_on.set()
        await ws.close()
    assert (closed.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1008), (closed, ws.close_code)
    assert "send queue over 20000 bytes" in closed.extra
