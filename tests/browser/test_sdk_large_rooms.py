"""The browser SDK in a large room, in a real headless Chromium against a real node: hidden
participants (Daily's `hasPresence: false`, from the meeting token), participantCounts(), batched
membership events and the retry delay of an `unavailable` refusal."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser

from roomstate.auth import make_token

from ..integration.conftest import API_KEY, FAST, NodeProcess, start_node

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with an API key: hidden participants come from their tokens."""
    env = {
        **FAST,
        "ROOMSTATE_API_KEY": API_KEY,
        "ROOMSTATE_COUNTS_INTERVAL_MS": "100",
        "ROOMSTATE_ROSTER_PAGE_BYTES": "1024",  # a roster of a few already comes in pages
    }
    node = start_node(tmp_path_factory.mktemp("keyed"), env)
    yield node
    node.stop()


def run(browser: Browser, node: NodeProcess, script: str, args: dict[str, Any]) -> Any:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{node.url}/rooms/{args['room']}")  # the SDK's origin
        return page.evaluate(script, args)
    finally:
        context.close()


HIDDEN_AND_PRESENT = """async ({ url, present, hidden }) => {
    const { createCallObject } = await import("/sdk/roomstate.js");
    const until = async (check) => {
        for (let i = 0; i < 250 && !check(); i++) await new Promise((r) => setTimeout(r, 20));
        return check();
    };
    const a = createCallObject(), h = createCallObject();
    const seenByA = { counts: [], joined: [], left: [], messages: [] };
    a.on("participant-counts-updated", (e) => seenByA.counts.push(e));
    a.on("participant-joined", (e) => seenByA.joined.push(e.participant.session_id));
    a.on("participant-left", (e) => seenByA.left.push(e.participant.session_id));
    a.on("app-message", (e) => seenByA.messages.push(e));
    const hMessages = [];
    h.on("app-message", (e) => hMessages.push(e));
    const out = {};
    await a.join({ url, token: present });
    out.aCountsAlone = a.participantCounts();
    const hJoined = await h.join({ url, token: hidden });
    out.hLocalPermissions = hJoined.local.permissions ?? null;
    out.hSeesA = a.sessionId in h.participants();
    out.hCounts = h.participantCounts();
    out.aCountsUpdated = await until(() => a.participantCounts().hidden === 1);
    out.aCounts = a.participantCounts();
    const { callClientId, ...countEvent } = seenByA.counts.at(-1);
    out.aCountEvent = { ...countEvent, ownClientId: callClientId === a.callClientId };
    await h.sendAppMessage({ q: "hi" });
    await a.sendAppMessage("to you", h.sessionId);
    await until(() => seenByA.messages.length > 0 && hMessages.length > 0);
    out.aHeard = seenByA.messages.map(({ callClientId, ...rest }) => rest);
    out.hHeard = hMessages.map((e) => e.data);
    out.aParticipants = Object.keys(a.participants()).filter((k) => k !== "local");
    out.hSessionId = h.sessionId;
    await h.leave();
    out.aCountsAfter = await until(() => a.participantCounts().hidden === 0)
        && a.participantCounts();
    out.aJoined = seenByA.joined;
    out.aLeft = seenByA.left;
    await a.leave();
    out.aCountsAfterLeave = a.participantCounts();
    return out;
}"""


def test_a_hidden_participant_is_counted_by_both_and_listed_by_neither(
    browser: Browser, keyed: NodeProcess
) -> None:
    room = f"big-{uuid.uuid4().hex[:8]}"
    args = {
        "room": room,
        "url": f"{keyed.url}/rooms/{room}",
        "present": make_token(API_KEY, room, user_name="ann"),
        "hidden": make_token(API_KEY, room, user_name="hal", has_presence=False),
    }
    out = run(browser, keyed, HIDDEN_AND_PRESENT, args)
    hid = out["hSessionId"]
    assert out["aCountsAlone"] == {"present": 1, "hidden": 0}
    assert out["hLocalPermissions"] == {  # daily-js's defaults, the token's hasPresence
        "hasPresence": False,
        "canSend": True,
        "canReceive": {"base": True},
        "canAdmin": False,
    }
    assert out["hSeesA"] is True
    assert out["hCounts"] == {"present": 1, "hidden": 1}
    assert out["aCountsUpdated"] is True
    assert out["aCounts"] == {"present": 1, "hidden": 1}
    assert out["aCountEvent"] == {
        "action": "participant-counts-updated",
        "participantCounts": {"present": 1, "hidden": 1},
        "ownClientId": True,
    }
    assert out["aHeard"] == [{"action": "app-message", "data": {"q": "hi"}, "fromId": hid}]
    assert out["hHeard"] == ["to you"]
    assert out["aParticipants"] == []
    assert out["aCountsAfter"] == {"present": 1, "hidden": 0}
    assert hid not in out["aJoined"] and hid not in out["aLeft"]
    assert out["aCountsAfterLeave"] == {"present": 0, "hidden": 0}


FRAMES = """async ({ url, present }) => {
    const { createCallObject } = await import("/sdk/roomstate.js");
    const a = createCallObject();
    await a.join({ url, token: present });
    const events = [];
    for (const name of ["participant-joined", "participant-updated", "participant-left"]) {
        a.on(name, (e) => events.push([name, e.participant.session_id, e.participant.userData]));
    }
    const p = (sid, userData = null, hidden = false) => ({
        session_id: sid, user_name: sid, userData,
        ...(hidden ? { permissions: { hasPresence: false } } : {}),
    });
    const out = {};
    // one loop turn's membership events, batched; the entry about us is skipped
    a._onFrame(JSON.stringify({ type: "participant-events", events: [
        { type: "participant-joined", participant: p("s-bob") },
        { type: "participant-joined", participant: p(a.sessionId) },
        { type: "participant-updated", participant: p("s-bob", { hand: "up" }) },
        { type: "participant-joined", participant: p("s-carol") },
        { type: "participant-left", participant: p("s-carol") },
    ] }));
    out.batch = events.splice(0);
    out.afterBatch = Object.keys(a.participants()).sort();
    // an owner's update about a hidden participant: an event, never a participant
    a._onFrame(JSON.stringify({ type: "participant-updated", participant: p("s-hid", 1, true) }));
    out.hidden = events.splice(0);
    out.afterHidden = Object.keys(a.participants()).sort();
    // a busy node's refusal names how long to wait
    const refused = a._send("ping");
    a._onFrame(JSON.stringify({ type: "error", id: a._ids, code: "unavailable",
                                message: "busy", retryAfter: 1500 }));
    try { await refused; } catch (err) {
        const { code, retryAfter, fromServer } = err;
        out.unavailable = { code, retryAfter, fromServer };
    }
    const plain = a._send("ping");
    a._onFrame(JSON.stringify({ type: "error", id: a._ids, code: "unavailable", message: "x" }));
    try { await plain; } catch (err) { out.withoutDelay = err.retryAfter ?? null; }
    await a.leave();
    return out;
}"""


def test_batched_events_hidden_updates_and_retry_after(
    browser: Browser, keyed: NodeProcess
) -> None:
    room = f"big-{uuid.uuid4().hex[:8]}"
    args = {
        "room": room,
        "url": f"{keyed.url}/rooms/{room}",
        "present": make_token(API_KEY, room, user_name="ann", owner=True),
    }
    out = run(browser, keyed, FRAMES, args)
    assert out["batch"] == [
        ["participant-joined", "s-bob", None],
        ["participant-updated", "s-bob", {"hand": "up"}],
        ["participant-joined", "s-carol", None],
        ["participant-left", "s-carol", None],
    ]
    assert out["afterBatch"] == ["local", "s-bob"]
    assert out["hidden"] == [["participant-updated", "s-hid", 1]]
    assert out["afterHidden"] == ["local", "s-bob"]
    assert out["unavailable"] == {"code": "unavailable", "retryAfter": 1500, "fromServer": True}
    assert out["withoutDelay"] is None


PAGED = """async ({ url, tokens }) => {
    const { createCallObject } = await import("/sdk/roomstate.js");
    const early = tokens.slice(0, -1).map(() => createCallObject());
    for (const [i, call] of early.entries()) await call.join({ url, token: tokens[i] });
    const late = createCallObject();
    const frames = [];
    const onFrame = late._onFrame.bind(late);
    late._onFrame = (text) => { frames.push(JSON.parse(text).type); onFrame(text); };
    const joined = await late.join({ url, token: tokens.at(-1) });
    const out = {
        early: early.map((call) => call.sessionId).sort(),
        fromJoin: Object.keys(joined).filter((k) => k !== "local").sort(),
        participants: Object.keys(late.participants()).filter((k) => k !== "local").sort(),
        frames: frames.slice(),  // those read until join() resolved
    };
    for (const call of [...early, late]) await call.leave();
    return out;
}"""


def test_a_roster_in_pages_resolves_the_join_whole(browser: Browser, keyed: NodeProcess) -> None:
    room = f"big-{uuid.uuid4().hex[:8]}"
    tokens = [make_token(API_KEY, room, user_name=f"p{n}") for n in range(9)]
    out = run(
        browser, keyed, PAGED, {"room": room, "url": f"{keyed.url}/rooms/{room}", "tokens": tokens}
    )
    assert out["fromJoin"] == out["early"], "join() resolves with every page in"
    assert out["participants"] == out["early"]
    assert out["frames"][0] == "joined"
    assert set(out["frames"][1:]) == {"participants-page"}, "resolved on the last page"
