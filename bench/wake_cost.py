"""What one hop between two sleeping processes costs on this machine, with no Python server at all.

    python -m bench.wake_cost [--rates 100,1000,10000] [--messages 500]

Two processes joined by a loopback TCP connection (and, for comparison, a Unix socket pair) play
ping-pong: the first sleeps ``1/rate`` s, stamps ``time.monotonic_ns()``, sends 300 bytes; the
second, blocked in ``recv``, stamps its wake-up and answers. Printed per rate, p50 and p90 in µs:
how long the ``send`` call took, the time until the peer had the bytes (one hop), and the round
trip. At a low rate both processes have slept for milliseconds before each message; that is the
case of every process on an app message's path at light load (generator, node, Redis, node), and
what it costs against a high rate is the part of light-load latency no server code can remove.
The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from typing import Any

import orjson

PAYLOAD = b"x" * 300


def _pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def _echo(sock: socket.socket) -> None:
    """The second process: stamp each arrival, send the stamp back."""
    while data := sock.recv(4096):
        sock.sendall(time.monotonic_ns().to_bytes(8, "little") + data[:8])


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p90": round(ordered[int(len(ordered) * 0.9)], 1),
    }


def measure(kind: str, rate: float, messages: int) -> dict[str, Any]:
    a, b = _pair(kind)
    pid = os.fork()
    if pid == 0:  # the echoing process
        a.close()
        try:
            _echo(b)
        finally:
            os._exit(0)
    b.close()
    sends, hops, trips = [], [], []
    try:
        for _ in range(messages):
            time.sleep(1 / rate)
            t0 = time.monotonic_ns()
            a.sendall(PAYLOAD)
            t1 = time.monotonic_ns()
            reply = a.recv(4096)
            t2 = time.monotonic_ns()
            sends.append((t1 - t0) / 1000)
            hops.append((int.from_bytes(reply[:8], "little") - t0) / 1000)
            trips.append((t2 - t0) / 1000)
    finally:
        a.close()
        os.waitpid(pid, 0)
    return {"socket": kind, "rate": rate, "messages": messages, "send_us": _quantiles(sends),
            "hop_us": _quantiles(hops), "round_trip_us": _quantiles(trips)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.wake_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rates", default="100,1000,10000", help="comma-separated messages/s")
    ap.add_argument("--messages", type=int, default=500, help="per rate and socket kind")
    args = ap.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        ap.error(f"--rates must be comma-separated numbers, not {args.rates!r}")
    if not rates or min(rates) <= 0 or args.messages < 10:
        ap.error("--rates must be above 0 and --messages at least 10")
    results = []
    print("socket  rate/s   send() p50/p90 µs   one hop p50/p90 µs   round trip p50/p90 µs")
    for rate in rates:
        for kind in ("tcp", "unix"):
            r = measure(kind, rate, args.messages)
            results.append(r)
            cells = [
                f"{r[k][q]:7.1f}"
                for k in ("send_us", "hop_us", "round_trip_us")
                for q in ("p50", "p90")
            ]
            print(f"{kind:6} {rate:7.0f}   {' '.join(cells[0:2])}     {' '.join(cells[2:4])}      "
                  f"{' '.join(cells[4:6])}")  # fmt: skip
    print(orjson.dumps(results).decode())


if __name__ == "__main__":
    main()
