"""Start the peers, the Socket.IO deployments roomstate is compared with: two server processes
sharing rooms through one Redis, on loopback, stopped by PID.

- python-socketio: bench/systems/peer_server.py (AsyncServer on aiohttp, AsyncRedisManager);
- Node.js Socket.IO 4.8: bench/systems/node_peer/server.js, with its Redis Streams adapter
  ("streams") or its pub/sub adapter ("pubsub"). Its packages are installed into that folder
  from its package-lock.json by `npm ci`, which `ensure_node_peer` runs when they are missing or
  differ from the lock file (node_modules/ is not tracked).

Both serve the same events, so one load generator protocol ("socketio": Engine.IO 4 /
Socket.IO 5 over a WebSocket) drives them.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness.deploy import ROOT, Deployment, python_env
from deploy.local.servers import ManagedProcess, RedisServer, free_port, port_accepts, wait_until

NODE_PEER_DIR = ROOT / "bench" / "systems" / "node_peer"
NODE_ADAPTERS = ("streams", "pubsub")  # server.js --adapter
NPM_CI_TIMEOUT_S = 600.0
# the packages whose versions a run records (the rest are their dependencies)
NODE_PEER_PACKAGES = ("socket.io", "@socket.io/redis-streams-adapter", "@socket.io/redis-adapter",
                      "ioredis", "ws")  # fmt: skip


def start_peer(tmp: Path, count: int = 2) -> Deployment:
    """python-socketio AsyncServer + AsyncRedisManager: `count` processes on one Redis."""

    def argv(port: int, redis_url: str) -> list[str]:
        return [sys.executable, "-m", "bench.systems.peer_server", "--port", str(port),
                "--redis", redis_url]  # fmt: skip

    return _start(tmp, "peer-2-nodes-redis", "peer", argv, python_env({}), count)


def start_node_peer(tmp: Path, adapter: str = "streams", count: int = 2) -> Deployment:
    """Node.js Socket.IO with the Redis adapter `adapter` ("streams" or "pubsub"): `count`
    processes on one Redis. Installs the packages first if they are not (`ensure_node_peer`)."""
    if adapter not in NODE_ADAPTERS:
        raise ValueError(f"adapter must be one of {NODE_ADAPTERS}, not {adapter!r}")
    node = ensure_node_peer()

    def argv(port: int, redis_url: str) -> list[str]:
        return [node, str(NODE_PEER_DIR / "server.js"), "--port", str(port),
                "--redis", redis_url, "--adapter", adapter]  # fmt: skip

    name = f"node-peer-{adapter}-2-nodes-redis"
    return _start(tmp, name, f"node-peer-{adapter}", argv, None, count)


def _start(
    tmp: Path,
    name: str,
    short: str,
    argv: Any,
    env: dict[str, str] | None,
    count: int,
) -> Deployment:
    tmp.mkdir(parents=True, exist_ok=True)
    redis = RedisServer.start(tmp)
    nodes, entries = [], []
    try:
        for i in range(count):
            port = free_port()
            proc = ManagedProcess.spawn(
                f"{short}-{i}", argv(port, redis.url), tmp / f"{short}-{i}-{port}.log",
                env=env, cwd=ROOT,
            )  # fmt: skip
            nodes.append(proc)
            wait_until(lambda p=port: port_accepts(p), timeout=30, what=short, process=proc)
            entries.append(f"http://127.0.0.1:{port}")
    except BaseException:
        for n in nodes:
            n.stop()
        redis.stop()
        raise
    stores = [redis.process] if redis.process else []
    return Deployment(name, "socketio", entries, nodes, stores, redis)


def ensure_node_peer() -> str:
    """The path of `node`, once the Node peer's packages are installed as its lock file says:
    `npm ci` in its folder if they are missing or differ (one installer at a time)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError(
            "the Node.js peer needs node (20 or later) and npm on PATH: install Node.js "
            "(Debian: apt-get install nodejs npm)"
        )
    if node_peer_installed():
        return node
    lock_path = Path(tempfile.gettempdir()) / "roomstate-bench-node-peer.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another bench or test may be installing
        if not node_peer_installed():
            print(f"installing the Node.js peer's packages (npm ci in {NODE_PEER_DIR})",
                  file=sys.stderr, flush=True)  # fmt: skip
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_PEER_DIR, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S,
            )  # fmt: skip
            if done.returncode != 0 or not node_peer_installed():
                raise RuntimeError(
                    f"npm ci in {NODE_PEER_DIR} failed (exit {done.returncode}):\n"
                    f"{(done.stderr or done.stdout)[-2000:]}"
                )
    return node


def node_peer_installed() -> bool:
    """Whether node_modules holds every package of package-lock.json at its locked version
    (npm records what it installed in node_modules/.package-lock.json)."""
    try:
        wanted = json.loads((NODE_PEER_DIR / "package-lock.json").read_text())["packages"]
        have = json.loads((NODE_PEER_DIR / "node_modules" / ".package-lock.json").read_text())
    except (OSError, ValueError, KeyError):
        return False
    installed = have.get("packages") or {}
    return all(
        (installed.get(path) or {}).get("version") == entry.get("version")
        for path, entry in wanted.items()
        if path  # "" is the project itself
    )


def node_peer_versions() -> dict[str, str | None]:
    """Node.js's version and those of the Node peer's main packages as installed ({} if they
    are not: a run that does not start the Node peer does not install it)."""
    if not node_peer_installed():
        return {}
    versions: dict[str, str | None] = {}
    node = shutil.which("node")
    if node is not None:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
        versions["node"] = done.stdout.strip() or None
    for package in NODE_PEER_PACKAGES:
        try:
            meta = json.loads(
                (NODE_PEER_DIR / "node_modules" / package / "package.json").read_bytes()
            )
            versions[package] = meta.get("version")
        except (OSError, ValueError):
            versions[package] = None
    return versions
