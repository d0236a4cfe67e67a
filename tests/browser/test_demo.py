"""The live Q&A demo and the browser SDK in a real headless Chromium.

Each person is a browser context of its own (a separate profile). The live Q&A scenario runs on one
node, on three nodes through haproxy, and with each person on a different node; the reconnect tests
drop a socket under a node that stays up, and kill the node under a person behind haproxy.
"""

from __future__ import annotations

import os
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from deploy.local.servers import Haproxy, slow_websocket_server

from ..integration.conftest import API_KEY, FAST, start_node
from ..integration.deployments import Deployment, start_deployment
from .conftest import NODE_ENV, Site

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
# The README's picture. A test run leaves the tracked file alone unless asked to renew it:
# ROOMSTATE_UPDATE_SCREENSHOT=1 ./deploy/dev.sh test
SCREENSHOT = ROOT / "docs" / "images" / "demo-host.png"
UPDATE_SCREENSHOT = os.environ.get("ROOMSTATE_UPDATE_SCREENSHOT") == "1"


class Person:
    """One participant: a browser context with the demo page open (a page object)."""

    def __init__(self, context: BrowserContext, page: Page, name: str) -> None:
        self.context, self.page, self.name = context, page, name

    def by(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    def participant(self, name: str) -> Locator:
        return self.page.locator(f'[data-testid="participant"][data-name="{name}"]')

    def queue_item(self, name: str) -> Locator:
        return self.page.locator(f'[data-testid="queue-item"][data-name="{name}"]')

    def floating(self, emoji: str) -> Locator:
        return self.page.locator(f'[data-testid="floating-reaction"][data-emoji="{emoji}"]')

    def react(self, emoji: str) -> None:
        self.page.locator(f'[data-testid="react"][data-emoji="{emoji}"]').click()

    def raise_hand(self) -> None:
        expect(self.by("hand-button")).to_have_attribute("data-hand", "down")
        self.by("hand-button").click()
        expect(self.by("hand-button")).to_have_attribute("data-hand", "up")  # at once, locally

    def session_id(self) -> str:
        return str(self.page.evaluate("window.demo.call.sessionId"))

    def record(self, event: str) -> None:
        """Keep every `event` of the page's call object in `window.seen[event]`."""
        self.page.evaluate(
            """(event) => {
                window.seen = window.seen || {};
                window.seen[event] = [];
                window.demo.call.on(event, (e) => window.seen[event].push(e));
            }""",
            event,
        )

    def seen(self, event: str) -> list[dict[str, Any]]:
        return list(self.page.evaluate("(event) => window.seen[event]", event))


@pytest.fixture
def people(browser: Browser) -> Iterator[Callable[..., Person]]:
    """`open(base_url, room, name, host=False, token=None, size=None)`: a person who joined."""
    contexts: list[BrowserContext] = []

    def open_demo(
        base: str,
        room: str,
        name: str,
        host: bool = False,
        token: str | None = None,
        size: tuple[int, int] = (1000, 760),
    ) -> Person:
        context = browser.new_context(viewport={"width": size[0], "height": size[1]})
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{base}/rooms/{room}" + (f"?t={token}" if token else ""))
        person = Person(context, page, name)
        person.by("name-input").fill(name)
        if host:
            person.by("host-checkbox").check()
        person.by("join-button").click()
        expect(person.by("room")).to_be_visible()
        expect(person.by("status")).to_have_attribute("data-state", "connected")
        return person

    yield open_demo
    for context in contexts:
        context.close()


def new_room() -> str:
    return f"qa-{uuid.uuid4().hex[:8]}"


def websocket_counts(site: Site) -> list[float]:
    """Each node's open WebSocket connections (its `roomstate_connections` gauge)."""
    counts = []
    for node in site.nodes:
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        counts.append(float(re.search(r"^roomstate_connections (\S+)$", text, re.M)[1]))  # type: ignore[index]
    return counts


def test_live_qa(site: Site, people: Callable[..., Person]) -> None:
    room = new_room()
    host = people(site.base(0), room, "Hana Host", host=True)
    ann = people(site.base(1), room, "Ann Audience")
    bob = people(site.base(2), room, "Bob Builder")
    everyone = [host, ann, bob]
    for person in everyone:
        expect(person.by("participant")).to_have_count(3)
    if site.name != "single-node":  # the three people sit on three different nodes
        assert sorted(websocket_counts(site)) == [1, 1, 1]
    expect(host.by("host-panel")).to_be_visible()
    expect(ann.by("host-panel")).to_be_hidden()

    # Raise hand: the host's queue shows it, in the order hands went up.
    ann.raise_hand()
    expect(host.queue_item("Ann Audience")).to_be_visible()
    expect(bob.participant("Ann Audience")).to_have_attribute("data-hand", "up")
    bob.raise_hand()
    expect(host.by("queue-item")).to_have_count(2)
    expect(host.by("queue-item").first).to_have_attribute("data-name", "Ann Audience")

    # Bring on stage: everyone highlights the speaker; the speaker's page lowers her hand.
    host.queue_item("Ann Audience").get_by_test_id("bring-on-stage").click()
    for person in everyone:
        expect(person.participant("Ann Audience")).to_have_attribute("data-speaker", "true")
        expect(person.by("stage-speaker")).to_have_text("Ann Audience")
        expect(person.participant("Bob Builder")).to_have_attribute("data-speaker", "false")
    expect(ann.by("floor-banner")).to_be_visible()
    expect(bob.by("floor-banner")).to_be_hidden()
    expect(ann.by("hand-button")).to_have_attribute("data-hand", "down")
    for person in everyone:
        expect(person.participant("Ann Audience")).to_have_attribute("data-hand", "down")
    expect(host.by("queue-item")).to_have_count(1)
    expect(host.queue_item("Bob Builder")).to_be_visible()

    # A late joiner sees the speaker and the raised hands at once.
    dan = people(site.base(3), room, "Dan Latecomer")
    expect(dan.by("stage-speaker")).to_have_text("Ann Audience")
    expect(dan.participant("Ann Audience")).to_have_attribute("data-speaker", "true")
    expect(dan.participant("Bob Builder")).to_have_attribute("data-hand", "up")
    expect(dan.participant("Ann Audience")).to_have_attribute("data-hand", "down")
    everyone.append(dan)

    # A reaction floats up for the others, not for its sender.
    bob.react("🎉")
    for person in (host, ann, dan):
        expect(person.floating("🎉")).to_have_count(1)
        expect(person.floating("🎉")).to_contain_text("Bob Builder")
        if person is host and site.name == "3-nodes-haproxy" and UPDATE_SCREENSHOT:
            host.page.wait_for_timeout(400)  # the reaction has risen a little
            host.page.screenshot(path=str(SCREENSHOT))
    expect(bob.floating("🎉")).to_have_count(0)


def test_phone_width(single: Deployment, people: Callable[..., Person]) -> None:
    """At phone width the page is one column and nothing scrolls sideways."""
    room = new_room()
    host = people(single.url, room, "Hana Host", host=True, size=(375, 740))
    ann = people(single.url, room, "Ann Audience", size=(375, 740))
    ann.raise_hand()
    expect(host.queue_item("Ann Audience")).to_be_visible()
    for person in (host, ann):
        width = person.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375
        for testid in ("hand-button", "reaction-bar", "participants"):
            box = person.by(testid).bounding_box()
            if box is not None:
                assert box["x"] >= 0 and box["x"] + box["width"] <= 375, testid


def test_owner_token_makes_the_host(
    tmp_path_factory: pytest.TempPathFactory, people: Callable[..., Person]
) -> None:
    """With an API key, the role comes from the meeting token: no host checkbox."""
    node = start_node(tmp_path_factory.mktemp("keyed"), {**FAST, "ROOMSTATE_API_KEY": API_KEY})
    try:
        room = new_room()
        tokens = {}
        for name, owner in (("host", True), ("guest", False)):
            request = urllib.request.Request(
                f"{node.url}/v1/meeting-tokens",
                data=(
                    f'{{"properties": {{"room_name": "{room}", "is_owner": {str(owner).lower()},'
                    f' "user_name": "{name.title()}"}}}}'
                ).encode(),
                headers={"Authorization": f"Bearer {API_KEY}"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                tokens[name] = answer.read().decode().split('"token":"')[1].split('"')[0]
        host = people(node.url, room, "ignored", token=tokens["host"])
        guest = people(node.url, room, "ignored", token=tokens["guest"])
        expect(host.by("host-choice")).to_be_hidden()
        expect(host.by("my-role")).to_have_text("host")
        expect(host.by("my-name")).to_have_text("Host")  # the token's name wins
        expect(guest.by("my-role")).to_have_text("audience")
        guest.raise_hand()
        expect(host.queue_item("Guest")).to_be_visible()
    finally:
        node.stop()


def test_join_without_a_token_is_refused_with_a_hint(
    tmp_path_factory: pytest.TempPathFactory, browser: Browser
) -> None:
    node = start_node(tmp_path_factory.mktemp("keyed"), {**FAST, "ROOMSTATE_API_KEY": API_KEY})
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{node.url}/rooms/{new_room()}")
        page.get_by_test_id("name-input").fill("Eve")
        page.get_by_test_id("join-button").click()
        expect(page.get_by_test_id("join-error")).to_contain_text("needs a meeting token")
        expect(page.get_by_test_id("join-form")).to_be_visible()
    finally:
        context.close()
        node.stop()


SDK_CHECKS = """async ({ url, slowUrl }) => {
    const { createCallObject, RoomstateError } = await import("/sdk/roomstate.js");
    const a = createCallObject(), b = createCallObject();
    const got = [], leftA = [];
    b.on("app-message", (e) => got.push(e));
    a.on("left-meeting", (e) => leftA.push(e));
    const out = {};
    try { a.on("no-such-event", () => {}); } catch (err) { out.unknownEvent = err.name; }
    const joined = await a.join({ url, userName: "a", userData: { n: 0 } });
    out.joinedLocal = joined.local.user_name;
    await b.join({ url, userName: "b" });
    out.stateAfterJoin = a.meetingState();

    const write = a.setUserData({ n: 1 });
    out.userDataAtOnce = a.participants().local.userData;
    out.writeResult = await write;
    out.sessionResult = a.setMeetingSessionData({ topic: "crdts" }, "shallow-merge") ?? null;
    out.sessionAtOnce = a.meetingSessionState().data;
    // keysToDelete given as null means none (a loop over null once broke every later update)
    await a.setMeetingSessionData({ round: 2 }, "shallow-merge", null);
    out.sessionAfterNullKeys = a.meetingSessionState().data;

    // sendAppMessage returns the call object (daily-js's); a refusal is a nonfatal-error
    const refused = new Promise((resolve) => a.once("nonfatal-error", resolve));
    out.sendReturns = a.sendAppMessage("x".repeat(5000)) === a;
    out.tooLarge = await refused;
    try { await a.setUserData("y".repeat(5000)); }
    catch (err) {
        out.refused = { isError: err instanceof RoomstateError, code: err.code,
                        fromServer: err.fromServer, errorMsg: err.errorMsg };
    }
    out.userDataRolledBack = a.participants().local.userData;
    // two refused writes in flight at once: back to what the node has, not to the first one
    const both = await Promise.allSettled(["p", "q"].map((c) => a.setUserData(c.repeat(5000))));
    out.bothRefused = both.map((r) => r.reason?.code);
    out.userDataAfterBoth = a.participants().local.userData;
    // over the node's frame limit: refused here, the connection kept (the node would close it)
    try { await a.setUserData("z".repeat(140000)); }
    catch (err) { out.overFrame = { code: err.code, fromServer: err.fromServer ?? false }; }
    out.userDataAfterOverFrame = a.participants().local.userData;
    out.connectedAfterOverFrame = a._connected;

    a.sendAppMessage({ hello: "b" }, b.sessionId);
    for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    out.received = got;
    out.bSeesA = b.participants()[a.sessionId]?.user_name;

    // the resume position is the latest app message, not the last to arrive (a node can
    // deliver its own client's message after a later one of another node)
    for (const seq of ["1795935294642-3", "1795935294642-10", "1795935294641-99"]) {
        a._onFrame(JSON.stringify({ type: "app-message", data: 1, fromId: "x", seq }));
    }
    out.latestSeq = a.lastSeq;

    await a.leave();
    out.stateAfterLeave = a.meetingState();
    out.sessionAfterLeave = a.meetingSessionState().data;  // the room's, only while in it
    out.leftEvents = leftA;
    try { a.sendAppMessage("late"); } catch (err) { out.afterLeave = err.code; }
    await b.leave();

    // A request made while reconnecting waits at most `timeout` ms for the session to be back.
    const c = createCallObject({ timeout: 400, backoff: { baseMs: 60000, capMs: 60000 } });
    await c.join({ url, userName: "c" });
    c._ws.close(); // the network drops; the next attempt is a minute away
    for (let i = 0; i < 100 && c._connected; i++) await new Promise((r) => setTimeout(r, 10));
    const asked = Date.now();
    const lost = new Promise((resolve) => c.once("nonfatal-error", resolve));
    c.setMeetingSessionData({ late: true });
    const away = await lost;
    out.whileAway = { type: away.type, code: away.code, ms: Date.now() - asked };
    out.sessionWhileAway = c.meetingSessionState().data;
    await c.leave();

    // Reconnects that keep failing give up after backoff.maxAttempts, with `error`.
    const e = createCallObject({ backoff: { baseMs: 10, capMs: 20, maxAttempts: 2 } });
    const errors = [];
    e.on("error", (ev) => errors.push(ev));
    await e.join({ url, userName: "e" });
    e._wsUrl = "ws://127.0.0.1:9/v1/rooms/gone/ws";  // nothing listens there any more
    e._ws.close();
    for (let i = 0; i < 300 && e.meetingState() !== "error"; i++) {
        await new Promise((r) => setTimeout(r, 10));
    }
    out.gaveUp = { state: e.meetingState(), code: errors[0]?.code, type: errors[0]?.error?.type };

    // join's timeout covers connecting and the reply together (the join's own came on top)
    const d = createCallObject({ timeout: 2000 });
    const started = Date.now();
    try { await d.join({ url: slowUrl }); }
    catch (err) { out.slowJoin = { code: err.code, ms: Date.now() - started }; }
    return out;
}"""


def test_sdk_api(single: Deployment, browser: Browser) -> None:
    """The SDK's daily-js surface, driven directly from a page's script."""
    context = browser.new_context()
    try:
        page = context.new_page()
        room_url = f"{single.url}/rooms/{new_room()}"
        page.goto(room_url)
        with slow_websocket_server(handshake_s=1.5) as slow_url:
            out = page.evaluate(SDK_CHECKS, {"url": room_url, "slowUrl": slow_url})
    finally:
        context.close()
    assert out["unknownEvent"] == "TypeError"
    assert out["joinedLocal"] == "a"
    assert out["stateAfterJoin"] == "joined-meeting"
    assert out["userDataAtOnce"] == {"n": 1}
    assert out["sessionAtOnce"] == {"topic": "crdts"}
    assert out["sessionAfterNullKeys"] == {"topic": "crdts", "round": 2}
    assert out["writeResult"] == {"userData": {"n": 1}} and out["sessionResult"] is None
    assert out["sendReturns"] is True
    assert out["tooLarge"]["action"] == "nonfatal-error"
    assert out["tooLarge"]["type"] == "app-message-error"
    assert out["tooLarge"]["code"] == "too-large"
    assert "the limit is 4096" in out["tooLarge"]["errorMsg"]
    assert out["refused"]["isError"] and out["refused"]["fromServer"]
    assert out["refused"]["code"] == "too-large" and "4096" in out["refused"]["errorMsg"]
    assert out["userDataRolledBack"] == {"n": 1}
    assert out["bothRefused"] == ["too-large", "too-large"]
    assert out["userDataAfterBoth"] == {"n": 1}
    assert out["overFrame"] == {"code": "too-large", "fromServer": False}
    assert out["userDataAfterOverFrame"] == {"n": 1}
    assert out["connectedAfterOverFrame"] is True
    assert len(out["received"]) == 1
    # daily-js's event object; `seq` is the SDK's, not the app's
    assert set(out["received"][0]) == {"action", "callClientId", "data", "fromId"}
    assert out["received"][0]["data"] == {"hello": "b"}
    assert out["bSeesA"] == "a"
    assert out["stateAfterLeave"] == "left-meeting"
    assert [{**e, "callClientId": None} for e in out["leftEvents"]] == [
        {"action": "left-meeting", "callClientId": None, "reason": "left"}
    ]
    assert out["afterLeave"] == "not-joined"
    assert out["whileAway"]["code"] == "timeout"
    assert out["whileAway"]["type"] == "meeting-session-data-error"
    assert out["whileAway"]["ms"] < 5000, out["whileAway"]  # not until the next attempt (60 s)
    assert "late" not in out["sessionWhileAway"], "the write never sent is rolled back"
    assert out["sessionAfterLeave"] == {}
    assert out["latestSeq"] == "1795935294642-10"
    gave_up = {"state": "error", "code": "reconnect-failed", "type": "connection-error"}
    assert out["gaveUp"] == gave_up
    # connected after 1.5 s, then no reply: the join gives up at its 2 s, not 1.5 + 2
    assert out["slowJoin"]["code"] == "timeout", out["slowJoin"]
    assert out["slowJoin"]["ms"] < 3000, out["slowJoin"]


def test_reconnect_resumes_the_session(single: Deployment, people: Callable[..., Person]) -> None:
    """The socket drops, the node stays up: the SDK comes back with the same session id, gets
    what was sent meanwhile, and nobody saw it leave."""
    room = new_room()
    ann = people(single.url, room, "Ann Audience")
    bob = people(single.url, room, "Bob Builder")
    bob.react("👍")  # Ann has received an app message: she has a log position to resume after
    expect(ann.floating("👍")).to_have_count(1)
    sid = ann.session_id()
    bob.record("participant-left")
    bob.record("participant-joined")
    ann.record("app-message")
    ann.record("network-connection")

    # Slow the first reconnect attempt down so that Bob acts while Ann is away.
    ann.page.evaluate("window.demo.call.backoff = { baseMs: 2000, capMs: 2000 }")
    ann.page.evaluate("window.demo.call._ws.close()")
    expect(ann.by("status")).to_have_attribute("data-state", "reconnecting")
    bob.react("❤️")
    bob.raise_hand()
    expect(ann.by("status")).to_have_attribute("data-state", "connected", timeout=10_000)

    assert ann.session_id() == sid
    expect(ann.floating("❤️")).to_have_count(1)  # replayed
    expect(ann.participant("Bob Builder")).to_have_attribute("data-hand", "up")
    messages = ann.seen("app-message")
    assert [m["data"] for m in messages] == [{"type": "reaction", "emoji": "❤️"}]
    assert all(set(m) == {"action", "callClientId", "data", "fromId"} for m in messages)
    events = ann.seen("network-connection")
    assert [e["event"] for e in events] == ["interrupted", "connected"]
    assert events[1]["resumed"] is True and events[1]["sessionId"] == sid
    assert bob.seen("participant-left") == [] and bob.seen("participant-joined") == []

    # And the session works as before.
    ann.react("👏")
    expect(bob.floating("👏")).to_have_count(1)


def test_reconnect_through_haproxy_after_a_node_dies(
    tmp_path_factory: pytest.TempPathFactory, people: Callable[..., Person]
) -> None:
    """SIGKILL the node under a person behind haproxy: the SDK reconnects through haproxy to
    another node and resumes there; a message sent meanwhile arrives."""
    tmp = tmp_path_factory.mktemp("failover")
    deployment = start_deployment("3-nodes-redis", tmp, NODE_ENV)
    haproxy = None
    try:
        first, *rest = deployment.nodes
        backends = [("127.0.0.1", int(node.url.rsplit(":", 1)[1])) for node in rest]
        haproxy = Haproxy.start(tmp, backends)
        haproxy.wait_for_states()
        room = new_room()
        bob = people(first.url, room, "Bob Builder")  # on a node that stays up
        ann = people(haproxy.url, room, "Ann Audience")  # on one of the other two
        bob.react("👍")
        expect(ann.floating("👍")).to_have_count(1)
        sid = ann.session_id()
        bob.record("participant-left")
        site = Site("failover", [haproxy.url], rest)
        under_ann = rest[websocket_counts(site).index(1)]

        ann.page.evaluate("window.demo.call.backoff = { baseMs: 1500, capMs: 1500 }")
        under_ann.proc.kill()
        under_ann.proc.wait(5)
        expect(ann.by("status")).to_have_attribute("data-state", "reconnecting")
        bob.react("❤️")
        expect(ann.by("status")).to_have_attribute("data-state", "connected", timeout=15_000)
        assert ann.session_id() == sid
        expect(ann.floating("❤️")).to_have_count(1)
        ann.react("👏")
        expect(bob.floating("👏")).to_have_count(1)
        # The dead node's lease expires (5 s): its participants leave, but not Ann, who moved.
        bob.page.wait_for_timeout(7000)
        assert bob.seen("participant-left") == []
        expect(bob.participant("Ann Audience")).to_have_count(1)
        ann.react("🎉")
        expect(bob.floating("🎉")).to_have_count(1)
    finally:
        if haproxy is not None:
            haproxy.stop()
        deployment.stop()
