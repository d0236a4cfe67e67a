"""Memory under churn: rooms that never empty while people come and go all the time. How many
bytes a room and a participant take in Redis and in each node, and whether that keeps growing.

    python -m bench churn                       # 60 clients, 6 rooms, 360 s
    python -m bench churn --quick               # the same for 60 s
    python -m bench churn --clients 120 --rooms 12 --seconds 600
    python -m bench churn --tracemalloc         # the nodes trace allocations (slower, bigger)
    python -m bench churn --allocators          # where each node's memory is, live or kept

3 nodes and one redis-server on free loopback ports, the nodes with their default resume grace.
C clients (bench/harness/churn_clients.py) churn through R rooms: join a room on a random node,
write userData, session data and app messages for a few seconds, leave or drop the socket, join
again; the first client of each room never leaves, so no room empties. Every few seconds: Redis's
`used_memory` (INFO memory), each node's RSS (/proc), the number of room keys. After the clients
stop, one more sample once the room grace has passed (the rooms dropped).

Reported: per room and per participant bytes in Redis and in a node (the mean over the second
half, less the idle deployment's, over the rooms or the participants joined), the growth over the
second half (the last sample less the one at half time, and a least-squares slope per minute),
what the clients did (joins, writes, leaves, drops) and every error. With `--tracemalloc` each node
writes the allocation sites that grew between the run's quarter, half, end and after the room
grace (ROOMSTATE_TRACEMALLOC_DIR, SIGUSR2); their files are copied beside the report. With
`--allocators` the nodes run as bench.harness.alloc_node and tell, at the same points, how their
RSS splits between live objects and what their allocators keep (no tracing: the node runs at its
usual speed); the report has the table. Results: bench/out/churn[-quick].{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness import alloc_node
from bench.harness.churn_clients import Churn, Profile
from bench.harness.churn_report import analyse, markdown, plot
from bench.harness.common import proc_rss_bytes
from bench.harness.deploy import Deployment, start_topology
from bench.harness.machine import machine
from bench.harness.report import OUT
from bench.harness.runner import log


def sample(dep: Deployment, t0: float, joined: int, names: bool = False) -> dict[str, Any]:
    """One point: Redis's memory and the rooms' keys (their bytes, the state hashes' fields),
    each node's RSS, the clients joined now (and with `names`, the keys' names)."""
    assert dep.redis is not None
    redis = dep.redis
    mem = redis.info("memory")
    keys = redis.command("KEYS", "rs:*")
    found = sorted(str(k) for k in keys) if isinstance(keys, list) else []
    logs = [k for k in found if ":log:" in k and ":~" not in k]  # not the clock check's room
    states = [k for k in found if ":state:" in k and ":~" not in k]

    def number(*command: str) -> int:
        reply = redis.command(*command)
        return reply if isinstance(reply, int) else 0

    def usage(key: str) -> int:
        return number("MEMORY", "USAGE", key, "SAMPLES", "0")

    return {
        "t": round(time.monotonic() - t0, 2),
        "redis_used": int(mem["used_memory"]),
        "redis_rss": int(mem["used_memory_rss"]),
        "room_keys": len(logs) + len(states),
        "keys": len(found),
        "log_bytes": sum(usage(k) for k in logs),
        "state_bytes": sum(usage(k) for k in states),
        "state_fields": sum(number("HLEN", k) for k in states),
        "node_rss": [proc_rss_bytes(pid) for pid in dep.node_pids()],
        "joined": joined,
    } | ({"key_names": found} if names else {})


class ChurnRun:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.samples: list[dict[str, Any]] = []
        self.dumps: list[dict[str, Any]] = []
        self.trace_dir = tmp / "tracemalloc"

    def env(self) -> dict[str, str]:
        from roomstate.settings import Settings

        # an operator's resume grace (the bench's default is 0): a dropped socket's participant
        # stays that long, as it would in production
        env = {"ROOMSTATE_RESUME_GRACE_S": str(Settings.resume_grace_s)}
        if self.args.tracemalloc or self.args.allocators:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            variable = (
                alloc_node.DIR_VARIABLE if self.args.allocators else "ROOMSTATE_TRACEMALLOC_DIR"
            )
            env[variable] = str(self.trace_dir)
        return env

    async def dump(self, dep: Deployment, label: str, t0: float) -> None:
        """Each node appends a dump (SIGUSR2: its allocation sites' growth since the last one, or
        its allocators' figures); waits (up to 120 s) until every node has written it, so that
        dumps do not overlap."""
        if not (self.args.tracemalloc or self.args.allocators):
            return
        for node in dep.nodes:
            node.send_signal(signal.SIGUSR2)
        self.dumps.append({"label": label, "t": round(time.monotonic() - t0, 2)})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            files = [self._dump_file(pid) for pid in dep.node_pids()]
            written = [f.read_text().count("== ") if f.exists() else 0 for f in files]
            if min(written) >= len(self.dumps):
                break
            await asyncio.sleep(0.5)
        self.dumps[-1]["written_t"] = round(time.monotonic() - t0, 2)
        log(f"  dump '{label}' written by every node")

    def _dump_file(self, pid: int) -> Path:
        kind = "allocators" if self.args.allocators else "tracemalloc"
        return self.trace_dir / f"{kind}-{pid}.txt"

    async def drive(self, dep: Deployment) -> dict[str, Any]:
        a = self.args
        rooms = [f"churn{i}-{time.monotonic_ns() % 10**6}" for i in range(a.rooms)]
        urls = [[dep.ws_url(n, room) for room in rooms] for n in range(len(dep.nodes))]
        profile = Profile(write_rate=a.write_rate, session_s=a.session_s, pause_s=a.pause_s)
        churn = Churn(urls, a.clients, profile)
        t0 = time.monotonic()
        await asyncio.sleep(2.0)  # the nodes settle after start
        idle = sample(dep, t0, 0, names=True)
        self.samples.append({**idle, "phase": "idle"})
        await self.dump(dep, "idle", t0)
        task = asyncio.create_task(churn.run())
        start = time.monotonic()
        marks = {"quarter": a.seconds / 4, "half": a.seconds / 2}
        next_sample = start + a.sample_s
        while (now := time.monotonic()) < start + a.seconds:
            if task.done():
                task.result()  # the clients failed: say why
                raise RuntimeError("the clients stopped before the run's end")
            await asyncio.sleep(max(0.0, min(next_sample, start + a.seconds) - now))
            if time.monotonic() >= next_sample:
                next_sample += a.sample_s
                point = await asyncio.to_thread(sample, dep, t0, churn.joined)
                self.samples.append(
                    {**point, "phase": "churn", "run_t": round(time.monotonic() - start, 1)}
                )
                for label, at in list(marks.items()):
                    if time.monotonic() - start >= at:
                        await self.dump(dep, label, t0)
                        del marks[label]
                log(
                    f"  t={point['t']:6.1f}s redis {point['redis_used'] / 1e6:6.2f} MB  "
                    f"rss {' '.join(f'{r / 1e6:5.1f}' for r in point['node_rss'])} MB  "
                    f"room keys {point['room_keys']}  joined {point['joined']}  "
                    f"joins {churn.tally.joins} errors {sum(churn.tally.errors.values())}"
                )
        end = sample(dep, t0, churn.joined, names=True)
        self.samples.append({**end, "phase": "end", "run_t": round(time.monotonic() - start, 1)})
        await self.dump(dep, "end", t0)
        churn.stop.set()
        await asyncio.wait_for(task, 60)
        if a.after_s > 0:
            log(f"  clients gone; waiting {a.after_s:g} s (the room grace drops the rooms)")
            await asyncio.sleep(a.after_s)
            after = sample(dep, t0, 0, names=True)
            self.samples.append({**after, "phase": "after"})
            await self.dump(dep, "after", t0)
        return {"tally": churn.tally.summary(), "profile": profile.__dict__,
                "alive": [n.running for n in dep.nodes]}  # fmt: skip

    def run(self) -> dict[str, Any]:
        module = "bench.harness.alloc_node" if self.args.allocators else "roomstate"
        dep = start_topology("3-nodes-redis", self.tmp, self.env(), module)
        try:
            import uvloop

            outcome = uvloop.run(self.drive(dep))
        finally:
            dep.stop()
        outcome["dumps"] = self.dumps
        if self.args.allocators:  # per node, per dump (in the order of `dumps`)
            outcome["allocators"] = [
                alloc_node.parse(self._dump_file(pid).read_text())
                if self._dump_file(pid).exists() else []
                for pid in dep.node_pids()
            ]  # fmt: skip
        return outcome

    def keep_dumps(self, out: Path, stem: str) -> list[str]:
        """The nodes' tracemalloc files, copied into `out` as STEM-tracemalloc-N.txt."""
        kept: list[str] = []
        if self.trace_dir.is_dir() and self.args.tracemalloc:
            for i, path in enumerate(sorted(self.trace_dir.glob("*.txt"))):
                target = out / f"{stem}-tracemalloc-{i}.txt"
                shutil.copyfile(path, target)
                kept.append(str(target))
        return kept


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench churn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--clients", type=int, default=60, help="clients, default 60")
    ap.add_argument("--rooms", type=int, default=6, help="rooms, default 6")
    ap.add_argument("--seconds", type=float, default=360.0, help="churn time, default 360")
    ap.add_argument("--quick", action="store_true", help="60 s of churn")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--write-rate", type=float, default=6.0, help="writes/s per client")
    ap.add_argument("--session-s", type=float, default=2.5, help="mean stay of a client (s)")
    ap.add_argument("--pause-s", type=float, default=0.3, help="mean pause between stays (s)")
    ap.add_argument(
        "--after-s",
        type=float,
        default=50.0,
        help="after the churn, wait this long and sample (default: past the resume grace and"
        " the room grace, when the rooms are dropped)",
    )
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="the nodes trace allocations and dump their growth (slower, bigger)",
    )
    ap.add_argument(
        "--allocators",
        action="store_true",
        help="the nodes tell how their RSS splits between live objects and their allocators",
    )
    ap.add_argument("--out", type=Path, default=OUT, help="directory for the .json/.md")
    args = ap.parse_args(argv)
    if args.tracemalloc and args.allocators:
        ap.error("--tracemalloc hides Python's allocator: use --allocators in a run of its own")
    if args.quick:
        args.seconds = 60.0
    if args.clients < args.rooms or args.rooms < 1:
        ap.error("--clients must be at least --rooms (a room's first client never leaves)")
    stem = "churn-quick" if args.quick else "churn"
    if args.tracemalloc or args.allocators:
        stem += "-tracemalloc" if args.tracemalloc else "-allocators"
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": stem, "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench churn " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": None},
        "machine": machine(),
    }  # fmt: skip
    log(f"== churn: {args.clients} clients, {args.rooms} rooms, {args.seconds:g} s")
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-churn-"))
    try:
        run = ChurnRun(args, tmp)
        results |= run.run()
        results["samples"] = run.samples
        args.out.mkdir(parents=True, exist_ok=True)
        results["tracemalloc_files"] = run.keep_dumps(args.out, stem)
    finally:
        if os.environ.get("BENCH_KEEP_LOGS") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"logs kept in {tmp}")
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["summary"] = analyse(results)
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    md_path.write_text(markdown(results))
    plot(results, args.out / f"{stem}.png")
    log(f"results: {json_path} {md_path}")
    sys.stdout.write(orjson.dumps(results["summary"]).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
