"""A load generator process: many raw aiohttp WebSocket clients, open-loop senders, receivers
that record latency. Started by the orchestrator (bench/runner.py) as

    python -m bench.harness.loadgen CONFIG.json

It connects and joins every participant of its share, prints ``{"ready": ...}``, then runs one
step per ``{"cmd": "run", ...}`` line on stdin and prints one ``{"result": ...}`` line per step;
``{"cmd": "quit"}`` (or end of stdin) ends it. Protocols:

- ``roomstate``: the wire protocol v1 (join, then send-app-message / set-user-data /
  set-meeting-session-data without waiting for each ack; acks and errors are counted);
- ``socketio``: Engine.IO 4 / Socket.IO 5 over a WebSocket, spoken directly (open, connect to
  ``/``, ``join`` with an ack, then ``42["msg", DATA]``; pings are answered): the peers, the
  python-socketio one and the Node.js one (bench/harness/peers.py);
- ``floor``: the bare fan-out server of bench/systems/ws_floor.py (``/recv`` receivers,
  ``/send`` senders);
- ``floor-rooms``: the same server's ``/room/NAME``: every member sends and receives, like a room.

Schedule: a step of `rate` messages/s over ``warmup_s + duration_s`` has messages
m = 0 .. M-1 scheduled at ``t0 + m / rate``; message m is sent by the sender of global rank
``m % J`` (J senders in all, over every generator). Senders never wait for acks (open loop).
Latencies of messages scheduled before ``t0 + warmup_s`` are not recorded (but their loss is
counted). Everything is bounded: connects time out, each step ends by ``drain_s`` after the last
scheduled send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.harness.common import (
    KEY_LEN,
    KEY_MARK,
    emit,
    encode_hist,
    hist_from_values,
    make_key,
    pad_for,
    serve_commands,
)

mono = time.monotonic_ns
SPIN_NS = 1_300_000  # precise mode: sleep until this long before the send time, then spin
CONNECT_TIMEOUT_S = 20.0


@dataclass(eq=False)
class Participant:
    gid: int
    room: str
    url: str
    node: int
    recv: bool  # receives the room's messages (a floor sender does not)
    rank: int | None  # global sender rank, None if not a sender
    token: str | None = None  # a meeting token, for a deployment with an API key
    ws: Any = None
    next_id: int = 1
    # per step
    seen: bytearray = field(default_factory=bytearray)
    expected: int = 0
    got: int = 0
    final_seen: bool = False
    writer: int = -1  # userdata / session: the global rank of the room's writer
    last_seq: int = -1  # userdata / session: the newest value seen


class Step:
    def __init__(self, cmd: dict[str, Any]) -> None:
        self.index: int = cmd["step"] % 100
        self.t0: int = cmd["t0"]
        self.rate: float = cmd["rate"]
        self.warm_end: int = self.t0 + int(cmd["warmup_s"] * 1e9)
        self.end: int = self.warm_end + int(cmd["duration_s"] * 1e9)
        self.drain_ns = int(cmd["drain_s"] * 1e9)
        self.precise: bool = cmd.get("precise", False)
        self.total = int((cmd["warmup_s"] + cmd["duration_s"]) * self.rate)  # M
        self.same_us = array("q")
        self.cross_us = array("q")
        self.send_us = array("q")  # from the actual send (same and cross)
        self.in_window = 0  # deliveries received during [warm_end, end)
        self.dups = 0
        self.stale = 0  # frames of another step
        self.misrouted = 0  # app messages from a sender of another room
        self.unique = 0
        self.acks = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.sent = 0
        self.max_late_us = 0
        self.late_sum_us = 0


class Generator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        self.proto: str = config["proto"]
        self.kind: str = config.get("kind", "app")  # app | userdata | session
        self.total_senders: int = config["total_senders"]
        self.pad = pad_for(config["payload"])
        self.people = [Participant(**p) for p in config["participants"]]
        self.by_rank = {p.rank: p for p in self.people if p.rank is not None}
        # room -> [ranks of its senders], all generators' (from the config)
        self.room_senders: dict[str, list[int]] = {
            room: list(ranks) for room, ranks in config["room_senders"].items()
        }
        self.slot: dict[int, int] = {}  # sender rank -> index among its room's senders
        self.rank_room: dict[int, str] = {}  # sender rank -> its room
        for room, ranks in self.room_senders.items():
            for i, rank in enumerate(ranks):
                self.slot[rank] = i
                self.rank_room[rank] = room
        self.step: Step | None = None
        self.cap = 1  # bitmap slots per sender in this step
        self.closed = 0
        self.session: aiohttp.ClientSession | None = None
        self.readers: list[asyncio.Task[None]] = []

    # -- setup --

    async def connect_all(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False)
        )
        sem = asyncio.Semaphore(self.cfg.get("connect_concurrency", 32))

        async def one(p: Participant) -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        async with asyncio.timeout(CONNECT_TIMEOUT_S):
                            await self._connect(p)
                        return
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one(p) for p in self.people))
        self.readers = [asyncio.create_task(self._read(p)) for p in self.people]

    async def _connect(self, p: Participant) -> None:
        assert self.session is not None
        ws = await self.session.ws_connect(
            p.url, compress=0, max_msg_size=1 << 22, autoping=True, decode_text=False
        )
        if self.proto == "roomstate":
            token = "" if p.token is None else f',"token":"{p.token}"'
            await ws.send_str(f'{{"type":"join","id":0{token}}}')
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise aiohttp.ClientError(f"join failed: {msg.type} {msg.data!r}")
                if msg.data.startswith(b'{"type":"joined"'):
                    break
                if msg.data.startswith(b'{"type":"error"'):
                    raise RuntimeError(f"join refused: {msg.data[:300]!r}")
        elif self.proto == "socketio":
            msg = await ws.receive()  # 0{"sid":...} (Engine.IO open)
            if not (msg.type is aiohttp.WSMsgType.TEXT and msg.data[:1] == b"0"):
                raise aiohttp.ClientError(f"no engine.io open: {msg.data!r}")
            await ws.send_str("40")
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise aiohttp.ClientError(f"socket.io connect failed: {msg.data!r}")
                if msg.data[:2] == b"40":
                    break
            await ws.send_str(f'420["join","{p.room}"]')
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise aiohttp.ClientError(f"socket.io join failed: {msg.data!r}")
                if msg.data[:3] == b"430":
                    break
                if msg.data == b"2":
                    await ws.send_str("3")
        p.ws = ws

    # -- receiving --

    async def _read(self, p: Participant) -> None:
        ws = p.ws
        handle = self._handle
        text = aiohttp.WSMsgType.TEXT
        socketio = self.proto == "socketio"
        try:
            while True:
                msg = await ws.receive()
                if msg.type is text:
                    data: bytes = msg.data
                    if socketio and data == b"2":
                        await ws.send_str("3")
                        continue
                    handle(p, data)
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    break
        finally:
            self.closed += 1

    def _handle(self, p: Participant, data: bytes) -> None:
        now = mono()
        step = self.step
        if step is None:
            return
        i = data.find(KEY_MARK)
        if i < 0:
            if data.startswith(b'{"type":"ack"'):
                step.acks += 1
            elif data.startswith(b'{"type":"error"'):
                step.errors += 1
                if len(step.error_samples) < 5:
                    step.error_samples.append(data[:200].decode(errors="replace"))
            return
        k = data[i + 5 : i + 5 + KEY_LEN]
        if int(k[28:30]) != step.index:
            step.stale += 1
            return
        same_node = k[43] - 48 == p.node
        if self.kind == "app":
            if not p.recv:
                return
            rank = int(k[30:36])
            if rank == p.rank:
                return  # never expected (to "*" excludes the sender); not counted
            if self.rank_room.get(rank) != p.room:
                step.misrouted += 1  # another room's message: a failure, never a delivery
                return
            index = self.slot[rank] * self.cap + int(k[36:43])
            if p.seen[index]:
                step.dups += 1
                return
            p.seen[index] = 1
            p.got += 1
            step.unique += 1
        else:  # userdata / session: updates are coalesced; count each distinct one
            seq = int(k[36:43])
            if seq >= self.cap or p.seen[seq]:
                step.dups += 1  # the same value again (a coalesced re-send): not an error
                return
            p.seen[seq] = 1
            p.got += 1
            step.unique += 1
            if seq == p.expected:  # expected: the last seq of the room's writer
                p.final_seen = True
            if seq > p.last_seq:
                # The writes this value supersedes, never sent on their own (batching keeps
                # the newest): the receiver has them (a newer value) from now, so their
                # latency ends now too. Left out, the latency would count only the writes
                # that happened to be the last of a batch, which wait the least.
                for skipped in range(p.last_seq + 1, seq):
                    self._record(step, now, self._sched(step, skipped, p.writer), same_node)
                p.last_seq = seq
        if step.warm_end <= now < step.end:
            step.in_window += 1
        sched = int(k[:20])
        lat = self._record(step, now, sched, same_node)
        if lat is not None:
            step.send_us.append(lat - int(k[20:28]))

    def _sched(self, step: Step, seq: int, rank: int) -> int:
        """When the sender of global rank `rank` was to send its message `seq` of the step."""
        return step.t0 + int((seq * self.total_senders + rank) * (1e9 / step.rate))

    @staticmethod
    def _record(step: Step, now: int, sched: int, same_node: bool) -> int | None:
        """The latency of a message scheduled at `sched` and received `now`, in µs, recorded
        unless it was scheduled in the warm-up (None then)."""
        if sched < step.warm_end:
            return None
        lat = (now - sched) // 1000
        (step.same_us if same_node else step.cross_us).append(lat)
        return lat

    # -- a step --

    def _count(self, step: Step, rank: int) -> int:
        """How many messages the sender of this rank sends in the step."""
        j, big_j = rank, self.total_senders
        return 0 if j >= step.total else (step.total - j + big_j - 1) // big_j

    def _prepare(self, step: Step) -> int:
        counts = [self._count(step, r) for r in range(self.total_senders)]
        self.cap = max(counts, default=0) + 1
        expected_total = 0
        for p in self.people:
            p.got = 0
            p.final_seen = False
            if self.kind == "app":
                ranks = self.room_senders.get(p.room, [])
                p.seen = bytearray(len(ranks) * self.cap)
                p.expected = sum(counts[r] for r in ranks if r != p.rank) if p.recv else 0
                expected_total += p.expected
            else:
                p.seen = bytearray(self.cap)
                p.last_seq = -1
                ranks = [r for r in self.room_senders.get(p.room, []) if r != p.rank]
                if self.kind == "session":
                    ranks = self.room_senders.get(p.room, [])  # the writer gets it too
                p.writer = ranks[0] if ranks else -1
                p.expected = counts[ranks[0]] - 1 if ranks and counts[ranks[0]] else -1
                if p.expected >= 0:
                    expected_total += 1  # convergence: the last value, once per receiver
        return expected_total

    def _frame(self, key: str, rid: int) -> str:
        data = f'{{"k":"{key}","p":"{self.pad}"}}'
        if self.proto == "socketio":
            return f'42["msg",{data}]'
        if self.proto in ("floor", "floor-rooms"):
            return data
        kind = {"app": "send-app-message", "userdata": "set-user-data"}.get(
            self.kind, "set-meeting-session-data"
        )
        return f'{{"type":"{kind}","id":{rid},"data":{data}}}'

    async def _send_all(self, step: Step) -> None:
        mine = sorted(self.by_rank.values(), key=lambda p: p.rank or 0)
        if not mine:
            return
        big_j = self.total_senders
        seqs = dict.fromkeys((p.rank for p in mine), 0)
        rounds = math.ceil(step.total / big_j)
        late_sends = 0
        for i in range(rounds):
            base = i * big_j
            for p in mine:
                rank = p.rank
                assert rank is not None
                m = base + rank
                if m >= step.total:
                    break
                sched = self._sched(step, i, rank)
                now = mono()
                delay = sched - now
                if delay > 0:
                    if step.precise:
                        if delay > SPIN_NS:
                            await asyncio.sleep((delay - SPIN_NS) / 1e9)
                        while mono() < sched:  # bounded: at most SPIN_NS
                            pass
                    else:
                        await asyncio.sleep(delay / 1e9)
                else:
                    late_sends += 1
                    if late_sends % 32 == 0:
                        await asyncio.sleep(0)  # behind schedule: let the receivers run
                now = mono()
                offset_us = (now - sched) // 1000
                step.max_late_us = max(step.max_late_us, offset_us)
                step.late_sum_us += offset_us
                seq = seqs[rank]
                seqs[rank] = seq + 1
                key = make_key(sched, offset_us, step.index, rank, seq, p.node)
                rid = p.next_id
                p.next_id = rid + 1
                if p.ws.closed:
                    continue
                try:
                    await p.ws.send_str(self._frame(key, rid))
                    step.sent += 1
                except (ConnectionError, aiohttp.ClientError, RuntimeError):
                    pass

    async def run_step(self, cmd: dict[str, Any]) -> dict[str, Any]:
        step = Step(cmd)
        expected_total = self._prepare(step)
        closed_before = self.closed
        self.step = step
        await self._send_all(step)
        deadline = max(step.end, mono()) + step.drain_ns

        def done() -> bool:
            if self.kind == "app":
                return step.unique >= expected_total
            return all(p.final_seen for p in self.people if p.expected >= 0)

        while not done() and mono() < deadline:
            await asyncio.sleep(0.005)
        drained_at = mono()
        await asyncio.sleep(0.05)  # a duplicate right behind the last frame is still seen
        self.step = None
        converged = sum(1 for p in self.people if p.expected >= 0 and p.final_seen)
        return {
            "gen": self.cfg["gen_index"],
            "step": cmd["step"],
            "sent": step.sent,
            "acks": step.acks,
            "errors": step.errors,
            "error_samples": step.error_samples,
            "expected": expected_total,
            "unique": step.unique if self.kind == "app" else converged,
            "updates_received": step.unique,
            "dups": step.dups,
            "misrouted": step.misrouted,
            "stale": step.stale,
            "in_window": step.in_window,
            "closed": self.closed - closed_before,
            "closed_total": self.closed,
            "drain_ms": round(max(0, drained_at - step.end) / 1e6, 1),
            "max_late_ms": round(step.max_late_us / 1000, 3),
            "mean_late_ms": round(step.late_sum_us / max(step.sent, 1) / 1000, 3),
            "hist_same": encode_hist(hist_from_values(step.same_us)),
            "hist_cross": encode_hist(hist_from_values(step.cross_us)),
            "hist_send": encode_hist(hist_from_values(step.send_us)),
        }

    async def close(self) -> None:
        for t in self.readers:
            t.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await asyncio.gather(
                    *(p.ws.close() for p in self.people if p.ws is not None),
                    return_exceptions=True,
                )
        if self.session is not None:
            await self.session.close()


async def main(path: str) -> None:
    with open(path) as f:
        config = json.load(f)
    gen = Generator(config)
    try:
        started = time.monotonic()
        await gen.connect_all()
        emit(
            {
                "ready": True,
                "participants": len(gen.people),
                "connect_s": time.monotonic() - started,
            }
        )

        async def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
            return {"result": await gen.run_step(cmd)} if cmd["cmd"] == "run" else None

        await serve_commands(handle)
    except Exception as exc:  # the orchestrator shows it
        emit({"fatal": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        await gen.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1]))
