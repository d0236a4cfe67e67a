"""What Python's garbage-collector thresholds do to a node with many connections — the evidence
behind docs/decisions/0005-gc-thresholds.md.

    python -m bench gc_thresholds [--thresholds 700,10,10 10000,10,2] [--steps 6] [--cycles 15]

For each setting of ``ROOMSTATE_GC_THRESHOLDS``:

- steady load: 1,000 rooms x 10 on 2 nodes + Redis (10,000 connections), `--steps` steps of 4 s
  at 1,000 msgs/s (9,000 deliveries/s); per step the node CPU per delivery, the p99 latency and
  the nodes' garbage-collector pauses (from ``roomstate_gc_pause_seconds``);
- churn: one in-memory node, `--cycles` times 1,000 clients join 100 rooms and close; the node's
  RSS and its full collections after each cycle (unreachable cycles left by closed connections
  wait for a full collection, so fewer full collections hold more memory).

Prints a markdown table, then one JSON line with everything (also bench/out/gc-thresholds.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness.common import proc_rss_bytes
from bench.harness.deploy import start_topology
from bench.harness.report import OUT
from bench.harness.runner import Scenario, ScenarioRun, gc_pauses, log

CHURN_CLIENTS = 1000
CHURN_ROOMS = 100


def steady(thresholds: str, steps: int, tmp: Path) -> dict[str, Any]:
    sc = Scenario(
        f"1,000 rooms x 10, GC {thresholds}",
        "2-nodes-redis",
        participants=10,
        rooms=1000,
        env={"ROOMSTATE_GC_THRESHOLDS": thresholds},
    )
    rows = []
    with ScenarioRun(sc, tmp) as run:
        time.sleep(2.0)
        for _ in range(steps):
            s = run.run_step(1000.0, duration_s=4.0, tag="ref")
            rows.append(
                {
                    "us_per_delivery": s["node_cpu_us_per_delivery"],
                    "p99_ms": s["latency"]["p99_ms"],
                    "gc_pause_ms": sum(s["gc_pause_ms"]),
                    "gc_full": sum(s["gc_full"]),
                    "lost": s["lost"],
                    "node_rss_mb": s["node_rss_mb"],
                }
            )
    return {
        "steps": rows,
        "median_us_per_delivery": round(
            statistics.median(r["us_per_delivery"] or 0 for r in rows), 2
        ),
        "median_p99_ms": round(statistics.median(r["p99_ms"] or 0 for r in rows), 2),
        "max_p99_ms": max(r["p99_ms"] or 0 for r in rows),
        "gc_pause_ms": round(sum(r["gc_pause_ms"] for r in rows), 1),
        "gc_full": sum(r["gc_full"] for r in rows),
    }


async def _churn_cycle(base: str, tag: str) -> None:
    url = base.replace("http://", "ws://")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sem = asyncio.Semaphore(64)
        sockets: list[aiohttp.ClientWebSocketResponse] = []

        async def one(i: int) -> None:
            async with sem, asyncio.timeout(20):
                ws = await session.ws_connect(f"{url}/v1/rooms/{tag}-{i % CHURN_ROOMS}/ws")
                await ws.send_str('{"type":"join","id":0}')
                while True:
                    msg = await ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        raise RuntimeError(f"join failed: {msg.type} {msg.data!r}")
                    if msg.data.startswith('{"type":"joined"'):
                        break
                sockets.append(ws)

        await asyncio.gather(*(one(i) for i in range(CHURN_CLIENTS)))
        await asyncio.gather(*(ws.close() for ws in sockets))


def churn(thresholds: str, cycles: int, tmp: Path) -> dict[str, Any]:
    dep = start_topology("1-node-memory", tmp, {"ROOMSTATE_GC_THRESHOLDS": thresholds})
    rows = []
    try:
        pid = dep.node_pids()[0]
        for cycle in range(cycles):
            asyncio.run(_churn_cycle(dep.entries[0], "churn"))
            time.sleep(1.0)
            (paused, full), *_ = gc_pauses(dep)
            rows.append(
                {
                    "cycle": cycle + 1,
                    "rss_mb": round(proc_rss_bytes(pid) / 2**20, 1),
                    "gc_pause_s": round(paused, 2),
                    "gc_full": full,
                }
            )
            log(f"  churn {thresholds}: {rows[-1]}")
    finally:
        dep.stop()
    return {"cycles": rows, "final": rows[-1] if rows else None}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench gc_thresholds", description=__doc__)
    ap.add_argument("--thresholds", nargs="+", default=["700,10,10", "10000,10,10", "10000,10,2"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cycles", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-gc-"))
    results: dict[str, Any] = {"thresholds": {}}
    for th in args.thresholds:
        log(f"== {th}: steady load, 10,000 connections")
        out = {"steady": steady(th, args.steps, tmp / f"steady-{th}")}
        log(f"== {th}: churn")
        out["churn"] = churn(th, args.cycles, tmp / f"churn-{th}")
        results["thresholds"][th] = out
    print(
        "| thresholds | node µs/delivery (median) | p99 ms (median, max) | GC pause ms | full "
        "collections | churn: RSS MB after | churn: full collections, pause s |"
    )
    print("|---|---|---|---|---|---|---|")
    for th, out in results["thresholds"].items():
        st, final = out["steady"], out["churn"]["final"] or {}
        print(
            f"| {th} | {st['median_us_per_delivery']} | {st['median_p99_ms']}, "
            f"{st['max_p99_ms']} | {st['gc_pause_ms']} | {st['gc_full']:g} | "
            f"{final.get('rss_mb')} | {final.get('gc_full', 0):g}, {final.get('gc_pause_s')} |"
        )
    sys.stdout.flush()
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "gc-thresholds.json"
    out.write_text(json.dumps(results, indent=1))
    log(f"results: {out}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
