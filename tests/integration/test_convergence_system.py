"""Convergence of the real system: random concurrent writes from clients on different nodes.

Three nodes share one Redis; three clients, one per node, write userData and session data
(replace, shallow-merge, keysToDelete) concurrently, each in its own program order. After
quiescence every client sees the same participants and session data, and that equals the model:
userData is each writer's last value, and session data is every write applied to a plain dict
in stamp order. The stamps are the ones the nodes gave the writes, read back from the room's
Redis stream (the history every node merged).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomstate.bus.redis.bus import log_key
from roomstate.crdt import Stamp
from roomstate.sdk.client import CallClient
from roomstate.wire.events import decode_event

from .deployments import Deployment, start_deployment

pytestmark = pytest.mark.integration

KEYS = ["a", "b", "c", "d"]
values = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans(), st.none())
objects = st.dictionaries(st.sampled_from(KEYS), values, max_size=3)
ops = st.one_of(
    st.tuples(st.just("user-data"), values),
    st.tuples(st.just("replace"), objects),
    st.tuples(
        st.just("shallow-merge"),
        objects,
        st.lists(st.sampled_from(KEYS), max_size=2, unique=True),
    ),
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    started = start_deployment("3-nodes-redis", tmp_path_factory.mktemp("convergence"))
    yield started
    started.stop()


async def run(client: CallClient, program: list[tuple[Any, ...]]) -> None:
    for op in program:
        if op[0] == "user-data":
            await client.set_user_data(op[1])
        elif op[0] == "replace":
            await client.set_meeting_session_data(op[1])
        else:
            deletes = [key for key in op[2] if key not in op[1]]
            await client.set_meeting_session_data(op[1], "shallow-merge", keys_to_delete=deletes)


def view(client: CallClient) -> tuple[dict[str, Any], dict[str, Any]]:
    users = {
        (client.session_id if sid == "local" else sid): p["userData"]
        for sid, p in client.participants().items()
    }
    return users, client.meeting_session_state()["data"]


def session_model(redis_url: str, room: str) -> dict[str, Any]:
    """Every session-data write in the room's stream, applied in stamp order to a dict."""
    writes: list[tuple[Stamp, Any, dict[str, Any], list[str]]] = []
    with redis.Redis.from_url(redis_url) as r:
        for _, fields in r.xrange(log_key(room)):
            delta = decode_event(fields[b"e"]).delta
            if delta is None or not (delta.session_data.entries or delta.session_data.epoch):
                continue
            m = delta.session_data
            stamps = {e.stamp for e in m.entries.values()} | ({m.epoch} if m.epoch else set())
            assert len(stamps) == 1, "one write, one stamp"
            sets = {k: e.value for k, e in m.entries.items() if not e.deleted}
            deletes = [k for k, e in m.entries.items() if e.deleted]
            writes.append((stamps.pop(), m.epoch is not None, sets, deletes))
    model: dict[str, Any] = {}
    for _, replace, sets, deletes in sorted(writes, key=lambda w: w[0]):
        if replace:
            model = {}
        model.update(sets)
        for key in deletes:
            model.pop(key, None)
    return model


async def scenario(deployment: Deployment, programs: list[list[tuple[Any, ...]]]) -> None:
    room = f"conv-{uuid.uuid4().hex[:10]}"
    clients = [CallClient() for _ in programs]
    try:
        for client, process in zip(clients, deployment.nodes, strict=True):
            await client.join(process.room_url(room))
        async with asyncio.timeout(5):
            while not all(len(c.participants()) == len(clients) for c in clients):
                await asyncio.sleep(0.02)
        await asyncio.gather(*(run(c, p) for c, p in zip(clients, programs, strict=True)))

        expected_users = {
            c.session_id: next((op[1] for op in reversed(p) if op[0] == "user-data"), None)
            for c, p in zip(clients, programs, strict=True)
        }
        redis_url = deployment.stop_list[0].url  # type: ignore[attr-defined]
        expected = (expected_users, session_model(redis_url, room))
        try:
            async with asyncio.timeout(5):  # quiescence: batching intervals are 100/300 ms
                while not all(view(c) == expected for c in clients):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            views = [view(c) for c in clients]
            raise AssertionError(f"not converged to {expected}: {views}") from None
    finally:
        for client in clients:
            await client.leave()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(programs=st.lists(st.lists(ops, max_size=8), min_size=3, max_size=3))
def test_replicas_converge_to_the_lww_model_under_concurrent_writes(
    deployment: Deployment, programs: list[list[tuple[Any, ...]]]
) -> None:
    asyncio.run(scenario(deployment, programs))
