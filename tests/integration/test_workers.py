"""`roomstate serve --workers 2` on a real redis-server: two node processes on one port, each a
node of its own, supervised, drained together."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import pytest

from deploy.local.servers import RedisServer
from roomstate.bus.redis.bus import RedisBus
from roomstate.sdk.client import CallClient
from roomstate.settings import Settings
from roomstate.supervisor import CRASH_LOOP

from .conftest import FAST, ROOT, NodeProcess, listening_pids, start_node

pytestmark = pytest.mark.integration


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def supervisor(tmp_path: Path, redis: RedisServer) -> Iterator[NodeProcess]:
    """`roomstate serve --workers 2`, ready: every worker printed its line."""
    started = start_node(tmp_path, FAST, "--workers", "2", "--redis", redis.url)
    yield started
    started.stop()


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisBus]:
    """A bus of the test's own on the same Redis: where the workers' participants are stored."""
    bus = RedisBus(Settings(redis=redis.url))
    await bus.start()
    yield bus
    await bus.close()


def port_of(node: NodeProcess) -> int:
    port = urlsplit(node.url).port
    assert port is not None
    return port


def workers(node: NodeProcess) -> dict[str, psutil.Process]:
    """The supervisor's live worker processes by node id (the last --node-id of each)."""
    found = {}
    for child in psutil.Process(node.proc.pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            argv = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        ids = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--node-id"]
        if ids:  # none yet: a worker forked but not yet exec'd still shows the supervisor's argv
            found[ids[-1]] = child
    return found


def listeners(node: NodeProcess) -> set[int]:
    """The PIDs of the supervisor and its children listening on its port."""
    return listening_pids(node.proc.pid, port_of(node))


async def location(store: RedisBus, room: str, session_id: str) -> str:
    """The node holding `session_id`, as stored in Redis."""
    async with asyncio.timeout(5):
        while True:
            present = (await store.snapshot(room)).state.present()
            record = present.get(session_id)
            if record is not None and record.location is not None:
                value: Any = record.location.value
                return str(value["node"])
            await asyncio.sleep(0.05)


async def join_on_both(
    node: NodeProcess, store: RedisBus, room: str, made: list[CallClient], each: int = 2
) -> dict[str, list[CallClient]]:
    """Clients joined through the one port until each worker holds `each` of them (the kernel
    spreads connections at random), grouped by the node that holds them."""
    held: dict[str, list[CallClient]] = {}
    for _ in range(60):
        client = CallClient()
        made.append(client)
        await client.join(node.room_url(room))
        assert client.session_id is not None
        held.setdefault(await location(store, room, client.session_id), []).append(client)
        if len(held) == 2 and all(len(group) >= each for group in held.values()):
            return held
    raise AssertionError(f"60 joins did not land on both workers: {sorted(held)}")


async def test_two_workers_listen_on_one_port_and_joins_land_on_both(
    supervisor: NodeProcess, store: RedisBus, room: str, clients: list[CallClient]
) -> None:
    running = workers(supervisor)
    assert len(running) == 2
    assert listeners(supervisor) == {p.pid for p in running.values()}  # not the supervisor
    held = await join_on_both(supervisor, store, room, clients)
    assert set(held) == set(running)
    assert sorted(i.rsplit("-", 1)[1] for i in held) == ["w0", "w1"]
    async with asyncio.timeout(5):  # one room across the two processes, through Redis
        while not all(len(c.participants()) == len(clients) for c in clients):
            await asyncio.sleep(0.02)


async def test_a_killed_worker_starts_again_and_its_participants_leave_as_node_lost(
    supervisor: NodeProcess, store: RedisBus, room: str, clients: list[CallClient]
) -> None:
    held = await join_on_both(supervisor, store, room, clients)
    victim_id, survivor_id = sorted(held)
    victim = workers(supervisor)[victim_id]
    victims = {c.session_id for c in held[victim_id]}
    survivors = held[survivor_id]
    os.kill(victim.pid, signal.SIGKILL)

    async with asyncio.timeout(10):
        while not all(
            victims <= {e["participant"]["session_id"] for e in s.events("participant-left")}
            for s in survivors
        ):
            await asyncio.sleep(0.05)
    for watcher in survivors:
        assert {e["reason"] for e in watcher.events("participant-left")} == {"node-lost"}

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        again = workers(supervisor).get(victim_id)
        if again is not None and again.pid != victim.pid and len(listeners(supervisor)) == 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"{victim_id} was not started again: {workers(supervisor)}")
    assert supervisor.proc.poll() is None
    # the restarted worker serves joins again
    more = await join_on_both(supervisor, store, room, clients, each=len(held[victim_id]) + 1)
    assert set(more) == {victim_id, survivor_id}


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    supervisor: NodeProcess, store: RedisBus, room: str, clients: list[CallClient]
) -> None:
    held = await join_on_both(supervisor, store, room, clients)
    running = list(workers(supervisor).values())
    supervisor.proc.send_signal(signal.SIGTERM)
    for group in held.values():
        for client in group:
            closed: Any = await client.next_event("left-meeting", timeout=10)
            assert closed["closeCode"] == 1012
    assert supervisor.proc.wait(15) == 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in running)


async def test_a_worker_in_a_crash_loop_stops_the_supervisor_with_code_1(
    supervisor: NodeProcess,
) -> None:
    victim_id = "-w1"
    killed: set[int] = set()
    deadline = time.monotonic() + 60
    while len(killed) < CRASH_LOOP and time.monotonic() < deadline:
        for node_id, process in workers(supervisor).items():
            if node_id.endswith(victim_id) and process.pid not in killed:
                os.kill(process.pid, signal.SIGKILL)  # each time soon after its start
                killed.add(process.pid)
        await asyncio.sleep(0.05)
    assert supervisor.proc.wait(20) == 1
    assert f"died {CRASH_LOOP} times in a row" in supervisor.log.read_text()


def test_a_killed_supervisor_leaves_no_worker_on_the_port(supervisor: NodeProcess) -> None:
    running = list(workers(supervisor).values())
    supervisor.proc.kill()
    supervisor.proc.wait(5)
    left = psutil.wait_procs(running, timeout=15)[1]
    for process in left:  # (no longer the supervisor's children: nothing else stops them)
        process.kill()
    assert not left, f"workers still running: {left}"


def test_with_json_logs_the_supervisor_and_its_workers_print_only_json_lines(
    tmp_path: Path, redis: RedisServer
) -> None:
    node = start_node(
        tmp_path, {"ROOMSTATE_LOG_FORMAT": "json"}, "--workers", "2", "--redis", redis.url
    )
    ids = set(workers(node))
    node.proc.terminate()
    assert node.proc.stdout is not None
    stdout = node.proc.stdout.read()
    assert node.proc.wait(15) == 0
    node.proc.stdout.close()
    printed = [orjson.loads(line) for line in stdout.splitlines() if line.strip()]
    logged = [orjson.loads(line) for line in node.log.read_text().splitlines() if line.strip()]
    assert [p["message"].split(" ")[0] for p in printed] == ["demo"]  # after the ready line
    assert ids <= {entry.get("node") for entry in logged}  # each worker names itself
    assert any(e["logger"] == "roomstate.supervisor" for e in logged)


def test_more_than_one_worker_on_the_in_memory_bus_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMSTATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "roomstate", "serve", "--port", "0", "--workers", "2"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    assert done.returncode != 0
    assert "more than one worker needs a Redis bus" in done.stderr
    assert "listening on" not in done.stdout
