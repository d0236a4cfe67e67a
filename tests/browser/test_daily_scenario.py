"""A scenario written only against daily-js's API (`Daily.createCallObject()` and the call
object's data methods and events), run in Chromium by three people on three nodes behind
haproxy: join, participants(), setUserData, sendAppMessage to all and to one, session data
replace and shallow-merge, participant events, `once`, meetingState() transitions, errors."""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from deploy.local.servers import Haproxy

from ..integration.deployments import Deployment

pytestmark = pytest.mark.browser

# Set up a call object as a daily-js app does, keeping every event it gets for the test.
SETUP = """async () => {
    const { default: Daily } = await import("/sdk/roomstate.js");
    const call = Daily.createCallObject();
    window.call = call;
    window.seen = { states: [], events: {} };
    window.initialState = call.meetingState();
    for (const name of ["loading", "loaded", "joining-meeting", "joined-meeting", "left-meeting"]) {
        call.on(name, (e) => window.seen.states.push([e.action, call.meetingState()]));
    }
    for (const name of ["participant-joined", "participant-updated", "participant-left",
                        "app-message", "meeting-session-state-updated", "nonfatal-error",
                        "error"]) {
        window.seen.events[name] = [];
        call.on(name, (e) => window.seen.events[name].push(e));
    }
}"""

JOIN = """async ({ url, userName }) => {
    const participants = await call.join({ url, userName, userData: { hand: false } });
    const { local } = participants;
    return {
        initial: window.initialState,
        states: window.seen.states,
        local: { local: local.local, name: local.user_name, owner: local.owner,
                 date: local.joined_at instanceof Date, presence: local.permissions.hasPresence },
    };
}"""

# What a page has seen of one event, as plain data (event objects hold Dates).
SEEN = """(name) => window.seen.events[name].map((e) => ({
    action: e.action,
    data: e.data,
    fromId: e.fromId,
    type: e.type,
    errorMsg: e.errorMsg,
    sessionData: e.meetingSessionState?.data,
    sid: e.participant?.session_id,
    userData: e.participant?.userData,
    local: e.participant?.local,
    date: e.participant ? e.participant.joined_at instanceof Date : undefined,
}))"""


@pytest.fixture
def people(browser: Browser) -> Iterator[list[Page]]:
    contexts: list[BrowserContext] = [browser.new_context() for _ in range(3)]
    yield [context.new_page() for context in contexts]
    for context in contexts:
        context.close()


def connections(deployment: Deployment) -> list[float]:
    """Each node's open WebSocket connections (its `roomstate_connections` gauge)."""
    counts = []
    for node in deployment.nodes:
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        found = re.search(r"^roomstate_connections (\S+)$", text, re.M)
        assert found is not None
        counts.append(float(found[1]))
    return counts


def seen(page: Page, event: str) -> list[dict[str, Any]]:
    return list(page.evaluate(SEEN, event))


def wait(page: Page, condition: str) -> None:
    page.wait_for_function(condition, timeout=10_000)


def test_daily_js_scenario(multi: tuple[Deployment, Haproxy], people: list[Page]) -> None:
    deployment, haproxy = multi
    room_url = f"{haproxy.url}/rooms/daily-{uuid.uuid4().hex[:8]}"
    ann, bob, cat = people
    joined = []
    for page, name in zip(people, ["ann", "bob", "cat"], strict=True):
        page.goto(room_url)
        page.evaluate(SETUP)
        joined.append(page.evaluate(JOIN, {"url": room_url, "userName": name}))
    assert sorted(connections(deployment)) == [1, 1, 1], "one person on each node"
    for out, name in zip(joined, ["ann", "bob", "cat"], strict=True):
        assert out["initial"] == "new"
        assert out["states"] == [
            ["loading", "loading"],
            ["loaded", "loaded"],
            ["joining-meeting", "joining-meeting"],
            ["joined-meeting", "joined-meeting"],
        ]
        assert out["local"] == {
            "local": True, "name": name, "owner": False, "date": True, "presence": True
        }  # fmt: skip
    sid = {name: page.evaluate("call.participants().local.session_id") for name, page in
           zip(["ann", "bob", "cat"], people, strict=True)}  # fmt: skip
    for page in people:
        wait(page, "Object.keys(call.participants()).length === 3")
        others = page.evaluate(
            """Object.entries(call.participants()).filter(([k]) => k !== "local")
               .map(([k, p]) => [k === p.session_id, p.local, p.joined_at instanceof Date])"""
        )
        assert others == [[True, False, True], [True, False, True]]
    joins = seen(ann, "participant-joined")
    assert [(e["action"], e["sid"], e["local"], e["date"]) for e in joins] == [
        ("participant-joined", sid["bob"], False, True),
        ("participant-joined", sid["cat"], False, True),
    ]

    # setUserData resolves with {userData}; the others get participant-updated.
    result = bob.evaluate("call.setUserData({ hand: true })")
    assert result == {"userData": {"hand": True}}
    for page in (ann, cat):
        wait(page, f"call.participants()['{sid['bob']}']?.userData?.hand === true")
        update = seen(page, "participant-updated")[-1]
        assert update["action"] == "participant-updated" and update["sid"] == sid["bob"]

    # sendAppMessage returns the call object; to everyone else, and to one session id.
    assert ann.evaluate("call.sendAppMessage({ hi: 'all' }) === call") is True
    assert cat.evaluate(f"call.sendAppMessage({{ psst: 'bob' }}, '{sid['bob']}') === call")
    cat.evaluate("call.sendAppMessage({ done: true }, '*')")
    for page in (bob, cat):
        wait(page, "window.seen.events['app-message'].some((e) => e.data.hi === 'all')")
    for page in (ann, bob):
        wait(page, "window.seen.events['app-message'].some((e) => e.data.done)")
    assert [(m["action"], m["data"], m["fromId"]) for m in seen(bob, "app-message")] == [
        ("app-message", {"hi": "all"}, sid["ann"]),
        ("app-message", {"psst": "bob"}, sid["cat"]),
        ("app-message", {"done": True}, sid["cat"]),
    ]
    assert [m["data"] for m in seen(ann, "app-message")] == [{"done": True}], "not to ann"
    assert seen(ann, "app-message")[0]["fromId"] == sid["cat"]

    # once: the handler runs for the next event only.
    bob.evaluate("window.onceGot = []; call.once('app-message', (e) => onceGot.push(e.data))")
    ann.evaluate("call.sendAppMessage({ n: 1 }); call.sendAppMessage({ n: 2 })")
    wait(bob, "window.seen.events['app-message'].some((e) => e.data.n === 2)")
    assert bob.evaluate("window.onceGot") == [{"n": 1}]

    # Session data: replace, then shallow-merge, then replace; everyone converges.
    assert ann.evaluate("call.setMeetingSessionData({ topic: 'crdts', round: 1 }) ?? null") is None
    for page in people:
        wait(page, "call.meetingSessionState().data.topic === 'crdts'")
    bob.evaluate("call.setMeetingSessionData({ round: 2 }, 'shallow-merge')")
    for page in people:
        wait(page, "call.meetingSessionState().data.round === 2")
        assert page.evaluate("call.meetingSessionState().data") == {"topic": "crdts", "round": 2}
    cat.evaluate("call.setMeetingSessionData({ fresh: true }, 'replace')")
    for page in people:
        wait(page, "call.meetingSessionState().data.fresh === true")
        assert page.evaluate("call.meetingSessionState().data") == {"fresh": True}
    updates = seen(ann, "meeting-session-state-updated")
    assert updates[-1]["action"] == "meeting-session-state-updated"
    assert updates[-1]["sessionData"] == {"fresh": True}

    # Errors, in daily-js's shapes: a promise rejects with errorMsg; a write that returns no
    # promise gives nonfatal-error {type, errorMsg}; a join that fails gives `error`.
    refused = ann.evaluate(
        """call.setUserData({ big: "x".repeat(5000) }).then(() => null,
               (err) => ({ errorMsg: err.message, local: call.participants().local.userData }))"""
    )
    assert "4096" in refused["errorMsg"] and refused["local"] == {"hand": False}
    # (over the node's 100 KiB session data limit, under its 128 KiB frame limit)
    ann.evaluate("call.setMeetingSessionData({ big: 'y'.repeat(110000) }, 'shallow-merge')")
    ann.evaluate("call.sendAppMessage('z'.repeat(5000))")
    wait(ann, "window.seen.events['nonfatal-error'].length === 2")
    errors = seen(ann, "nonfatal-error")
    assert [(e["action"], e["type"]) for e in errors] == [
        ("nonfatal-error", "meeting-session-data-error"),
        ("nonfatal-error", "app-message-error"),
    ]
    assert "102400" in errors[0]["errorMsg"] and "4096" in errors[1]["errorMsg"]
    assert ann.evaluate("call.meetingSessionState().data") == {"fresh": True}, "rolled back"
    fatal = ann.evaluate(
        """async (url) => {
            const { default: Daily } = await import("/sdk/roomstate.js");
            const other = Daily.createCallObject();
            const failed = new Promise((resolve) => other.once("error", resolve));
            const rejected = await other.join({ url, userData: "u".repeat(5000) }).then(
                () => null, (err) => err.message);
            const event = await failed;
            const out = { rejected, state: other.meetingState(), action: event.action,
                          errorMsg: event.errorMsg, type: event.error.type };
            await other.destroy();
            return out;
        }""",
        room_url,
    )
    assert "4096" in fatal["rejected"] and fatal["state"] == "error"
    assert fatal["action"] == "error" and "4096" in fatal["errorMsg"]
    assert fatal["type"] == "connection-error"
    assert seen(bob, "nonfatal-error") == [] and seen(bob, "error") == []

    # Leaving: participant-left for the others; left-meeting, then destroy().
    cat.evaluate("call.leave()")
    assert cat.evaluate("call.meetingState()") == "left-meeting"
    assert cat.evaluate("window.seen.states.at(-1)") == ["left-meeting", "left-meeting"]
    for page in (ann, bob):
        wait(page, f"!('{sid['cat']}' in call.participants())")
        left = seen(page, "participant-left")
        assert [(e["action"], e["sid"]) for e in left] == [("participant-left", sid["cat"])]
    destroyed = cat.evaluate(
        """async (url) => {
            await call.destroy();
            try { await call.join({ url }); return "joined"; }
            catch (err) { return [call.isDestroyed(), err instanceof Error, err.message]; }
        }""",
        room_url,
    )
    assert destroyed[:2] == [True, True] and "destroyed" in destroyed[2]
    for page in (ann, bob):
        page.evaluate("call.leave()")
        assert page.evaluate("call.meetingState()") == "left-meeting"
