"""R8: a client offline while more updates land than the room's log keeps.

The room's Redis stream is trimmed to about the last 1,000 events (`MAXLEN ~ 1000`). A client
that dropped its connection and resumes (within the resume grace, with `resumeAfter` = the seq of
the last app message it got) after 5,000 updates (app messages, userData and session-data writes)
must get a full snapshot with `"replayed": false` and no replayed message at all, never a part of
the gap; its final state must equal everyone's. A fresh joiner gets the same snapshot.

Near the trim boundary a resume may still find its gap in the log: then it must get *all* the
missed messages, in order, with `"replayed": true`. The second test walks that boundary while
another participant keeps writing (so the stream is trimmed while resumes read it).

`tests/integration/test_multi_node.py::test_a_gap_beyond_the_log_gives_a_snapshot_and_says_nothing_
was_replayed` covers the first at 1,300 app messages without checking the final state.

The nodes run with a high request rate limit: writers pipeline their requests (up to `WINDOW` in
flight) to land 5,000 updates in a few seconds, far over the default 100 requests/s per
connection; the rate limit is not what this row tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.local.servers import redis_command
from roomstate.bus.redis.bus import RedisBus
from roomstate.sdk.client import CallClient
from roomstate.settings import Settings

from ..integration.deployments import Deployment, start_deployment
from .conftest import FULL

pytestmark = pytest.mark.faults

UPDATES = 5000  # R8: updates while the client is offline
WINDOW = 16  # requests in flight per writer
BOUNDARY_ROUNDS = 20 if FULL else 3  # resumes near the trim boundary


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    env = {
        "ROOMSTATE_RESUME_GRACE_S": "60",  # the offline client stays a participant throughout
        "ROOMSTATE_RATE_PER_S": "100000",
        "ROOMSTATE_RATE_BURST": "100000",
    }
    started = start_deployment("3-nodes-redis", tmp_path, env)
    yield started
    started.stop()


async def joined(
    made: list[CallClient], deployment: Deployment, node: int, room: str, **fields: Any
) -> CallClient:
    client = CallClient(timeout=20.0)
    made.append(client)
    await client.join(deployment.nodes[node].room_url(room), **fields)
    return client


async def pipelined(calls: list[Callable[[], Awaitable[None]]], window: int = WINDOW) -> None:
    """Run `calls` in order with up to `window` in flight (frames leave in the calls' order)."""
    slots = asyncio.Semaphore(window)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


def client_view(client: CallClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """(userData by session id, session data) as one client sees the room."""
    users = {p["session_id"]: p.get("userData") for p in client.participants().values()}
    return users, client.meeting_session_state()["data"]


async def stored_view(deployment: Deployment, room: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(userData by present session id, session data) as Redis stores the room."""
    store = RedisBus(Settings(redis=deployment.stop_list[0].url))  # type: ignore[attr-defined]
    await store.start()
    try:
        state = (await store.snapshot(room)).state
    finally:
        await store.close()
    users = {
        sid: None if p.user_data is None else p.user_data.value
        for sid, p in state.present().items()
    }
    return users, state.session_data.value()


def stream_length(deployment: Deployment, room: str) -> int:
    """Entries in the room's Redis stream now."""
    port = deployment.stop_list[0].port  # type: ignore[attr-defined]
    keys = redis_command(port, "KEYS", f"*:log:{room}")
    assert isinstance(keys, list) and len(keys) == 1, keys
    length = redis_command(port, "XLEN", str(keys[0]))
    assert isinstance(length, int)
    return length


def app_messages(client: CallClient, since: int = 0) -> list[Any]:
    return [event["data"] for event in client.events("app-message")[since:]]


async def test_r8_a_client_back_after_5000_updates_gets_the_whole_snapshot_and_no_replay(
    deployment: Deployment, room: str, clients: list[CallClient]
) -> None:
    offline = await joined(clients, deployment, 0, room)
    writers = [await joined(clients, deployment, node, room) for node in (1, 2, 0, 1)]
    await offline.set_user_data({"me": "offline"})
    await writers[0].send_app_message("first")
    await offline.next_event("app-message")
    sid, token = offline.session_id, offline.resume_token
    await offline.close()  # the network drops; it may resume for 60 s

    # 5,000 updates: per writer, in turn, 3 app messages, a userData write, a session write
    calls: dict[int, list[Callable[[], Awaitable[None]]]] = {i: [] for i in range(len(writers))}
    users: dict[str | None, Any] = {sid: {"me": "offline"}}
    session: dict[str, int] = {}
    for n in range(UPDATES):
        index = n % len(writers)
        writer, kind = writers[index], (n // len(writers)) % 5
        if kind < 3:
            calls[index].append(lambda w=writer, n=n: w.send_app_message({"n": n}))
        elif kind == 3:
            calls[index].append(lambda w=writer, n=n: w.set_user_data({"n": n}))
            users[writer.session_id] = {"n": n}
        else:
            key = f"w{index}-{(n // 25) % 4}"
            calls[index].append(
                lambda w=writer, k=key, n=n: w.set_meeting_session_data({k: n}, "shallow-merge")
            )
            session[key] = n
    started = time.monotonic()
    await asyncio.gather(*(pipelined(c) for c in calls.values()))
    sent_s = time.monotonic() - started
    length = stream_length(deployment, room)
    expected = (users, session)
    async with asyncio.timeout(10):  # the ones online agree, on what was written
        while not all(client_view(w) == expected for w in writers):
            await asyncio.sleep(0.05)

    resumed_at = time.monotonic()
    reply = await offline.join(deployment.nodes[2].room_url(room), resume=token)
    resume_s = time.monotonic() - resumed_at
    assert (reply["sessionId"], reply["resumed"], reply["replayed"]) == (sid, True, False)
    snapshot_users = {s: p.get("userData") for s, p in reply["participants"].items()}
    assert (snapshot_users, reply["meetingSessionState"]["data"]) == expected, "a full snapshot"
    await asyncio.sleep(0.5)
    assert app_messages(offline) == ["first"], "no partial replay"
    fresh = await joined(clients, deployment, 1, room)
    fresh_users = {s: v for s, v in client_view(fresh)[0].items() if s != fresh.session_id}
    assert (fresh_users, client_view(fresh)[1]) == expected, "a fresh joiner's snapshot"

    await writers[1].send_app_message("after")  # live again
    await offline.next_event("app-message", predicate=lambda e: e["data"] == "after")
    assert app_messages(offline) == ["first", "after"]
    everyone = [offline, *writers, fresh]
    settled_at = time.monotonic()
    async with asyncio.timeout(10):
        while True:
            views = [client_view(c) for c in everyone]
            if (
                all(v == views[0] for v in views)
                and await stored_view(deployment, room) == (views[0])
            ):
                break
            await asyncio.sleep(0.05)
    print(
        f"\nR8: {UPDATES} updates (3,000 app messages, 1,000 userData, 1,000 session writes) "
        f"from 4 writers in {sent_s:.1f} s ({UPDATES / sent_s:.0f}/s); stream length "
        f"{length}; resume on another node answered in {resume_s * 1000:.0f} ms: resumed, "
        f"replayed false, snapshot complete ({len(snapshot_users)} participants, "
        f"{len(session)} session keys), 0 messages replayed; a fresh joiner got the same; "
        f"all {len(everyone)} clients and Redis equal after {time.monotonic() - settled_at:.2f} s"
    )


async def test_r8_near_the_trim_boundary_a_resume_replays_all_or_nothing(
    deployment: Deployment, room: str, clients: list[CallClient]
) -> None:
    rng = random.Random(seed := random.randrange(1 << 30))
    away = await joined(clients, deployment, 0, room)
    sender = await joined(clients, deployment, 1, room)
    noisy = await joined(clients, deployment, 2, room)
    token = away.resume_token
    noise = 0
    stop = asyncio.Event()

    async def make_noise() -> None:  # userData writes: the stream grows and is trimmed
        nonlocal noise
        while not stop.is_set():
            await pipelined([lambda i=i: noisy.set_user_data({"i": i}) for i in range(8)], 4)
            noise += 8
            await asyncio.sleep(0.005)

    noiser = asyncio.create_task(make_noise())
    outcomes: list[tuple[int, bool, int]] = []
    try:
        for round_ in range(BOUNDARY_ROUNDS):
            await sender.send_app_message({"mark": round_})
            await away.next_event(
                "app-message", predicate=lambda e, r=round_: e["data"] == {"mark": r}
            )
            await away.close()
            gap = rng.randint(500, 1100)
            await pipelined(
                [
                    lambda r=round_, j=j: sender.send_app_message({"gap": r, "n": j})
                    for j in range(gap)
                ]
            )
            seen = len(away.events("app-message"))
            node = rng.randrange(3)
            reply = await away.join(deployment.nodes[node].room_url(room), resume=token)
            assert reply["resumed"] is True
            replayed = bool(reply["replayed"])
            if replayed:
                async with asyncio.timeout(10):
                    while len(away.events("app-message")) - seen < gap:
                        await asyncio.sleep(0.02)
            else:
                await asyncio.sleep(0.3)
            got = [
                m["n"]
                for m in app_messages(away, seen)
                if isinstance(m, dict) and m.get("gap") == round_
            ]
            outcomes.append((gap, replayed, len(got)))
            assert got == (list(range(gap)) if replayed else []), (
                f"round {round_}: gap {gap}, replayed {replayed}, got {len(got)} "
                f"({got[:3]}...{got[-3:]})"
            )
    finally:
        stop.set()
        await noiser
    full = [gap for gap, replayed, _ in outcomes if replayed]
    none = [gap for gap, replayed, _ in outcomes if not replayed]
    print(
        f"\nR8 boundary: {len(outcomes)} resumes (seed {seed}) with {noise} userData writes "
        f"going on: {len(full)} replayed in full (gaps {sorted(full)}), {len(none)} got a "
        f"snapshot and nothing replayed (gaps {sorted(none)}); partial replays: 0"
    )
