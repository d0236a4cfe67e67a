"""Profile a roomstate node under load with py-spy (not a dependency: install it anywhere, e.g.
``python -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy``).

    python -m bench profile_node --py-spy /tmp/pyspy/bin/py-spy [--rate 800] [--seconds 12]

Runs 10 rooms x 10 on 2 nodes + Redis at a fixed open-loop rate, records node 0 with
``py-spy record --format raw`` (collapsed stacks), and prints the functions with the most
self time and the most total time, in % of the samples.

    python -m bench profile_node --perf [--rate 1000]

records node 0 with Linux ``perf record`` instead (``perf`` from the distribution's
linux-perf package) and prints where its CPU time goes by binary (the kernel, libpython, uvloop,
...) and the kernel's system calls: the split py-spy cannot see.
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

from bench.harness.runner import Scenario, ScenarioRun

# Where a sample's time goes: the first of these patterns (in this order) found in its stack (a
# function's qualified name, or its file, as py-spy prints them; files under node/ by their
# place in the roomstate package).
CATEGORIES = (
    ("prometheus_client", "metrics (prometheus_client)"),
    ("_send_packed_command", "Redis command writes (redis-py: leases, snapshots)"),
    ("Connection._drain", "WebSocket writes to clients (queued, drain task)"),
    ("Connection.deliver", "WebSocket writes to clients (straight to the socket)"),
    ("RespConnection._flush", "Redis writes (bus/redis/resp.py: one write per loop iteration)"),
    ("RedisBus.publish", "publish: EVALSHA call (bus/redis/bus.py, resp.py)"),
    ("Reader.on_push", "pushed events: split, decode, room logic, frames"),
    ("RespConnection", "Redis replies: reading and parsing (bus/redis/resp.py)"),
    ("wire/protocol.py", "parsing client frames (wire/protocol.py)"),
    ("Hosting.deliver", "frames for local recipients (edge/hosting.py)"),
    ("fan_out", "frames for local recipients (server/fastpath.py)"),
    ("Node.handle", "request handling (edge/node.py, room logic)"),
    ("_handle_frame", "request handling (edge/node.py, room logic)"),
    ("web_ws.py", "aiohttp WebSocket receive"),
    ("_websocket/reader", "aiohttp WebSocket receive"),
    ("web_protocol.py", "aiohttp WebSocket receive"),
    ("RedisBus", "redis bus, other (leases, catch-up)"),
    ("bus/redis/", "redis bus, other (leases, catch-up)"),
    ("redis/", "redis bus, other (leases, catch-up)"),
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


def perf_split(data: Path) -> str:
    """`perf report` of a recording: the share of samples per binary, then per system call."""

    def report(*args: str) -> list[str]:
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "-g", "none", *args],
            capture_output=True, text=True, check=False, timeout=120,
        ).stdout  # fmt: skip
        return [line for line in out.splitlines() if line.strip() and not line.startswith("#")]

    by_binary = report("--no-children", "--sort", "dso")[:10]
    entries = ("[k] ksys_", "[k] __x64_sys_", "[k] __sys_")  # a system call's kernel entry
    calls = report("--children", "--sort", "sym")
    syscalls = [line for line in calls if any(e in line for e in entries)][:8]
    return "\n".join(
        ["% of samples by binary", *by_binary, "", "% of samples under each system call "
         "(children included)", *syscalls]
    )  # fmt: skip


SYSCALLS = ("write", "writev", "sendto", "read", "recvfrom", "epoll_pwait", "getpid")


def syscall_counts(raw: Path, messages: float) -> str:
    """`perf stat`'s count of the node's system calls (kernel tracepoints: counted in the
    kernel, no slowdown to speak of), per app message sent in the window (`messages`: the rate
    times the counted seconds)."""
    out = [f"system calls of node 0 per app message sent ({messages:.0f} messages)"]
    for line in raw.read_text().splitlines():
        f = line.split(",")
        # "12345,,syscalls:sys_enter_write,..." (count, unit, event, ...)
        if len(f) >= 3 and f[0].strip().isdigit() and f[2].startswith("syscalls:"):
            name = f[2].removeprefix("syscalls:sys_enter_")
            out.append(f"{name:<12} {int(f[0]) / messages:>8.2f} per message  {int(f[0]):>9}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench profile_node", description=__doc__)
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
    ap.add_argument("--perf", action="store_true", help="record with Linux perf, not py-spy")
    ap.add_argument(
        "--syscalls",
        action="store_true",
        help="count system calls (perf stat on tracepoints), no profile",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-profile-"))
    raw = Path(args.out) if args.out else tmp / ("node0.perf" if args.perf else "node0.raw")
    with ScenarioRun(Scenario("profile", args.system), tmp) as run:
        assert run.dep is not None
        pid = run.dep.node_pids()[0]
        window = ["--", "sleep", str(int(args.seconds - 2))]  # perf's recording window
        cmd = [args.py_spy, "record", "-p", str(pid), "-d", str(int(args.seconds - 2)),
               "-r", "250", "-f", "raw", "-o", str(raw)]  # fmt: skip
        if args.perf:
            cmd = ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", str(raw), *window]
        elif args.syscalls:
            events = [f"syscalls:sys_enter_{c}" for c in SYSCALLS]
            cmd = ["perf", "stat", "-x", ",", "-p", str(pid), "-o", str(raw),
                   *(f"-e{e}" for e in events), *window]  # fmt: skip
        else:
            cmd += [flag for flag, on in (("--idle", args.idle), ("--native", args.native),
                                          ("--gil", args.gil)) if on]  # fmt: skip

        def spy() -> None:
            import time

            time.sleep(1.5)
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=args.seconds + 30)  # fmt: skip

        t = threading.Thread(target=spy)
        t.start()
        run.run_step(args.rate, warmup_s=0.5, duration_s=args.seconds)
        t.join()
    if args.syscalls:
        print(syscall_counts(raw, args.rate * int(args.seconds - 2)))
    else:
        print(perf_split(raw) if args.perf else analyse(raw))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
