"""A node behind Redis Sentinel through a failover: a master and a replica on TLS only, the
default user off, the node as the documented ACL user, three Sentinels (`redis-server
--sentinel`) over TLS.

A participant keeps the room open on node A (so A holds a replica of it) while REST writes one
session-data key at a time, each retried until acknowledged. The master is killed (SIGKILL) or
handed over (`SENTINEL FAILOVER`). Checks: some writes are refused while there is no master, every
write is acknowledged after, a node started afterwards reads every acknowledged key, and Redis
refused no command of the node (ACL LOG). A handover loses the writes the old master took after
its replica was promoted (Redis replicates asynchronously); node A, which holds the room, finds
them missing from the new master's stream and merges them back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from deploy.local.servers import RedisSentinels, RedisServer, TlsFiles
from roomstate.auth import make_token
from roomstate.sdk.client import CallClient

from ..integration.conftest import API_KEY
from ..integration.secure_redis import (
    ADMIN,
    ADMIN_ONLY,
    NODE_PASSWORD,
    NODE_USER,
    acl_user,
    denials,
    tls,
)
from ..integration.test_redis_access import JsonNode, start_json_node, wait_ready

__all__ = ["tls"]  # fixture

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MASTER = "roomstate"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class SentinelGroup:
    master: RedisServer
    replica: RedisServer
    sentinels: RedisSentinels

    def server_on(self, port: int) -> RedisServer:
        return self.master if self.master.port == port else self.replica


@pytest.fixture
def group(tmp_path: Path, tls: TlsFiles) -> Iterator[SentinelGroup]:
    # Each server may become the other's replica: both reach their master as the admin user.
    args = (*ADMIN_ONLY, "--masteruser", ADMIN[0], "--masterauth", ADMIN[1],
            "--repl-diskless-sync-delay", "0")  # fmt: skip
    master = RedisServer.start(tmp_path, tls=tls, auth=ADMIN, extra_args=args)
    replica = RedisServer.start(
        tmp_path,
        tls=tls,
        auth=ADMIN,
        extra_args=(*args, "--replicaof", "127.0.0.1", str(master.port)),
    )
    sentinels = None
    try:
        for server in (master, replica):  # ACL users are not replicated
            acl_user(server, NODE_PASSWORD)
        sentinels = RedisSentinels.start(tmp_path, master, name=MASTER, auth=ADMIN)
        yield SentinelGroup(master, replica, sentinels)
    finally:
        if sentinels is not None:
            sentinels.stop()
        replica.stop()
        master.stop()


def node_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "redis-password").write_text(NODE_PASSWORD + "\n")
    return {
        "ROOMSTATE_API_KEY": API_KEY,
        "ROOMSTATE_REDIS_USERNAME": NODE_USER,
        "ROOMSTATE_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"),
    }


def start_node(tmp_path: Path, tls: TlsFiles, group: SentinelGroup) -> JsonNode:
    return start_json_node(
        tmp_path,
        node_env(tmp_path),
        "--redis-sentinel", group.sentinels.addresses, "--redis-sentinel-master", MASTER,
        "--redis-tls-ca", str(tls.ca),
    )  # fmt: skip


@pytest.mark.parametrize("how", ["kill", "failover"])
async def test_writes_refused_during_a_sentinel_failover_come_back_and_none_acked_is_lost(
    how: str,
    group: SentinelGroup,
    tls: TlsFiles,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    room: str,
    clients: list[CallClient],
) -> None:
    a = start_node(tmp_path, tls, group)
    b = None
    try:
        await wait_ready(http, a.url)
        host = CallClient()
        clients.append(host)
        await host.join(f"{a.url}/rooms/{room}", token=make_token(API_KEY, room, user_name="h"))
        refused = 0

        async def write(n: int) -> None:
            """Key k<n>, retried until acknowledged (a 200 is an acknowledged write)."""
            nonlocal refused
            body = {"data": {f"k{n}": n}, "mergeStrategy": "shallow-merge"}
            async with asyncio.timeout(20):
                while True:
                    url = f"{a.url}/v1/rooms/{room}/session-data"
                    async with http.post(url, json=body, headers=AUTH) as response:
                        if response.status == 200:
                            return
                        assert response.status == 503, await response.text()
                    refused += 1
                    await asyncio.sleep(0.05)

        for n in range(10):
            await write(n)
        old_master = group.master.port
        started = time.monotonic()
        if how == "kill":
            group.master.kill()
        else:
            group.sentinels.failover()
        n = 10
        while group.sentinels.master_port() in (old_master, None):
            await write(n)
            n += 1
            assert time.monotonic() - started < 20, "no failover within 20 s"
        for _ in range(10):  # on the new master
            await write(n)
            n += 1
        print(f"\n{how}: {n - 10} writes after it, {refused} refusals, "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        if how == "kill":
            assert refused > 0, "writes are refused while there is no master"
        expected = {f"k{i}": i for i in range(n)}
        b = start_node(tmp_path, tls, group)  # reads the room from the new master
        await wait_ready(http, b.url)
        lost = None
        async with asyncio.timeout(10):  # writes the failover lost are merged back by A
            while True:
                url = f"{b.url}/v1/rooms/{room}/session-data"
                async with http.get(url, headers=AUTH) as response:
                    assert response.status == 200
                    data = (await response.json())["data"]
                if data == expected:
                    break
                lost = len(set(expected) - set(data)) if lost is None else lost
                await asyncio.sleep(0.2)
        if lost:
            print(f"{lost} acknowledged keys lost by the failover, merged back by "
                  f"{time.monotonic() - started:.1f} s")  # fmt: skip
        new_master = group.server_on(group.sentinels.master_port() or 0)
        assert new_master.port != old_master
        assert denials(new_master) == []
    finally:
        a.stop()
        if b is not None:
            b.stop()
