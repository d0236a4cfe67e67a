"""What one hop between two sleeping processes costs on this machine, with no Python server at all.

    python -m bench wake_cost [--rates 100,1000,10000] [--messages 500]

Two processes joined by a loopback TCP connection (and, for comparison, a Unix socket pair) play
ping-pong: the first sleeps ``1/rate`` s, stamps ``time.monotonic_ns()``, sends 300 bytes; the
second, blocked in ``recv``, stamps the moment it has them all and answers with that stamp.
Printed per rate, p50 and p90 in µs: how long the ``send`` call took, the time until the peer had
the bytes (one hop), and the round trip. The rate is nominal: the pause between messages is
``1/rate``, so the real rate is lower by the round trip (much lower at 10,000/s). At a low rate
both processes have slept for milliseconds before each message; that is the case of every
process on an app message's path at light load (generator, node, Redis, node), and what it costs
against a high rate is the part of light-load latency no server code can remove. The last stdout
line is JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
import traceback
from typing import Any

import orjson

from bench.harness.common import percentile

SIZE = 300  # bytes per message: a 256 B app message and its frame
STAMP = 8  # bytes of a time stamp or a sequence number
TIMEOUT_S = 5.0  # a reply later than this is an error, not a sample


def _pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes, or b"" if the peer closed before sending any; closing midway is an error."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            if data:
                raise ConnectionError(f"the peer closed after {len(data)} of {size} bytes")
            return b""
        data += chunk
    return bytes(data)


def _echo(sock: socket.socket) -> None:
    """The second process: for each whole message, its arrival stamp and its sequence number."""
    while data := _recv_exactly(sock, SIZE):
        stamp = time.monotonic_ns()
        sock.sendall(stamp.to_bytes(STAMP, "little") + data[:STAMP])


def _quantiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5), 1), "p90": round(percentile(values, 0.9), 1)}


def measure(kind: str, rate: float, messages: int) -> dict[str, Any]:
    a, b = _pair(kind)
    pid = os.fork()
    if pid == 0:  # the echoing process
        a.close()
        status = 0
        try:
            _echo(b)
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            os._exit(status)
    b.close()
    a.settimeout(TIMEOUT_S)
    sends, hops, trips = [], [], []
    try:
        for seq in range(messages):
            time.sleep(1 / rate)
            t0 = time.monotonic_ns()
            a.sendall(seq.to_bytes(STAMP, "little") + b"x" * (SIZE - STAMP))
            t1 = time.monotonic_ns()
            reply = _recv_exactly(a, 2 * STAMP)
            t2 = time.monotonic_ns()
            if not reply or int.from_bytes(reply[STAMP:], "little") != seq:
                raise RuntimeError(f"message {seq}: the echo does not match ({reply!r})")
            sends.append((t1 - t0) / 1000)
            hops.append((int.from_bytes(reply[:STAMP], "little") - t0) / 1000)
            trips.append((t2 - t0) / 1000)
    finally:
        a.close()
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"the echoing process failed (wait status {status})")
    return {"socket": kind, "rate": rate, "messages": messages, "send_us": _quantiles(sends),
            "hop_us": _quantiles(hops), "round_trip_us": _quantiles(trips)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench wake_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rates", default="100,1000,10000", help="comma-separated messages/s")
    ap.add_argument("--messages", type=int, default=500, help="per rate and socket kind")
    args = ap.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        ap.error(f"--rates must be comma-separated numbers, not {args.rates!r}")
    if not all(math.isfinite(r) and r > 0 for r in rates):
        ap.error(f"--rates must be finite numbers above 0, not {args.rates!r}")
    if args.messages < 10:
        ap.error(f"--messages must be at least 10, not {args.messages}")
    results = []
    print("socket  rate/s   send() p50/p90 µs   one hop p50/p90 µs   round trip p50/p90 µs")
    for rate in rates:
        for kind in ("tcp", "unix"):
            try:
                r = measure(kind, rate, args.messages)
            except (OSError, RuntimeError) as exc:
                sys.exit(f"wake_cost: {kind} at {rate:g}/s: {exc}")
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
