"""Two workers against one: `roomstate serve --workers 2` and a single node process, in one run.

    python -m bench workers [--quick] [--rates 4000,8000,...] [--seconds 3]

Each configuration runs on its own standalone redis-server: first one node process (`roomstate
serve`, no supervisor), then `roomstate serve --workers 2` (a supervisor and two node processes
on one port). The same load runs on both: 10 rooms x 10 participants, every client connecting
to the one port (with two workers the kernel spreads the connections, so each room spans both),
10 senders per room, 256-byte app messages, open loop, at a fixed ladder of rates (each message
has 9 deliveries). Each step reports deliveries/s, latency, loss and the CPU of every process:
the node processes (the supervisor with its workers), Redis, and the load generators, which run
on the same cores as the nodes and take their share of them.

Results go to bench/out/workers.{json,md}; progress goes to stderr; the last stdout line is the
summary JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.harness import runner
from bench.harness.deploy import Deployment, start_node
from bench.harness.report import OUT
from bench.harness.runner import GenProcess, Scenario, ScenarioRun, log
from deploy.local.servers import RedisServer

CONFIGS = {"1 worker": 1, "2 workers": 2}
RATES = (4000.0, 8000.0, 12000.0, 16000.0, 20000.0)  # msgs/s: 36,000 to 180,000 deliveries/s
QUICK_RATES = (6000.0, 12000.0, 18000.0)  # 54,000 to 162,000 deliveries/s


class Workers(Deployment):
    """A supervisor (`nodes[0]`) and its workers: the CPU of all of them is the nodes' CPU."""

    def node_pids(self) -> list[int]:
        supervisor = self.nodes[0].pid
        try:
            children = [c.pid for c in psutil.Process(supervisor).children()]
        except psutil.NoSuchProcess:
            children = []
        return [supervisor, *children]


def start(workers: int, tmp: Path) -> Deployment:
    """One node process on a fresh redis-server, or a supervisor of `workers`."""
    tmp.mkdir(parents=True, exist_ok=True)
    redis = RedisServer.start(tmp)
    stores = [redis.process] if redis.process else []
    args = ["--redis", redis.url]
    if workers > 1:
        args += ["--workers", str(workers)]
    try:
        proc, url = start_node(tmp, 0, {}, *args)
    except BaseException:
        redis.stop()
        raise
    kind = Workers if workers > 1 else Deployment
    name = f"{workers} worker" + ("s" if workers > 1 else "")
    return kind(name, "roomstate", [url], [proc], stores, redis)


class PreparedRun(ScenarioRun):
    """A `ScenarioRun` on a deployment started here (the runner starts only named topologies)."""

    def __init__(self, scenario: Scenario, tmp: Path, dep: Deployment) -> None:
        super().__init__(scenario, tmp)
        self.prepared = dep

    def __enter__(self) -> PreparedRun:
        started = time.monotonic()
        self.dep = self.prepared
        try:
            self.gens = [GenProcess(i, c, self.tmp) for i, c in enumerate(self._configs())]
            connected = [g.read("ready", 180) for g in self.gens]
            self.info["connect_s"] = round(max(c["connect_s"] for c in connected), 2)
            time.sleep(0.5)
        except BaseException:
            self.__exit__()
            raise
        self.setup_s = time.monotonic() - started
        return self


def summary(steps: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per configuration: the most deliveries/s of a step that passed (p99 <= 50 ms, no loss or
    error) and, at the top rate, the CPU of the nodes, Redis and the generators (% of one core);
    per rate, the 2 workers' deliveries/s over the 1 worker's."""
    out: dict[str, Any] = {}
    for name, rows in steps.items():
        passed = [s["deliveries_per_s"] for s in rows if s["ok"]]
        top = max(rows, key=lambda s: s["rate"], default=None)
        out[name] = {
            "best_ok_deliveries_per_s": max(passed, default=None),
            "top_rate": top and top["rate"],
            "top_deliveries_per_s": top and top["deliveries_per_s"],
            "top_p99_ms": top and top["latency"]["p99_ms"],
            "top_nodes_cpu_pct": top and round(sum(top["cpu_pct"]["nodes"]), 1),
            "top_redis_cpu_pct": top and round(sum(top["cpu_pct"]["stores"]), 1),
            "top_generators_cpu_pct": top and round(sum(top["cpu_pct"]["gens"]), 1),
            "top_machine_busy_pct": top and top["machine_busy_pct"],
            "disturbed_steps": sum(1 for s in rows if s["disturbed"]),
        }
    one, two = steps.get("1 worker", []), steps.get("2 workers", [])
    by_rate = {s["rate"]: s for s in one}
    out["ratio_2_over_1"] = {
        f"{s['rate']:g}": round(s["deliveries_per_s"] / by_rate[s["rate"]]["deliveries_per_s"], 2)
        for s in two
        if by_rate.get(s["rate"], {}).get("deliveries_per_s")
    }
    return out


def table(steps: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| config | msgs/s | deliveries/s | p50 ms | p99 ms | lost | nodes CPU % | redis CPU %"
        " | generators CPU % | machine busy % | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in steps.items():
        for s in rows:
            cpu = s["cpu_pct"]
            lines.append(
                f"| {name} | {s['rate']:,.0f} | {s['deliveries_per_s']:,} | "
                f"{s['latency']['p50_ms']} | {s['latency']['p99_ms']} | {s['lost']} | "
                f"{'+'.join(f'{v:g}' for v in cpu['nodes'])} | "
                f"{'+'.join(f'{v:g}' for v in cpu['stores'])} | "
                f"{'+'.join(f'{v:g}' for v in cpu['gens'])} | {s['machine_busy_pct']} | "
                f"{'yes' if s['ok'] else 'no'}{' (disturbed)' if s['disturbed'] else ''} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench workers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="3 rates, 2 s steps (about a minute)")
    ap.add_argument("--rates", help="comma-separated msgs/s (default: 4000 to 20000)")
    ap.add_argument("--seconds", type=float, help="measured seconds per step (3; quick: 2)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")] if args.rates else None
    rates = rates or list(QUICK_RATES if args.quick else RATES)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    runner.QUIET.left = 4.0 if args.quick else 30.0  # waiting for a quiet machine, in all
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-workers-"))
    steps: dict[str, list[dict[str, Any]]] = {}
    for name, count in CONFIGS.items():
        log(f"== {name}")
        # (any system but "external", whose nodes' CPU the runner does not read)
        sc = Scenario(name, f"workers-{count}", participants=10, rooms=10, generators=2)
        where = tmp / f"{count}w"  # the servers' logs and the generators' configs
        with PreparedRun(sc, where, start(count, where)) as run:
            for rate in rates:
                run.run_step(rate, duration_s=seconds, drain_s=3.0, tag="ladder")
                run.settle(3.0)
            steps[name] = run.steps
    results = {
        "study": "workers",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench workers " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(),
        "rates": rates,
        "seconds": seconds,
        "steps": steps,
        "summary": summary(steps),
        "duration_s": round(time.monotonic() - started, 1),
        "quiet_waited_s": round(runner.QUIET.waited, 1),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "workers.json").write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    md = (
        f"# Workers: 2 against 1 ({os.cpu_count()} cores)\n\n`{results['command']}`, "
        f"{results['started']}, {results['duration_s']} s\n\n{table(steps)}\n"
    )
    (OUT / "workers.md").write_text(md)
    print(md, file=sys.stderr)
    log(f"results: {OUT / 'workers.json'}, {OUT / 'workers.md'}")
    print(orjson.dumps(results["summary"]).decode(), flush=True)


if __name__ == "__main__":
    main()
