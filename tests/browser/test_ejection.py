"""Owner controls in the browser SDK, in a real headless Chromium against three nodes on one
Redis: updateParticipant(sessionId, {eject: true}) by an owner on another node, refused for a
non-owner, and the ejected call object's events as daily-js reports an ejection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from roomstate.auth import make_token

from ..integration.conftest import API_KEY
from ..integration.deployments import Deployment, start_deployment

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp: Path = tmp_path_factory.mktemp("eject")
    deployment = start_deployment("3-nodes-redis", tmp, {"ROOMSTATE_API_KEY": API_KEY})
    yield deployment
    deployment.stop()


EJECT = """async ({ urls, tokens }) => {
    const { createCallObject } = await import("/sdk/roomstate.js");
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const until = async (check) => {
        for (let i = 0; i < 250 && !check(); i++) await sleep(20);
        return check();
    };
    const owner = createCallObject(), guest = createCallObject(), plain = createCallObject();
    const out = { guestErrors: [], guestLeft: [], plainNonfatal: [], ownerLeft: [], plainLeft: [] };
    guest.on("error", (e) => out.guestErrors.push({ errorMsg: e.errorMsg, type: e.error?.type }));
    guest.on("left-meeting", (e) => out.guestLeft.push(e.reason));
    plain.on("nonfatal-error", (e) => out.plainNonfatal.push({ type: e.type, code: e.code }));
    owner.on("participant-left", (e) => out.ownerLeft.push([e.participant.session_id, e.reason]));
    plain.on("participant-left", (e) => out.plainLeft.push([e.participant.session_id, e.reason]));
    await owner.join({ url: urls[0], token: tokens.owner });
    await guest.join({ url: urls[1], token: tokens.guest });
    await plain.join({ url: urls[2], token: tokens.plain });
    const all = [owner, guest, plain];
    out.allIn = await until(() => all.every((c) => Object.keys(c.participants()).length === 3));
    const gsid = guest.sessionId;
    out.gsid = gsid;
    out.chained = plain.updateParticipant(gsid, { eject: true }) === plain;
    await until(() => out.plainNonfatal.length > 0);
    await sleep(300);
    out.guestStateAfterRefusal = guest.meetingState();
    try {
        owner.updateParticipant(gsid, { setAudio: false });
    } catch (err) {
        out.otherUpdateThrows = err instanceof TypeError;
    }
    owner.updateParticipant(gsid, { eject: true });
    await until(() => out.guestLeft.length && out.ownerLeft.length && out.plainLeft.length);
    await sleep(1500); // an ejected call object does not reconnect
    out.guestState = guest.meetingState();
    out.guestSessionId = guest.sessionId;
    out.ownerSees = Object.keys(owner.participants()).length;
    out.plainLeftBefore = [...out.plainLeft];
    await owner.leave();
    await plain.leave();
    return out;
}"""


def test_an_owner_ejects_from_another_node_and_a_non_owner_is_refused(
    browser: Browser, keyed: Deployment
) -> None:
    room = f"room-{uuid.uuid4().hex[:10]}"
    tokens = {
        "owner": make_token(API_KEY, room, user_name="host", owner=True),
        "guest": make_token(API_KEY, room, user_name="guest"),
        "plain": make_token(API_KEY, room, user_name="plain"),
    }
    urls = [node.room_url(room) for node in keyed.nodes]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(urls[0])  # the SDK's origin
        out: dict[str, Any] = page.evaluate(EJECT, {"urls": urls, "tokens": tokens})
    finally:
        context.close()
    assert out["allIn"] and out["chained"]
    assert out["plainNonfatal"] == [{"type": "update-participant-error", "code": "forbidden"}]
    assert out["guestStateAfterRefusal"] == "joined-meeting"
    assert out["otherUpdateThrows"] is True
    assert out["guestErrors"] == [
        {"errorMsg": "You were ejected from the meeting", "type": "ejected"}
    ]
    assert out["guestLeft"] == ["ejected"]
    assert out["guestState"] == "error"
    gsid = out["gsid"]
    assert out["ownerLeft"] == [[gsid, "ejected"]] and out["plainLeftBefore"] == [[gsid, "ejected"]]
    assert out["ownerSees"] == 2
