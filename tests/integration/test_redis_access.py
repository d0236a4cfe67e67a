"""Redis as production runs it: TLS only, the default user off, the node as the ACL user that
docs/operations.md gives, secrets from files. Real redis-server and node processes; the
certificates are made with openssl for each module."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from deploy.local.servers import (
    RedisCluster,
    RedisServer,
    TlsFiles,
    make_tls_files,
    track,
)
from roomstate.auth import make_token
from roomstate.bus.redis.bus import RedisBus
from roomstate.errors import BusError
from roomstate.sdk.client import CallClient
from roomstate.sdk.rest import RestClient
from roomstate.settings import Settings

from .conftest import API_KEY, FAST, ROOT, listening_pids, webhook_receiver
from .secure_redis import NODE_PASSWORD, NODE_USER, acl_redis, denials, tls, tls_cluster

__all__ = ["acl_redis", "tls", "tls_cluster"]  # fixtures

pytestmark = pytest.mark.integration


@dataclass
class JsonNode:
    proc: subprocess.Popen[str]
    url: str
    out: Path
    err: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def lines(self) -> list[str]:
        return [*self.out.read_text().splitlines(), *self.err.read_text().splitlines()]


def start_json_node(tmp: Path, env: dict[str, str], *args: str) -> JsonNode:
    """A node with JSON logs on a free port; waits for its "listening on" line."""
    name = uuid.uuid4().hex[:6]
    out, err = tmp / f"node-{name}.out", tmp / f"node-{name}.err"
    full_env = {**os.environ, **FAST, **env, "PYTHONPATH": str(ROOT)}
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "roomstate", "serve", "--port", "0", "--log-format", "json",
             *args],
            stdout=stdout, stderr=stderr, text=True, env=full_env, cwd=ROOT,
        )  # fmt: skip
    track(proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        for line in out.read_text().splitlines():
            message = json.loads(line).get("message", "")
            if "listening on" in message:
                return JsonNode(proc, message.split("listening on", 1)[1].strip(), out, err)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"node did not start: {err.read_text()[-2000:]}")


async def wait_ready(http: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.1)


def listening(node: JsonNode) -> set[int]:
    """The PIDs of the node's processes (it, and its workers) listening on its port."""
    return listening_pids(node.proc.pid, int(node.url.rsplit(":", 1)[1].split("/")[0]))


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_node_on_tls_redis_as_an_acl_user_serves_rest_and_logs_json(
    acl_redis: RedisServer,
    tls: TlsFiles,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    room: str,
    workers: int,
) -> None:
    """The production line: an API key (from a file), rediss:// with the ACL user and password
    in the URL, the CA file, JSON logs, one process or two workers on one port: ready, a
    session-data write and read through REST."""
    (tmp_path / "api-key").write_text(API_KEY + "\n")
    url = f"rediss://roomstate:{NODE_PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    node = start_json_node(
        tmp_path,
        {"ROOMSTATE_API_KEY_FILE": str(tmp_path / "api-key")},
        "--redis", url, "--redis-tls-ca", str(tls.ca), "--workers", str(workers),
    )  # fmt: skip
    try:
        await wait_ready(http, node.url)
        assert len(listening(node)) == workers, "each worker listens on the one port"
        async with RestClient(node.url, API_KEY) as rest:
            assert await rest.set_session_data(room, {"topic": "tls"}) == {"data": {"topic": "tls"}}
            assert await rest.get_session_data(room) == {"data": {"topic": "tls"}}
        stored = acl_redis.command("KEYS", f"rs:*:state:{room}")
        assert stored, "the write is in Redis"
    finally:
        assert node.stop() == 0
    lines = node.lines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert denials(acl_redis) == []


async def test_a_node_on_a_tls_cluster_as_the_acl_user_serves_rest(
    tls_cluster: RedisCluster, tls: TlsFiles, tmp_path: Path, http: aiohttp.ClientSession, room: str
) -> None:
    """The same on a Cluster: TLS only, the default user off on every server, the node's user
    with what the docs add for a Cluster; credentials in settings, the password from a file."""
    (tmp_path / "redis-password").write_text(NODE_PASSWORD)
    receiver = webhook_receiver()
    hook_url, got = await anext(receiver)
    env = {
        "ROOMSTATE_API_KEY": API_KEY,
        "ROOMSTATE_REDIS_USERNAME": NODE_USER,
        "ROOMSTATE_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"),
        "ROOMSTATE_WEBHOOK_URL": hook_url,  # (webhooks on: their commands are allowed too)
        "ROOMSTATE_WEBHOOK_SECRET": base64.b64encode(b"acl-webhook-key-0123456789").decode(),
    }
    node = start_json_node(
        tmp_path, env, "--redis-cluster", tls_cluster.seeds, "--redis-tls-ca", str(tls.ca)
    )
    try:
        await wait_ready(http, node.url)
        async with RestClient(node.url, API_KEY) as rest:
            written = {"data": {"on": "cluster"}}
            assert await rest.set_session_data(room, {"on": "cluster"}) == written
            assert await rest.get_session_data(room) == written
        async with asyncio.timeout(10):  # its session-data.updated
            while not got:
                await asyncio.sleep(0.1)
    finally:
        assert node.stop() == 0
        await receiver.aclose()
    assert all(isinstance(json.loads(line), dict) for line in node.lines())
    for server in tls_cluster.servers:
        assert denials(server) == []


async def test_two_nodes_as_the_documented_acl_user_join_write_read_resume_and_upkeep(
    acl_redis: RedisServer,
    tls: TlsFiles,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    room: str,
    clients: list[CallClient],
) -> None:
    """Credentials in settings (the password from a file), a client certificate, webhooks on:
    every part of the bus works with exactly the documented rule, and Redis refused nothing."""
    (tmp_path / "redis-password").write_text(NODE_PASSWORD)
    receiver = webhook_receiver()
    hook_url, got = await anext(receiver)
    env = {
        "ROOMSTATE_WEBHOOK_URL": hook_url,
        "ROOMSTATE_WEBHOOK_SECRET": base64.b64encode(b"acl-webhook-key-0123456789").decode(),
        # (short: leases change hands, claims and clean-ups run, within the test)
        "ROOMSTATE_WEBHOOK_CLAIM_S": "2",
        "ROOMSTATE_WEBHOOK_TIMEOUT_S": "1",
        "ROOMSTATE_API_KEY": API_KEY,
        "ROOMSTATE_REDIS": f"rediss://127.0.0.1:{acl_redis.port}/0",
        "ROOMSTATE_REDIS_USERNAME": "roomstate",
        "ROOMSTATE_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"),
        "ROOMSTATE_REDIS_TLS_CA": str(tls.ca),
        "ROOMSTATE_REDIS_TLS_CERT": str(tls.client_cert),
        "ROOMSTATE_REDIS_TLS_KEY": str(tls.client_key),
    }
    a, b = start_json_node(tmp_path, env), start_json_node(tmp_path, env)
    try:
        for node in (a, b):
            await wait_ready(http, node.url)
        ann, bob = CallClient(), CallClient()
        clients += [ann, bob]
        await ann.join(f"{a.url}/rooms/{room}", token=make_token(API_KEY, room, user_name="ann"))
        await bob.join(f"{b.url}/rooms/{room}", token=make_token(API_KEY, room, user_name="bob"))
        await ann.set_meeting_session_data({"round": 1})
        async with asyncio.timeout(5):
            while bob.meeting_session_state()["data"] != {"round": 1}:
                await asyncio.sleep(0.02)
        async with RestClient(b.url, API_KEY) as rest:
            assert await rest.get_session_data(room) == {"data": {"round": 1}}
        # bob drops; ann writes meanwhile; bob resumes and has it
        token = bob.resume_token
        await bob.close()
        await ann.set_meeting_session_data({"round": 2})
        await bob.join(
            f"{b.url}/rooms/{room}", token=make_token(API_KEY, room, user_name="bob"), resume=token
        )
        async with asyncio.timeout(5):
            while bob.meeting_session_state()["data"] != {"round": 2}:
                await asyncio.sleep(0.02)
        # upkeep: node A dies; B's lease rounds find it lost and remove ann
        a.proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(15):
            while any(p.get("user_name") == "ann" for p in bob.participants().values()):
                await asyncio.sleep(0.1)
        async with asyncio.timeout(15):  # B delivers A's shards' events too, then its own
            while not any(e["payload"].get("reason") == "node-lost" for e in got):
                await asyncio.sleep(0.1)
        async with http.get(
            f"{b.url}/v1/webhooks/dead-letters", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as response:
            assert response.status == 200
    finally:
        a.stop()
        b.stop()
        await receiver.aclose()
    assert {"participant.joined", "participant.left"} <= {e["type"] for e in got}
    assert denials(acl_redis) == []


async def test_mutual_tls_refuses_a_node_without_a_client_certificate(
    tmp_path: Path, tls: TlsFiles, room: str
) -> None:
    server = RedisServer.start(tmp_path, tls=tls, tls_auth_clients="yes")
    try:
        without = RedisBus(Settings(redis=server.url, redis_tls_ca=str(tls.ca)))
        with pytest.raises(BusError):
            await without.start()
        await without.close()
        with_cert = RedisBus(
            Settings(
                redis=server.url,
                redis_tls_ca=str(tls.ca),
                redis_tls_cert=str(tls.client_cert),
                redis_tls_key=str(tls.client_key),
            )
        )
        await with_cert.start()
        try:
            assert (await with_cert.snapshot(room)).position == "0-0"
        finally:
            await with_cert.close()
    finally:
        server.stop()


async def test_a_certificate_from_another_ca_is_refused(
    tmp_path: Path, tls: TlsFiles, room: str
) -> None:
    other = make_tls_files(tmp_path / "other")
    server = RedisServer.start(tmp_path, tls=tls)
    try:
        bus = RedisBus(Settings(redis=server.url, redis_tls_ca=str(other.ca)))
        with pytest.raises(BusError, match="cannot reach Redis"):
            await bus.start()
        await bus.close()
    finally:
        server.stop()
