"""Tests of deploy/local/servers.py: they start real redis-server, Cluster and haproxy processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from deploy.local import servers
from deploy.local.servers import (
    HAPROXY_TEMPLATE,
    Haproxy,
    MissingBinaryError,
    RedisCluster,
    RedisServer,
    _port_is_free,
    find_binary,
    free_port,
    render_haproxy_config,
)

integration = pytest.mark.integration


def redis_cli(*args: str) -> str:
    cli = find_binary("redis-cli", "redis-tools")
    done = subprocess.run([cli, *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- no processes -----------------------------------------------------------------------------


def test_find_binary_names_the_package_that_is_missing() -> None:
    with pytest.raises(MissingBinaryError, match="apt-get install roomstate-missing-pkg"):
        find_binary("roomstate-no-such-binary", "roomstate-missing-pkg")


def test_find_binary_finds_what_is_there() -> None:
    assert find_binary("sh", "dash").endswith("/sh")


def test_free_ports_differ_and_cluster_bus_port_is_free() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    port = free_port(with_cluster_bus=True)
    assert port + 10000 <= 65535
    assert _port_is_free(port) and _port_is_free(port + 10000)


def test_haproxy_template_renders_every_placeholder(tmp_path: Path) -> None:
    text = render_haproxy_config(
        HAPROXY_TEMPLATE.read_text(),
        frontend_port=8000,
        backends=[("127.0.0.1", 8001), ("127.0.0.1", 8002)],
        runtime_socket=tmp_path / "h.sock",
    )
    body = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in body if "{{" in line]
    assert "    bind 127.0.0.1:8000" in body
    assert "    server node-1 127.0.0.1:8001 check" in body
    assert "    server node-2 127.0.0.1:8002 check" in body
    assert "    option httpchk GET /readyz" in body
    for line in ("timeout tunnel 1h", "timeout http-request 10s", "http-check expect status 200"):
        assert f"    {line}" in body


# -- Redis ------------------------------------------------------------------------------------


@integration
def test_redis_answers_ping_and_comes_back_on_the_same_port_after_kill(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path) as redis:
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        assert redis_cli("-p", str(redis.port), "ping") == "PONG"
        first_pid = redis.pid
        assert (tmp_path / f"redis-{redis.port}.log").exists()

        redis.kill()
        assert not pid_alive(first_pid)
        assert not redis.ping()

        redis.restart()
        assert redis.pid != first_pid
        assert redis_cli("-p", str(redis.port), "ping") == "PONG"
    assert not pid_alive(redis.pid)


@integration
def test_redis_pause_resume_and_appendonly_restart(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path, appendonly=True) as redis:
        assert redis.command("SET", "k", "v") == "OK"
        redis.pause()
        assert not redis.ping(timeout=0.3)  # stopped: connects, never answers
        redis.resume()
        assert redis.ping()
        redis.restart()  # graceful stop flushes the append-only file
        assert redis.command("GET", "k") == "v"


@integration
def test_leftover_processes_are_stopped_at_exit(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from deploy.local.servers import RedisServer; "
        "print(RedisServer.start(Path(sys.argv[1])).pid)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=servers.ROOT,
    )
    assert not pid_alive(int(done.stdout))


@integration
def test_cluster_of_three_masters(tmp_path: Path) -> None:
    cluster = RedisCluster.start(tmp_path, masters=3)  # (its own wait for the slots is bounded)
    try:
        assert cluster.seeds == ",".join(f"127.0.0.1:{p}" for p in cluster.ports)
        assert len(cluster.servers) == 3
        for server in cluster.servers:
            info = redis_cli("-p", str(server.port), "cluster", "info")
            assert "cluster_state:ok" in info
            assert "cluster_slots_assigned:16384" in info
        first, *_, last = cluster.ports
        for key in ("alpha", "beta", "gamma", "delta"):  # several slots, so several masters
            assert redis_cli("-c", "-p", str(first), "set", key, f"value-{key}") == "OK"
            assert redis_cli("-c", "-p", str(last), "get", key) == f"value-{key}"
    finally:
        cluster.stop()
    assert not any(pid_alive(s.pid) for s in cluster.servers)
    assert not list(tmp_path.glob("nodes-*.conf"))


# -- haproxy ----------------------------------------------------------------------------------


async def start_backend(name: str, ready: bool = True) -> tuple[web.AppRunner, int]:
    """A tiny aiohttp server: /readyz, / answering its name, /ws echoing text frames."""

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{name}:{msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", hello)
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.fixture
async def backends() -> AsyncIterator[list[int]]:
    started = [
        await start_backend("a"),
        await start_backend("b"),
        await start_backend("sick", ready=False),
    ]
    yield [port for _, port in started]
    for runner, _ in started:
        await runner.cleanup()


@integration
async def test_haproxy_routes_to_ready_backends_and_websockets(
    tmp_path: Path, backends: list[int]
) -> None:
    lb = await asyncio.to_thread(Haproxy.start, tmp_path, [("127.0.0.1", p) for p in backends])
    try:
        assert lb.url == f"http://127.0.0.1:{lb.port}"
        # fall 2, inter 1s: the backend whose /readyz answers 503 is out within ~2 s
        expected = {"node-1": "UP", "node-2": "UP", "node-3": "DOWN"}
        await asyncio.to_thread(lb.wait_for_states, expected, 10)

        seen = []
        async with aiohttp.ClientSession() as http:
            for _ in range(8):
                async with http.get(lb.url + "/", headers={"Connection": "close"}) as resp:
                    assert resp.status == 200
                    seen.append(await resp.text())
            assert set(seen) == {"a", "b"}

            async with http.ws_connect(lb.url.replace("http", "ws") + "/ws") as ws:
                await ws.send_str("hi")
                reply = await ws.receive_str(timeout=5)
                assert reply in ("a:hi", "b:hi")
    finally:
        await asyncio.to_thread(lb.stop)
    assert not pid_alive(lb.pid)
    assert (tmp_path / f"haproxy-{lb.port}.log").exists()


@integration
def test_a_tls_redis_takes_tls_only_and_mutual_tls_wants_the_client_certificate(
    tmp_path: Path,
) -> None:
    tls = servers.make_tls_files(tmp_path / "tls")
    with RedisServer.start(tmp_path, tls=tls, tls_auth_clients="yes") as server:
        assert server.url.startswith("rediss://") and server.ping()
        with pytest.raises((OSError, servers.RedisReplyError)):  # plain TCP: no answer
            servers.redis_command(server.port, "PING", timeout=1)
        cli = find_binary("redis-cli", "redis-tools")
        base = [cli, "-p", str(server.port), "--tls", "--cacert", str(tls.ca)]
        without = subprocess.run([*base, "PING"], capture_output=True, text=True, timeout=10)
        assert "PONG" not in without.stdout  # no client certificate
        mutual = [*base, "--cert", str(tls.client_cert), "--key", str(tls.client_key), "PING"]
        assert subprocess.run(mutual, capture_output=True, text=True, timeout=10).stdout == "PONG\n"


@integration
def test_sentinels_follow_a_killed_master_to_its_replica(tmp_path: Path) -> None:
    master = RedisServer.start(tmp_path)
    replica = RedisServer.start(tmp_path, extra_args=("--replicaof", "127.0.0.1", str(master.port)))
    try:
        with servers.RedisSentinels.start(tmp_path / "sentinel", master) as sentinels:
            assert sentinels.master_port() == master.port
            master.kill()
            servers.wait_until(
                lambda: sentinels.master_port() == replica.port,
                timeout=15,
                what="the Sentinels to name the replica",
            )
            assert replica.info("replication")["role"] == "master"
    finally:
        replica.stop()
        master.stop()
