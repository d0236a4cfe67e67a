"""The Python SDK's local state against a node in this process (its aiohttp app on a real
socket, the in-memory bus): writes that are cancelled, refused before they are sent, or made
while away, and what a resume tells the app. Each case was wrong once (found in review)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web

from roomstate.auth import make_token
from roomstate.sdk.client import (
    CallClient,
    ClientError,
    ConnectionClosed,
    RestClient,
    RestError,
    TooLarge,
)
from roomstate.settings import Settings

from .inprocess import node_in_process

pytestmark = pytest.mark.integration

ROOM = "sdk"


async def test_a_write_cancelled_after_it_was_sent_is_kept_like_one_that_timed_out() -> None:
    # It stayed pending for good: the node's ack was ignored, later state never showed.
    async with node_in_process(Settings(), ROOM) as it, CallClient() as a, CallClient() as b:
        await a.join(it.url)
        await b.join(it.url)
        write = asyncio.ensure_future(a.set_user_data({"v": 1}))
        await asyncio.sleep(0)  # sent, not answered
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        await a.set_user_data({"v": 2})
        assert a.participants()["local"]["userData"] == {"v": 2}
        merge = asyncio.ensure_future(a.set_meeting_session_data({"a": 1}, "shallow-merge"))
        await asyncio.sleep(0)
        merge.cancel()
        await asyncio.gather(merge, return_exceptions=True)
        await b.set_meeting_session_data({"b": 2})  # replaces everything
        await a.next_event(
            "meeting-session-state-updated",
            predicate=lambda e: e["meetingSessionState"]["data"] == {"b": 2},
        )
        assert a.meeting_session_state()["data"] == {"b": 2}


async def test_writes_refused_before_they_are_sent_change_nothing() -> None:
    async with node_in_process(Settings(), ROOM) as it, CallClient() as a:
        await a.join(it.url, user_data={"v": 0})
        with pytest.raises(TypeError):  # not JSON: it never left, and it is not kept
            await a.set_user_data({"tags": {1, 2}})
        assert a.participants()["local"]["userData"] == {"v": 0}
        with pytest.raises(TypeError, match="a dict"):  # broke every later session update
            await a.set_meeting_session_data(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a list of keys"):  # "ab" deleted a and b
            await a.set_meeting_session_data({}, "shallow-merge", "ab")  # type: ignore[arg-type]
        # over the node's frame limit: refused here, the connection kept (the node closes it)
        with pytest.raises(TooLarge, match="frame limit is 131072"):
            await a.set_meeting_session_data({"x": "y" * 140_000})
        assert a.meeting_session_state()["data"] == {}
        await a.set_meeting_session_data({"ok": True})
        assert a.meeting_session_state()["data"] == {"ok": True}
        assert a.participants()["local"]["userData"] == {"v": 0}


async def test_a_resume_tells_the_app_what_changed_while_it_was_away() -> None:
    async with (
        node_in_process(Settings(), ROOM) as it,
        CallClient() as a,
        CallClient() as b,
        CallClient() as c,
    ):
        await a.join(it.url)
        await b.join(it.url)
        await a.next_event("participant-joined")
        await a.close()
        await b.leave()
        await c.join(it.url, user_name="c")
        await c.set_meeting_session_data({"k": 2})
        await a.join(it.url, resume=a.resume_token)
        await a.next_event(
            "participant-left", predicate=lambda e: e["participant"]["session_id"] == b.session_id
        )
        await a.next_event(
            "participant-joined", predicate=lambda e: e["participant"]["session_id"] == c.session_id
        )
        update = await a.next_event("meeting-session-state-updated")
        assert update["meetingSessionState"]["data"] == {"k": 2}
        assert set(a.participants()) == {"local", c.session_id}


async def test_a_join_that_fails_raises_and_emits_no_meeting_events() -> None:
    # A join the node cut off (here a frame over its limit, sent past the client's own check)
    # emitted `error` and `left-meeting` for a meeting never joined, besides raising. Now it
    # gives one `error`, as daily-js's failed join does, and no `left-meeting`.
    async with node_in_process(Settings(), ROOM) as it:
        a = CallClient(max_frame_bytes=10**7)
        with pytest.raises(ConnectionClosed):
            await a.join(it.url, user_data="x" * 200_000)
        await asyncio.sleep(0.1)
        (error,) = a.events("error")
        assert error["action"] == "error" and error["error"]["type"] == "connection-error"
        assert error["errorMsg"] == error["error"]["msg"] and error["code"] == "connection-closed"
        assert a.events("left-meeting") == [] and a.meeting_state() == "error"
        await a.join(it.url)  # and it can join after all
        await a.leave()
        assert a.events("left-meeting") == [{"action": "left-meeting", "reason": "left"}]


async def test_the_daily_js_data_api_in_python_naming() -> None:
    """meeting_state() values, `once`, `action`, return values, participants' shape, destroy."""
    async with node_in_process(Settings(), ROOM) as it, CallClient() as b:
        a = CallClient()
        states: list[str] = []
        for name in ("loading", "loaded", "joining-meeting", "joined-meeting", "left-meeting"):
            a.on(name, lambda event: states.append(event["action"]))
        assert a.meeting_state() == "new"
        await a.join(it.url, user_name="ada")
        await b.join(it.url, user_name="bob")
        assert states == ["loading", "loaded", "joining-meeting", "joined-meeting"]
        assert a.meeting_state() == "joined-meeting"
        local = a.participants()["local"]
        assert local["local"] is True and local["owner"] is False
        assert local["permissions"]["hasPresence"] is True
        assert await a.set_user_data({"hand": True}) == {"userData": {"hand": True}}
        once: list[object] = []
        b.once("app-message", lambda event: once.append(event["data"]))
        assert await a.send_app_message(1) is a
        await a.send_app_message(2, to=str(b.session_id))
        second = await b.next_event("app-message", predicate=lambda e: e["data"] == 2)
        assert once == [1] and second["action"] == "app-message"
        update = await b.next_event("participant-updated")
        assert update["participant"]["local"] is False
        await a.set_meeting_session_data({"k": 1})  # returns nothing, as daily-js
        await a.destroy()
        assert a.is_destroyed() and a.meeting_state() == "left-meeting"
        assert [e["action"] for e in a.events("call-instance-destroyed")] == [
            "call-instance-destroyed"
        ]
        with pytest.raises(ClientError, match="destroyed"):
            await a.join(it.url)


async def test_a_plain_text_rest_error_keeps_its_status_as_code() -> None:
    # aiohttp answers an over-long body with a plain-text 413: it came out as "bad-response"
    async with node_in_process(Settings(), ROOM) as it:
        base = it.url.split("/v1/")[0].replace("ws://", "http://")
        rest = RestClient(base)
        try:
            with pytest.raises(RestError) as refused:
                await rest.send_app_message(ROOM, "x" * 400_000)
        finally:
            await rest.close()
    assert (refused.value.status, refused.value.code) == (413, "http-413")


# -- large rooms --

KEY = "sdk-test-api-key-0123456789abcdef"


async def test_a_hidden_participant_is_counted_and_heard_but_never_listed() -> None:
    settings = Settings(api_key=KEY, counts_interval_ms=50)
    async with (
        node_in_process(settings, ROOM) as it,
        CallClient() as host,
        CallClient() as ann,
        CallClient() as hid,
    ):
        await host.join(it.url, token=make_token(KEY, ROOM, user_name="host", owner=True))
        await ann.join(it.url, token=make_token(KEY, ROOM, user_name="ann"))
        joined = await hid.join(it.url, token=make_token(KEY, ROOM, has_presence=False))
        assert joined["participantCounts"] == {"present": 2, "hidden": 1}
        assert hid.participant_counts() == {"present": 2, "hidden": 1}
        local = hid.participants()["local"]
        assert local["permissions"]["hasPresence"] is False
        assert set(hid.participants()) == {"local", host.session_id, ann.session_id}
        for other in (host, ann):
            await other.next_event(
                "participant-counts-updated",
                predicate=lambda e: e["participantCounts"] == {"present": 2, "hidden": 1},
            )
            assert other.participant_counts() == {"present": 2, "hidden": 1}
            assert hid.session_id not in other.participants()

        # the hidden one speaks and is spoken to, by session id too
        await hid.send_app_message({"q": "hello?"})
        heard = await ann.next_event("app-message")
        assert heard == {"action": "app-message", "data": {"q": "hello?"}, "fromId": hid.session_id}
        assert hid.session_id is not None
        await ann.send_app_message("answer", to=hid.session_id)
        assert (await hid.next_event("app-message"))["data"] == "answer"

        # a raised hand: the owner hears of it, the hidden one stays out of participants()
        await hid.set_user_data({"hand": "up"})
        update = await host.next_event(
            "participant-updated",
            predicate=lambda e: e["participant"]["session_id"] == hid.session_id,
        )
        assert update["participant"]["userData"] == {"hand": "up"}
        assert hid.session_id not in host.participants()
        await hid.set_meeting_session_data({"after": "hand"})
        await ann.next_event("meeting-session-state-updated")  # sent after the hand's update
        await hid.leave()
        await ann.next_event(
            "participant-counts-updated",
            predicate=lambda e: e["participantCounts"] == {"present": 2, "hidden": 0},
        )
        about_hidden = [
            name
            for name in ("participant-joined", "participant-updated", "participant-left")
            for event in ann.events(name)
            if event["participant"]["session_id"] == hid.session_id
        ]
        assert about_hidden == []


async def test_a_joined_bigger_than_aiohttps_default_message_cap_is_taken() -> None:
    # aiohttp's client refuses a message over 4 MiB by default; a large room's joined is more
    crowd = {
        f"s-{i}": {"session_id": f"s-{i}", "user_name": f"p{i}", "userData": "x" * 4000}
        for i in range(1500)
    }

    async def answer_join(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        join = orjson.loads((await ws.receive()).data)
        joined = {
            "type": "joined",
            "id": join["id"],
            "sessionId": "s-0",
            "participants": crowd,
            "participantCounts": {"present": len(crowd), "hidden": 0},
            "meetingSessionState": {"data": {}},
        }
        await ws.send_bytes(orjson.dumps(joined))
        leave = orjson.loads((await ws.receive()).data)
        await ws.send_bytes(orjson.dumps({"type": "ack", "id": leave["id"]}))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/rooms/{room}/ws", answer_join)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with CallClient() as call:
            await call.join(f"ws://127.0.0.1:{port}/v1/rooms/{ROOM}/ws")
            assert len(call.participants()) == len(crowd)
            assert call.participant_counts() == {"present": 1500, "hidden": 0}
    finally:
        await runner.cleanup()
