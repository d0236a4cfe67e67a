"""Profile a roomstate node under load with py-spy (not a dependency: install it anywhere, e.g.
``python -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy``).

    python -m bench.profile_node --py-spy /tmp/pyspy/bin/py-spy [--rate 800] [--seconds 12]

Runs 10 rooms x 10 on 2 nodes + Redis at a fixed open-loop rate, records node 0 with
``py-spy record --format raw`` (collapsed stacks), and prints the functions with the most
self time and the most total time, in % of the samples.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from bench.runner import Scenario, ScenarioRun

# Where a sample's time goes: the first of these patterns (in this order) found in its stack.
CATEGORIES = (
    ("prometheus_client", "metrics (prometheus_client)"),
    ("_send_packed_command", "Redis command writes (redis-py)"),
    ("Connection._drain", "WebSocket writes to clients (per-recipient drain tasks)"),
    ("Connection.deliver", "WebSocket writes to clients (straight to the socket)"),
    ("RedisBus.publish", "publish: EVALSHA (node/resp.py)"),
    ("RespConnection", "Redis connection: packing, flushing, parsing replies (node/resp.py)"),
    ("RedisBus._read", "XREAD reader: decode, room logic, frames to clients"),
    ("Node._on_event", "XREAD reader: decode, room logic, frames to clients"),
    ("parse (node/protocol", "parsing client frames (node/protocol.py)"),
    ("Node._deliver", "frames for local recipients (Node._deliver)"),
    ("Node.handle", "request handling (node/node.py, room logic)"),
    ("_handle_frame", "request handling (node/node.py, room logic)"),
    ("web_ws.py", "aiohttp WebSocket receive"),
    ("_websocket/reader", "aiohttp WebSocket receive"),
    ("web_protocol.py", "aiohttp WebSocket receive"),
    ("RedisBus", "redis bus, other (leases, wake-ups)"),
    ("redis/", "redis bus, other (leases, wake-ups)"),
    ("epoll", "waiting in epoll"),
)


def stacks(raw: Path) -> Iterator[tuple[str, int]]:
    """(collapsed stack, sample count) per line of `py-spy record --format raw` output."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack, int(count)


def categorize(raw: Path) -> list[tuple[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    samples = 0
    for stack, n in stacks(raw):
        samples += n
        hit = next((name for pattern, name in CATEGORIES if pattern in stack), None)
        counts[hit or "event loop, other"] += n
    return [(name, 100 * n / max(samples, 1)) for name, n in counts.most_common()]


def analyse(raw: Path, top: int = 30) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    total_t: collections.Counter[str] = collections.Counter()
    samples = 0
    for stack, n in stacks(raw):
        samples += n
        frames = stack.split(";")
        self_t[frames[-1]] += n
        for f in set(frames):
            total_t[f] += n
    out = [f"samples: {samples}", "", "% of samples  where"]
    out += [f"{pct:5.1f}  {name}" for name, pct in categorize(raw)]
    out += ["", "self %  function"]
    out += [f"{100 * n / samples:5.1f}  {f}" for f, n in self_t.most_common(top)]
    out += ["", "total %  function"]
    out += [f"{100 * n / samples:5.1f}  {f}" for f, n in total_t.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--py-spy", default="py-spy")
    ap.add_argument("--rate", type=float, default=800)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--system", default="2-nodes-redis")
    ap.add_argument("--out", default=None, help="raw collapsed stacks file to keep")
    ap.add_argument("--idle", action="store_true", help="py-spy --idle (count waiting too)")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument(
        "--gil", action="store_true", help="py-spy --gil (only samples holding the GIL)"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-profile-"))
    raw = Path(args.out) if args.out else tmp / "node0.raw"
    with ScenarioRun(Scenario("profile", args.system), tmp) as run:
        assert run.dep is not None
        pid = run.dep.node_pids()[0]
        cmd = [args.py_spy, "record", "-p", str(pid), "-d", str(int(args.seconds - 2)),
               "-r", "250", "-f", "raw", "-o", str(raw)]  # fmt: skip
        if args.idle:
            cmd.append("--idle")
        if args.native:
            cmd.append("--native")
        if args.gil:
            cmd.append("--gil")

        def spy() -> None:
            import time

            time.sleep(1.5)
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=args.seconds + 30)  # fmt: skip

        t = threading.Thread(target=spy)
        t.start()
        run.run_step(args.rate, warmup_s=0.5, duration_s=args.seconds)
        t.join()
    print(analyse(raw))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
