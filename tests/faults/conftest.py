"""Fault-suite fixtures and tools: node processes, RSS, latency probes, raw WebSocket frames,
and a TCP proxy that cuts a node off from Redis or slows the link.

Every test here is marked `faults`. Rows too slow for the CI run only with
ROOMSTATE_FAULTS_FULL=1 (`./deploy/dev.sh faults` sets it); they are skipped, with that reason,
otherwise. Measured figures are printed (`pytest -s` shows them) and are the tests' pass criteria.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from ..integration.conftest import API_KEY, FAST, NodeProcess, start_node

__all__ = [
    "API_KEY",
    "FAST",
    "FULL",
    "LatencyProbe",
    "NodeProcess",
    "RawWebSocket",
    "TcpProxy",
    "full_only",
    "join",
    "recv_json",
    "rss_mb",
    "start_node",
]

FULL = os.environ.get("ROOMSTATE_FAULTS_FULL") == "1"
full_only = pytest.mark.skipif(
    not FULL, reason="slow fault row: runs with ROOMSTATE_FAULTS_FULL=1 (./deploy/dev.sh faults)"
)
ORIGIN_OK = "https://app.example"


def rss_mb(node: NodeProcess) -> float:
    """Resident memory of a node process, in MB."""
    return float(psutil.Process(node.proc.pid).memory_info().rss) / 1e6


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A development-mode node with an Origin allowlist and a 2 s handshake timeout."""
    env = {
        **FAST,
        "ROOMSTATE_ALLOWED_ORIGINS": ORIGIN_OK,
        "ROOMSTATE_HANDSHAKE_TIMEOUT_S": "2",
    }
    started = start_node(tmp_path_factory.mktemp("faults-node"), env)
    yield started
    started.stop()


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, (message.type, message.data, message.extra)
    frame = orjson.loads(message.data)
    assert isinstance(frame, dict)
    return frame


async def join(
    http: aiohttp.ClientSession, ws_url: str, **fields: Any
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """A joined raw WebSocket and its `joined` reply."""
    ws = await http.ws_connect(ws_url)
    await ws.send_str(orjson.dumps({"type": "join", "id": "join", **fields}).decode())
    async with asyncio.timeout(10):
        while True:
            reply = await recv_json(ws)
            if reply.get("id") == "join":
                assert reply["type"] == "joined", reply
                return ws, reply


# -- a latency probe: app messages between two clients, timed in this process --


@dataclass
class LatencyProbe:
    """A sender and a receiver in `room`: the sender sends an app message every `interval` s,
    carrying its send time; the receiver records each one's delivery latency (ms)."""

    http: aiohttp.ClientSession
    ws_url: str
    interval: float = 0.02
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sockets: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)

    async def start(self) -> LatencyProbe:
        sender, _ = await join(self.http, self.ws_url, userName="probe-sender")
        receiver, reply = await join(self.http, self.ws_url, userName="probe-receiver")
        self._sockets = [sender, receiver]
        target = reply["sessionId"]
        self._tasks = [
            asyncio.create_task(self._send(sender, target)),
            asyncio.create_task(self._receive(receiver)),
            asyncio.create_task(self._discard(sender)),
        ]
        return self

    def reset(self) -> None:
        self.latencies.clear()
        self.sent = 0

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, target: str) -> None:
        while True:
            data = {"probe": time.perf_counter()}
            frame = {"type": "send-app-message", "data": data, "to": target}
            await ws.send_str(orjson.dumps(frame).decode())
            self.sent += 1
            await asyncio.sleep(self.interval)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = orjson.loads(message.data)
            data = frame.get("data")
            if frame.get("type") == "app-message" and isinstance(data, dict) and "probe" in data:
                self.latencies.append((time.perf_counter() - data["probe"]) * 1000)

    async def _discard(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass

    def p99(self) -> float:
        return p99(self.latencies)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ws in self._sockets:
            await ws.close()


# -- raw WebSocket frames over a TCP socket (what aiohttp's client will not send) --


class RawWebSocket:
    """A hand-made WebSocket client: any handshake headers, any frame bits."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def connect(
        cls, url: str, path: str, headers: dict[str, str] | None = None, rcvbuf: int = 0
    ) -> RawWebSocket:
        host, port = url.removeprefix("http://").split(":")
        if rcvbuf:  # a small receive buffer makes a client that stops reading stall sooner
            import socket

            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
        raw = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = await asyncio.wait_for(reader.readline(), 5)
        raw.status = int(status_line.split()[1])
        while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            raw.headers[name.strip().lower()] = value.strip()
        return raw

    def send_frame(self, payload: bytes, opcode: int = 1, rsv1: bool = False) -> None:
        first = 0x80 | (0x40 if rsv1 else 0) | opcode
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    def send_text(self, frame: dict[str, Any]) -> None:
        self.send_frame(orjson.dumps(frame))

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the node (never masked)."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(size)

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the node's close frame; its code (None: the socket ended without one)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    opcode, payload = await self.read_frame(timeout)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None
                if opcode == 8:
                    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None

    def close(self) -> None:
        self.writer.close()


# -- a TCP proxy between a node and Redis: pass, cut (black hole) or delay --


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`. `cut()` makes it a black hole (open
    connections stay open but nothing passes, new ones are accepted and never answered);
    `heal()` drops the black-holed connections and passes again; `delay` adds latency to each
    chunk in both directions (order kept).

    `start()` runs it on the caller's event loop; `start_in_thread()` on a loop of its own in a
    daemon thread, so that a busy test loop never slows what passes through it (then `cut`,
    `heal` and `stop_thread` may be called from the test's thread)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.cut_off = False
        self.delay = 0.0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # its own loop (start_in_thread)
        self._thread: threading.Thread | None = None

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        self.cut_off = True

    def heal(self) -> None:
        if self._loop is not None and threading.current_thread() is not self._thread:
            asyncio.run_coroutine_threadsafe(self._heal_soon(), self._loop).result(5)
            return
        self.cut_off = False
        for client, upstream in list(self._pairs):
            client.close()
            if upstream is not None:
                upstream.close()
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
            self._pairs.add(pair)
            with contextlib.suppress(Exception):
                while await reader.read(65536):  # swallow; answer nothing
                    pass
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)
        self._pairs.discard(pair)
        writer.close()
        up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                while self.cut_off:  # a black hole: hold everything
                    await asyncio.sleep(0.05)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                await queue.put((time.monotonic() + self.delay, chunk))
        finally:
            await queue.put((0.0, b""))
            with contextlib.suppress(Exception):
                await sender

    async def close(self) -> None:
        self.heal()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()

    async def _heal_soon(self) -> None:
        self.heal()

    def start_in_thread(self) -> TcpProxy:
        """Start on an event loop of its own, in a daemon thread (stop with `stop_thread`)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(5)
        return self

    def stop_thread(self) -> None:
        """Close every connection, stop the thread's loop and wait for the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shut() -> None:
            await self.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shut(), loop).result(5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            self._loop = self._thread = None
