#!/usr/bin/env python3
"""WebSocket fan-out "Python floor" benchmark for aiohttp, websockets and picows.

(Its server also has a fourth mode, ``--serve direct``, rooms only: aiohttp sending in the
style of roomstate's node; `python -m bench floor_libs` uses it.)

What it measures: the cost of the server library alone when one sender's text
frame is fanned out to N receivers -- no rooms, no protocol, no per-recipient
encoding (the frame is encoded at most once, then the same bytes object is
handed to every receiver's send call).

How: the server runs in a child process (this script with ``--serve LIB``, on
uvloop, bound to 127.0.0.1 port 0, printing the port it got). This process is
the client side, always aiohttp's client on uvloop so it is identical for every
library: it opens N receiver connections plus one sender, warms up, then sends
``--messages`` frames open-loop (message i is scheduled at t0 + i/rate and
carries that ``time.monotonic_ns()`` value; latency = receive time - scheduled
time, so sender lateness counts). It reports deliveries/s, p50/p99/max latency,
lost deliveries, and server CPU (utime+stime from /proc/PID/stat over the
measured window) per delivery, with its user-space part (the user/sys split is
tick-sampled, so approximate). server/client CPU % show which side was the
bottleneck; cpu_stall_pct (PSI) flags runs disturbed by other processes. Each
library gets a light run (``--rate``) and a saturating run (``--sat-rate``).
Output: a markdown table, then one JSON line with the results per library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from array import array
from dataclasses import asdict, astuple, dataclass, fields
from importlib import metadata
from typing import Any

LIBS = ("aiohttp", "websockets", "picows")
HOST = "127.0.0.1"
MAX_MSG = 64 * 1024
DRAIN_S = 10.0  # how long to wait for in-flight deliveries after the last send


# ----------------------------------------------------------------- server side
async def _listen(app: Any) -> int:
    """Serve an aiohttp `app` on HOST, a free port; return the port."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    return int(runner.addresses[0][1])


async def serve_aiohttp() -> int:
    from aiohttp import WSMsgType, web

    receivers: list[web.WebSocketResponse] = []

    async def recv(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MSG)
        await ws.prepare(request)
        receivers.append(ws)
        try:
            async for _ in ws:
                pass
        finally:
            receivers.remove(ws)
        return ws

    async def send(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MSG, decode_text=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:  # msg.data is bytes (decode_text=False)
                for r in tuple(receivers):
                    await r.send_frame(msg.data, WSMsgType.TEXT)
        return ws

    rooms: dict[str, list[web.WebSocketResponse]] = {}

    async def room(request: web.Request) -> web.WebSocketResponse:
        """The same shape as a roomstate room, with nothing else: a member's text frame goes,
        as it came, to every other member of its room."""
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MSG, decode_text=False)
        await ws.prepare(request)
        members = rooms.setdefault(request.match_info["name"], [])
        members.append(ws)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    for r in tuple(members):
                        if r is not ws:
                            await r.send_frame(msg.data, WSMsgType.TEXT)
        finally:
            members.remove(ws)
        return ws

    app = web.Application()
    app.router.add_get("/recv", recv)
    app.router.add_get("/send", send)
    app.router.add_get("/room/{name}", room)
    return await _listen(app)


async def serve_direct() -> int:
    """aiohttp receiving, as in `serve_aiohttp`'s rooms, but sending in the style of roomstate's
    node when a client keeps up (node/server/connection.py's fast path): each frame is built once,
    header included (`ws_frame`), and the same bytes are written straight to every other
    member's transport: no `send_frame`, no await. Not the node's batching per loop iteration
    nor its send queue for a slow client (this server has none: writes are not bounded)."""
    from aiohttp import WSMsgType, web

    from roomstate.server.fastpath import ws_frame

    rooms: dict[str, list[tuple[web.WebSocketResponse, asyncio.Transport]]] = {}

    async def room(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MSG, decode_text=False)
        await ws.prepare(request)
        assert request.transport is not None
        members = rooms.setdefault(request.match_info["name"], [])
        me = (ws, request.transport)
        members.append(me)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    wire = ws_frame(msg.data)
                    for other, transport in members:
                        # nothing may follow a close frame: skip a member closing
                        if other is not ws and not other.closed and not transport.is_closing():
                            transport.write(wire)
        finally:
            members.remove(me)
        return ws

    app = web.Application()
    app.router.add_get("/room/{name}", room)
    return await _listen(app)


async def serve_websockets() -> int:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    receivers: set[ServerConnection] = set()

    async def handler(conn: ServerConnection) -> None:
        if conn.request is not None and conn.request.path == "/recv":
            receivers.add(conn)
            try:
                await conn.wait_closed()
            finally:
                receivers.discard(conn)
            return
        with contextlib.suppress(ConnectionClosed):
            while True:
                broadcast(receivers, await conn.recv(decode=False), text=True)

    server = await serve(handler, HOST, 0, compression=None, max_size=MAX_MSG, ping_interval=None)
    return int(next(iter(server.sockets)).getsockname()[1])


async def serve_picows() -> int:
    import picows as pw

    receivers: list[pw.WSTransport] = []
    rooms: dict[bytes, list[pw.WSTransport]] = {}

    class Listener(pw.WSListener):
        """/recv: a receiver; /send: the sender to every receiver; /room/NAME: a member whose
        frames go to the room's other members (the same shapes as the aiohttp server)."""

        def __init__(self, path: bytes) -> None:
            self.is_receiver = path == b"/recv"
            self.members = rooms.setdefault(path, []) if path.startswith(b"/room/") else None

        def on_ws_connected(self, transport: pw.WSTransport) -> None:
            if self.is_receiver:
                receivers.append(transport)
            if self.members is not None:
                self.members.append(transport)

        def on_ws_disconnected(self, transport: pw.WSTransport) -> None:
            if self.is_receiver:
                receivers.remove(transport)
            if self.members is not None:
                self.members.remove(transport)

        def on_ws_frame(self, transport: pw.WSTransport, frame: pw.WSFrame) -> None:
            if frame.msg_type == pw.WSMsgType.TEXT:  # only senders and members send text
                data = frame.get_payload_as_bytes()
                if self.members is None:
                    for r in receivers:
                        r.send(pw.WSMsgType.TEXT, data)
                else:
                    for r in self.members:
                        if r is not transport:
                            r.send(pw.WSMsgType.TEXT, data)
            elif frame.msg_type == pw.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    def factory(request: pw.WSUpgradeRequest) -> pw.WSListener:
        return Listener(request.path)

    server = await pw.ws_create_server(factory, HOST, 0, max_frame_size=MAX_MSG)
    return int(server.sockets[0].getsockname()[1])


SERVERS = {
    "aiohttp": serve_aiohttp,
    "websockets": serve_websockets,
    "picows": serve_picows,
    "direct": serve_direct,  # rooms only (bench.studies.floor_libs), not a library of its own
}


def run_server(lib: str) -> None:
    import uvloop

    async def main() -> None:
        print(await SERVERS[lib](), flush=True)  # the parent reads the port from stdout
        await asyncio.Event().wait()

    uvloop.run(main())


# ----------------------------------------------------------------- client side
@dataclass
class Result:
    lib: str
    mode: str
    rate: float
    sent: int
    deliveries: int
    lost: int
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_pct: float  # server CPU time / wall time of the measured window
    client_cpu_pct: float  # same for this (client) process: ~100 means client-bound
    cpu_stall_pct: float  # time some task waited for a CPU (PSI); high = run disturbed
    cpu_us_per_delivery: float  # server user+sys CPU per delivery
    user_us_per_delivery: float  # the user-space (Python + library) part of it


def proc_cpu_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, from /proc/PID/stat (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_stall_s() -> float:
    """Machine-wide seconds in which some task waited for a CPU (/proc/pressure/cpu)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except OSError:
        return float("nan")


class Collector:
    def __init__(self, n: int) -> None:
        self.warm = [False] * n
        self.lat = array("q")
        self.target = sys.maxsize
        self.last_ns = 0
        self.done = asyncio.Event()

    async def receive(self, ws: Any, idx: int) -> None:
        async for msg in ws:
            now = time.monotonic_ns()
            data: bytes = msg.data  # decode_text=False -> bytes
            if data[0] == 0x57:  # b"W": warm-up frame
                self.warm[idx] = True
                continue
            self.lat.append(now - int(data[1:21]))
            self.last_ns = now
            if len(self.lat) >= self.target:
                self.done.set()


async def run_clients(
    lib: str, mode: str, pid: int, port: int, args: argparse.Namespace, rate: float, messages: int
) -> Result:
    import aiohttp

    n = args.receivers
    col = Collector(n)
    pad = "x" * (args.payload - 21)
    timeout = aiohttp.ClientWSTimeout(ws_close=2.0)
    async with aiohttp.ClientSession() as session:

        def connect(path: str) -> Any:
            return session.ws_connect(
                f"ws://{HOST}:{port}{path}",
                compress=0,
                timeout=timeout,
                max_msg_size=MAX_MSG,
                decode_text=False,
            )

        rws = [await connect("/recv") for _ in range(n)]
        tasks = [asyncio.create_task(col.receive(ws, i)) for i, ws in enumerate(rws)]
        sender = await connect("/send")
        for _ in range(500):  # warm up until every receiver got a frame
            if all(col.warm):
                break
            await sender.send_str("W" + "0" * 20 + pad)
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("receivers never became ready")
        await asyncio.sleep(0.3)

        cpu0, ccpu0, stall0 = proc_cpu_s(pid), time.process_time(), cpu_stall_s()
        period_ns = 1e9 / rate
        t0 = time.monotonic_ns() + 5_000_000
        deadline = t0 + int(args.seconds * 1e9)
        sent = 0
        for i in range(messages):
            sched = t0 + int(i * period_ns)
            if sched > deadline:
                break
            delay = sched - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            elif i % 16 == 0:
                await asyncio.sleep(0)  # behind schedule: let receivers run
            await sender.send_str(f"M{sched:020d}{pad}")
            sent += 1
        col.target = sent * n
        if len(col.lat) >= col.target:
            col.done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(col.done.wait(), DRAIN_S)
        cpu1, ccpu, stall = proc_cpu_s(pid), time.process_time() - ccpu0, cpu_stall_s() - stall0

        for t in tasks:
            t.cancel()
        await asyncio.gather(*(ws.close() for ws in [*rws, sender]), return_exceptions=True)

    got = max(len(col.lat), 1)
    lat = sorted(col.lat) or [0]
    wall = max(col.last_ns - t0, 1) / 1e9
    user, cpu = cpu1[0] - cpu0[0], sum(cpu1) - sum(cpu0)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6, 2)

    return Result(
        lib=lib,
        mode=mode,
        rate=rate,
        sent=sent,
        deliveries=len(col.lat),
        lost=sent * n - len(col.lat),
        deliveries_per_s=round(got / wall),
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        max_ms=pct(1.0),
        server_cpu_pct=round(100 * cpu / wall, 1),
        client_cpu_pct=round(100 * ccpu / wall, 1),
        cpu_stall_pct=round(100 * stall / wall, 1),
        cpu_us_per_delivery=round(1e6 * cpu / got, 2),
        user_us_per_delivery=round(1e6 * user / got, 2),
    )


def run_one(lib: str, mode: str, args: argparse.Namespace, rate: float, messages: int) -> Result:
    import uvloop

    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", lib],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"{lib} server failed to start: {line!r}")
        return uvloop.run(run_clients(lib, mode, proc.pid, int(line), args, rate, messages))
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench ws_floor", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--lib", action="append", choices=LIBS, help="repeatable; default: all installed"
    )
    ap.add_argument("--receivers", type=int, default=99)
    ap.add_argument("--payload", type=int, default=256, help="frame size in bytes (>= 22)")
    ap.add_argument("--messages", type=int, default=2000, help="messages in the light run")
    ap.add_argument("--rate", type=float, default=500, help="light run, messages/s")
    ap.add_argument("--sat-messages", type=int, default=10000)
    ap.add_argument("--sat-rate", type=float, default=50000, help="msgs/s; 0 = no saturating run")
    ap.add_argument("--seconds", type=float, default=40, help="cap on each run's send phase")
    ap.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        run_server(args.serve)
        return
    if args.payload < 22:
        ap.error("--payload must be >= 22")

    v = {}
    for m in ("aiohttp", "websockets", "picows", "uvloop"):
        try:
            v[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            v[m] = "not installed"
    libs = args.lib or [lib for lib in LIBS if v[lib] != "not installed"]
    missing = [lib for lib in libs if v[lib] == "not installed"]
    if missing:
        ap.error(f"--lib {missing[0]}: not installed here (pip install {missing[0]})")
    print(
        f"# ws_floor: python {sys.version.split()[0]}, {os.cpu_count()} cpus, {v}, "
        f"receivers={args.receivers}, payload={args.payload}B\n"
    )
    results: dict[str, dict[str, Any]] = {}
    rows: list[Result] = []
    for lib in libs:
        runs = [("light", args.rate, args.messages)]
        if args.sat_rate > 0:
            runs.append(("saturate", args.sat_rate, args.sat_messages))
        for mode, rate, messages in runs:
            r = run_one(lib, mode, args, rate, messages)
            rows.append(r)
            results.setdefault(lib, {})[mode] = asdict(r)

    names = [f.name for f in fields(Result)]
    print("| " + " | ".join([*names, "1-core ceiling/s"]) + " |")
    print("|---" * (len(names) + 1) + "|")
    for r in rows:  # ceiling: deliveries/s if the server had a whole core
        ceiling = round(1e6 / r.cpu_us_per_delivery) if r.cpu_us_per_delivery else 0
        print("| " + " | ".join(str(v) for v in (*astuple(r), ceiling)) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
