"""The churn study's clients (bench/studies/churn.py): raw aiohttp WebSockets in the study's own
event loop, each going round and round: join a room on a random node (with userData), write for a
few seconds (userData, a session-data key of its own set or deleted, app messages to everyone),
then leave with `leave` or drop the socket without a close frame, wait a moment, join again.

The first client of each room is its anchor: it joins once and stays (writing like the others),
so no room ever empties and the state under study is never dropped by the room grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

WebSocket = aiohttp.ClientWebSocketResponse[bool]  # raw frames (decode_text=False)
LEAVE_ACK_S = 10.0
JOIN_REPLY_S = 30.0


@dataclass
class Profile:
    write_rate: float = 6.0  # writes per second per client, spread over the three kinds
    session_s: float = 2.5  # mean time a churning client stays joined (uniform 0.2x-1.8x)
    pause_s: float = 0.3  # mean time between leaving and joining again
    drop_share: float = 1 / 3  # of the leavings: the socket dropped, no `leave`
    delete_share: float = 0.2  # of the session-data writes: the client's key deleted
    pad: int = 64  # characters of filler in each written value


@dataclass
class Tally:
    joins: int = 0  # joins answered `joined`
    join_failures: int = 0  # refused, or no answer, or the connection failed
    writes: int = 0  # requests sent (userData, session data, app messages)
    acks: int = 0
    leaves: int = 0  # `leave` acknowledged
    drops: int = 0  # sockets dropped on purpose
    unexpected_closes: int = 0  # closed by the node, or lost, while the client was in
    frames: int = 0  # every frame received
    errors: Counter[str] = field(default_factory=Counter)  # error frames by code
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str, sample: str) -> None:
        self.errors[what] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(sample[:300])

    def summary(self) -> dict[str, Any]:
        return {"joins": self.joins, "join_failures": self.join_failures, "writes": self.writes,
                "acks": self.acks, "leaves": self.leaves, "drops": self.drops,
                "unexpected_closes": self.unexpected_closes, "frames": self.frames,
                "errors": dict(self.errors), "error_count": sum(self.errors.values()),
                "error_samples": self.error_samples}  # fmt: skip


class Churn:
    """C clients over `rooms` on the nodes at `ws_urls(node, room)`, until `stop` is set."""

    def __init__(self, urls: list[list[str]], clients: int, profile: Profile, seed: int = 1):
        self.urls = urls  # [node][room] -> WebSocket URL
        self.rooms = len(urls[0])
        self.clients = clients
        self.profile = profile
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.stop = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.filler = "x" * profile.pad
        self.joined = 0  # clients joined now

    async def run(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            await asyncio.gather(*(self._client(i) for i in range(self.clients)))
        finally:
            await self.session.close()

    async def _client(self, index: int) -> None:
        room = index % self.rooms
        anchor = index < self.rooms
        # spread the first joins over a second, so the start is not a storm
        await asyncio.sleep(self.rng.uniform(0, 1.0))
        while not self.stop.is_set():
            node = self.rng.randrange(len(self.urls))
            ws = await self._join(self.urls[node][room], index)
            if ws is None:
                await self._pause(1.0)
                continue
            stay = None if anchor else self.profile.session_s * self.rng.uniform(0.2, 1.8)
            self.joined += 1
            try:
                await self._session(ws, index, stay)
            finally:
                self.joined -= 1
            await self._pause(self.profile.pause_s * self.rng.uniform(0.2, 1.8))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _join(self, url: str, index: int) -> WebSocket | None:
        assert self.session is not None
        user_data = {"i": index, "pad": self.filler}
        frame = orjson.dumps({"type": "join", "id": 0, "userName": f"c{index}",
                              "userData": user_data}).decode()  # fmt: skip
        ws = None
        try:
            async with asyncio.timeout(JOIN_REPLY_S):
                ws = await self.session.ws_connect(url, autoping=True, decode_text=False)
                await ws.send_str(frame)
                msg = await ws.receive()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.tally.join_failures += 1
            self.tally.error("join-connection", f"{type(exc).__name__}: {exc}")
            if ws is not None:
                await ws.close()
            return None
        self.tally.frames += 1
        if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith(b'{"type":"joined"'):
            self.tally.joins += 1
            return ws
        self.tally.join_failures += 1
        self._count_error(msg.data if msg.type is aiohttp.WSMsgType.TEXT else str(msg.type))
        await ws.close()
        return None

    def _count_error(self, data: bytes | str) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        try:
            code = orjson.loads(text).get("code", "?")
        except (orjson.JSONDecodeError, AttributeError):
            code = "unreadable"
        self.tally.error(code, text)

    async def _read(self, ws: WebSocket, acks: list[int]) -> None:
        text = aiohttp.WSMsgType.TEXT
        while True:
            msg = await ws.receive()
            if msg.type is not text:
                return
            self.tally.frames += 1
            data = msg.data
            if data.startswith(b'{"type":"ack"'):
                self.tally.acks += 1
                acks[0] = orjson.loads(data).get("id", 0)
            elif data.startswith(b'{"type":"error"'):
                self._count_error(data)

    async def _session(self, ws: WebSocket, index: int,
                       stay: float | None) -> None:  # fmt: skip
        acks = [0]
        reader = asyncio.create_task(self._read(ws, acks))
        end = None if stay is None else time.monotonic() + stay
        rid = 1
        p = self.profile
        gap = 1.0 / p.write_rate
        key = f"c{index}"
        try:
            while not self.stop.is_set() and (end is None or time.monotonic() < end):
                if reader.done():  # closed under it
                    self.tally.unexpected_closes += 1
                    return
                rid += 1
                kind = rid % 3
                if kind == 0:
                    req: dict[str, Any] = {
                        "type": "set-user-data",
                        "data": {"i": index, "n": rid, "pad": self.filler},
                    }
                elif kind == 1:
                    req = {"type": "set-meeting-session-data", "mergeStrategy": "shallow-merge"}
                    if self.rng.random() < p.delete_share:
                        req |= {"data": {}, "keysToDelete": [key]}
                    else:
                        req["data"] = {key: {"n": rid, "pad": self.filler}}
                else:
                    req = {"type": "send-app-message", "to": "*",
                           "data": {"i": index, "n": rid, "pad": self.filler}}  # fmt: skip
                req["id"] = rid
                with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                    await ws.send_str(orjson.dumps(req).decode())
                    self.tally.writes += 1
                await self._pause(gap * self.rng.uniform(0.5, 1.5))
            await self._end(ws, reader, acks, rid + 1)
        finally:
            reader.cancel()
            with contextlib.suppress(Exception):
                await ws.close()

    async def _end(self, ws: WebSocket, reader: asyncio.Task[None],
                   acks: list[int], rid: int) -> None:  # fmt: skip
        if self.stop.is_set():  # the run is over: a plain close
            return
        if self.rng.random() < self.profile.drop_share:
            conn = ws._conn  # no close frame: the node sees a lost connection (resume grace)
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            self.tally.drops += 1
            return
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            await ws.send_str(f'{{"type":"leave","id":{rid}}}')
        deadline = time.monotonic() + LEAVE_ACK_S
        while acks[0] != rid and not reader.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if acks[0] == rid:
            self.tally.leaves += 1
        else:
            self.tally.error("leave-unacknowledged", f"leave {rid}: no ack in {LEAVE_ACK_S} s")
