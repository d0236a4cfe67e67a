"""Start what a benchmark runs against, as real processes on loopback, stopped by PID: roomstate
topologies and the floor servers (bench/systems/ws_floor.py); the peers are started by
`bench.harness.peers`. A `Deployment` is what the runner measures: its nodes' URLs and processes.

Processes are started with deploy/local/servers.py (`ManagedProcess`, `RedisServer`,
`RedisCluster`), which stops anything left over at exit.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.servers import (
    ManagedProcess,
    RedisCluster,
    RedisServer,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]

TOPOLOGIES = {
    # name: (nodes, store)
    "1-node-memory": (1, "memory"),
    "1-node-redis": (1, "redis"),
    "2-nodes-redis": (2, "redis"),
    "3-nodes-redis": (3, "redis"),
    "3-nodes-cluster": (3, "cluster"),
}

# Settings for every benchmarked node: the senders go far past the per-connection rate limit
# (100/s, burst 200) on purpose, and a saturated step must not cut receivers off as slow
# consumers (1 MiB send queue) before the step's loss is counted.
BENCH_NODE_ENV = {
    "ROOMSTATE_RATE_PER_S": "1000000",
    "ROOMSTATE_RATE_BURST": "1000000",
    "ROOMSTATE_SEND_QUEUE_BYTES": str(256 * 1024 * 1024),
    "ROOMSTATE_LOG_LEVEL": "WARNING",
    "ROOMSTATE_RESUME_GRACE_S": "0",
}


@dataclass
class Deployment:
    name: str
    kind: str  # roomstate | socketio (a peer) | floor (1 -> N) | floor-rooms (rooms, as ours)
    entries: list[str]  # base URLs, one per node
    nodes: list[ManagedProcess]
    stores: list[ManagedProcess] = field(default_factory=list)  # redis-server processes
    redis: RedisServer | None = None
    cluster: RedisCluster | None = None

    def ws_url(self, node: int, room: str) -> str:
        base = self.entries[node].replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        if self.kind == "roomstate":
            return f"{base}/v1/rooms/{room}/ws"
        if self.kind == "socketio":
            return f"{base}/socket.io/?EIO=4&transport=websocket"
        if self.kind == "floor-rooms":
            return f"{base}/room/{room}"
        return f"{base}/recv"

    def node_pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    def store_pids(self) -> list[int]:
        return [s.pid for s in self.stores]

    def redis_servers(self) -> list[RedisServer]:
        if self.redis is not None:
            return [self.redis]
        if self.cluster is not None:
            return list(self.cluster.servers)
        return []

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(10)
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()


def python_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    return env


def wait_for_line(proc: ManagedProcess, marker: str, timeout: float = 30.0) -> str:
    found: list[str] = []

    def seen() -> bool:
        try:
            for line in proc.log.read_text(errors="replace").splitlines():
                if marker in line:
                    found.append(line)
                    return True
        except OSError:
            pass
        return False

    wait_until(seen, timeout=timeout, what=f"{proc.name} to print {marker!r}", process=proc)
    return found[0]


def start_node(
    tmp: Path, index: int, env: dict[str, str], *args: str, module: str = "roomstate"
) -> tuple[ManagedProcess, str]:
    """A node: `python -m roomstate serve`, or another `module` that runs the same command
    (bench.harness.alloc_node: a node that tells where its memory is)."""
    log = tmp / f"node-{index}-{time.monotonic_ns()}.log"
    proc = ManagedProcess.spawn(
        f"roomstate-node-{index}",
        [sys.executable, "-m", module, "serve", "--port", "0", *args],
        log,
        env=python_env({**BENCH_NODE_ENV, "ROOMSTATE_NODE_ID": f"bench-{index}", **env}),
        cwd=ROOT,
    )
    line = wait_for_line(proc, "node listening on http")
    return proc, line.split("listening on", 1)[1].strip()


def start_topology(
    name: str, tmp: Path, env: dict[str, str] | None = None, module: str = "roomstate"
) -> Deployment:
    count, store = TOPOLOGIES[name]
    tmp.mkdir(parents=True, exist_ok=True)
    env = env or {}
    redis = cluster = None
    args: tuple[str, ...] = ()
    stores: list[ManagedProcess] = []
    if store == "redis":
        redis = RedisServer.start(tmp)
        args = ("--redis", redis.url)
        stores = [redis.process] if redis.process else []
    elif store == "cluster":
        cluster = RedisCluster.start(tmp)
        args = ("--redis-cluster", cluster.seeds)
        stores = [s.process for s in cluster.servers if s.process]
    nodes, entries = [], []
    try:
        for i in range(count):
            proc, url = start_node(tmp, i, env, *args, module=module)
            nodes.append(proc)
            entries.append(url)
    except BaseException:
        for n in nodes:
            n.stop()
        if redis:
            redis.stop()
        if cluster:
            cluster.stop()
        raise
    return Deployment(name, "roomstate", entries, nodes, stores, redis, cluster)


def external(urls: list[str]) -> Deployment:
    """Nodes that run elsewhere (a user's deployment): their base URLs, nothing to start or
    stop, no processes to measure here."""
    return Deployment("external", "roomstate", [u.rstrip("/") for u in urls], [])


def start_floor(tmp: Path, rooms: bool = False, lib: str = "aiohttp") -> Deployment:
    """bench/systems/ws_floor.py's bare fan-out server (one process, uvloop; aiohttp, or `lib`): one
    sender to every receiver, or (`rooms`) every member of a room to the room's other members."""
    tmp.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess.spawn(
        f"ws-floor-{lib}",
        [sys.executable, str(ROOT / "bench" / "systems" / "ws_floor.py"), "--serve", lib],
        tmp / f"floor-{time.monotonic_ns()}.log",
        env=python_env({}),
        cwd=ROOT,
    )
    port: list[int] = []

    def listening() -> bool:
        try:
            first = proc.log.read_text().strip().splitlines()
        except OSError:
            return False
        if first and first[0].strip().isdigit():
            port.append(int(first[0]))
            return True
        return False

    wait_until(listening, timeout=30, what="the floor server's port", process=proc)
    kind = "floor-rooms" if rooms else "floor"
    name = ("python-floor-rooms" if rooms else "python-floor") + (
        "" if lib == "aiohttp" else f"-{lib}"
    )
    return Deployment(name, kind, [f"http://127.0.0.1:{port[0]}"], [proc])
