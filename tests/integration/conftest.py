"""Integration fixtures: real node processes on free loopback ports, stopped by PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web

from deploy.local.servers import free_port, track

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-api-key-0123456789abcdef0123456789"


@dataclass
class NodeProcess:
    """A `roomstate serve` child process."""

    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT
    log: Path

    def room_url(self, room: str) -> str:
        return f"{self.url}/rooms/{room}"

    def ws_url(self, room: str) -> str:
        return f"{self.url}/v1/rooms/{room}/ws"

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode


def start_node(tmp: Path, env: dict[str, str] | None = None, *args: str) -> NodeProcess:
    """Start a node on a free port and wait until it listens."""
    log = tmp / f"node-{uuid.uuid4().hex[:6]}.log"
    full_env = {**os.environ, "ROOMSTATE_LOG_LEVEL": "INFO", **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomstate", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=full_env,
        cwd=ROOT,
    )
    track(proc)  # killed at exit, or on SIGTERM, if a test does not stop it
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line:
            return NodeProcess(proc, line.split("listening on", 1)[1].strip(), log)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"node did not start: {log.read_text()[-2000:]}")


# Short intervals keep the suite fast; the semantics do not depend on them.
FAST = {
    "ROOMSTATE_ROOM_GRACE_S": "1.5",
    "ROOMSTATE_SESSION_DATA_INTERVAL_MS": "300",
    "ROOMSTATE_RESUME_GRACE_S": "1",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A development-mode node (no API key), shared by a module's tests (rooms differ)."""
    started = start_node(tmp_path_factory.mktemp("node"), FAST)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with an API key: joins need tokens, REST needs the key."""
    started = start_node(tmp_path_factory.mktemp("node"), {**FAST, "ROOMSTATE_API_KEY": API_KEY})
    yield started
    started.stop()


def listening_pids(root_pid: int, port: int) -> set[int]:
    """The PIDs of process `root_pid` and its children that listen on TCP `port`."""
    pids = set()
    root = psutil.Process(root_pid)
    for process in [root, *root.children()]:
        try:
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    pids.add(process.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


async def webhook_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP endpoint that keeps the webhook events it gets (answering 200)."""
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", got
    finally:
        await runner.cleanup()
