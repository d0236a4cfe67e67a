"""The Python SDK's local state against a node in this process (its aiohttp app on a real
socket, the in-memory bus): writes that are cancelled, refused before they are sent, or made
while away, and what a resume tells the app. Each case was wrong once (found in review)."""

from __future__ import annotations

import asyncio

import pytest

from roomstate.sdk.client import CallClient, ConnectionClosed, RestClient, RestError, TooLarge
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
    # emitted `error` and `left-meeting` for a meeting never joined, besides raising.
    async with node_in_process(Settings(), ROOM) as it:
        a = CallClient(max_frame_bytes=10**7)
        with pytest.raises(ConnectionClosed):
            await a.join(it.url, user_data="x" * 200_000)
        await asyncio.sleep(0.1)
        assert a.events("error") == [] and a.events("left-meeting") == []
        await a.join(it.url)  # and it can join after all
        await a.leave()
        assert a.events("left-meeting") == [{"reason": "left"}]


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
