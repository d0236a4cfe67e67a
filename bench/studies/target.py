"""Benchmark your own roomstate deployment: latency and the highest sustainable rate.

    python -m bench target http://node-a:8080 http://node-b:8080 [--api-key KEY]
    python -m bench target https://rooms.example.com --api-key KEY --rates 100,500

Load generators on this machine join rooms on the given nodes (participant j of room r on node
(r + j) mod N, so each room spans the nodes), send app messages open-loop and measure each
delivery: a light step (900 deliveries/s, at most 10 msgs/s per sender), then a ramp by 1.3x
until a step fails (p99 > 50 ms, a loss, a duplicate, an error or a closed connection; a failed
step is run once more before it counts), or the fixed `--rates`. With one URL (a load balancer)
the same-node / cross-node split is not known. With ``ROOMSTATE_API_KEY`` (or `--api-key`, which
other users of the machine can see in its process list) each room gets a meeting token signed
with it, valid for an hour. The deployment's rate limit per connection (100 requests/s by
default) caps what one sender can send: refused requests fail their step ("rate_limited" in the
summary), and a connection refused for too long is closed, which ends the run. Rooms are named
``b<digits>-r<i>``.

Results go to bench/out/target.{json,md} (`--out` to change); progress goes to stderr; the
last stdout line is one JSON object. The nodes' CPU and /metrics are not read (they run
elsewhere); the generators' CPU is, and `generators_saturated` says when one of them used a whole
core: the result is then the generators' limit. Exit code 2: a URL's /healthz did not answer, or
a join was refused (the node's error is printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness import report, runner
from bench.harness.common import dig
from bench.harness.report import OUT
from bench.harness.runner import LIGHT_RATE, RAMP_STEPS, Scenario, ScenarioRun, log

RAMP_FACTOR = 1.3


def summary(record: dict[str, Any]) -> dict[str, Any]:
    steps = record["steps"]
    light = next((s for s in steps if s["tag"] == "light"), None)
    knee = record["knee"]
    ok = [s for s in steps if s["ok"] and s["tag"] != "light"]
    # a ramp's result is its knee (None: not even its lowest step passed); fixed rates: the
    # busiest step that passed
    best = knee if record["ramped"] else max(ok, key=lambda s: s["deliveries_per_s"], default=None)
    return {
        "deliveries_per_s": dig(best, "deliveries_per_s"),
        "max_rate_msgs_per_s": dig(best, "rate"),
        "p99_ms_at_max": dig(best, "latency", "p99_ms"),
        "capped": bool(knee and knee.get("capped")),
        "light_p50_ms": dig(light, "latency", "p50_ms"),
        "light_p99_ms": dig(light, "latency", "p99_ms"),
        "cross_node_p50_ms": dig(light, "cross_node", "p50_ms"),
        "cross_node_p99_ms": dig(light, "cross_node", "p99_ms"),
        "steps": len(steps),
        "failed_steps": sum(1 for s in steps if not s["ok"]),
        "errors": sum(s["errors"] for s in steps),
        "rate_limited": any("rate-limited" in e for s in steps for e in s["error_samples"]),
        "closed": sum(s["closed"] for s in steps),
        "error_samples": [e for s in steps for e in s["error_samples"]][:3],
        # a generator process at the limit of its core: the result is the generators' limit
        "generators_saturated": any(
            p.startswith("gens[") for s in steps if s["ok"] for p in s["saturated_procs"]
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench target", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("urls", nargs="+", help="the nodes' base URLs (http:// or https://)")
    ap.add_argument("--api-key", default=os.environ.get("ROOMSTATE_API_KEY"))
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--participants", type=int, default=10, help="per room")
    ap.add_argument("--payload", type=int, default=256, help="bytes of JSON per app message")
    ap.add_argument("--generators", type=int, default=2, help="load generator processes")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per step")
    ap.add_argument("--rates", help="comma-separated msgs/s: run these steps, no ramp")
    ap.add_argument(
        "--start", type=float, help="first ramp rate, msgs/s (default: 500 at 10x10, <= 25/sender)"
    )
    ap.add_argument("--max-steps", type=int, default=RAMP_STEPS, help="ramp steps at most")
    ap.add_argument("--out", type=Path, default=OUT, help="directory for target.json/.md")
    args = ap.parse_args()
    if any(not u.startswith(("http://", "https://")) for u in args.urls):
        ap.error("each URL must start with http:// or https://")
    if args.participants < 2 or args.rooms < 1:
        ap.error("a room needs at least 2 participants, and there must be a room")
    try:
        rates = [float(r) for r in args.rates.split(",")] if args.rates else []
    except ValueError:
        ap.error(f"--rates must be comma-separated numbers, not {args.rates!r}")
    if any(r <= 0 for r in rates):
        ap.error("every rate must be above 0 msgs/s")

    for url in args.urls:  # fail fast, and say which URL, rather than after 5 join attempts
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=5) as r:
                r.read()
        except (OSError, ValueError) as exc:
            log(f"cannot benchmark {url}: GET /healthz failed: {exc}")
            sys.exit(2)
    started = time.monotonic()
    runner.QUIET.left = 30.0
    fanout = args.participants - 1
    senders = args.rooms * min(args.participants, 10)
    sc = Scenario(
        f"target: {len(args.urls)} URL(s)", "external", participants=args.participants,
        rooms=args.rooms, payload=args.payload, generators=args.generators,
        urls=tuple(args.urls), api_key=args.api_key,
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-target-"))  # generator configs (tokens)
    try:
        with ScenarioRun(sc, tmp) as run:
            # 900 deliveries/s, at most 10 msgs/s per sender (the default limit is 100)
            light = min(LIGHT_RATE * 9 / fanout, 10.0 * senders)
            step = run.run_step(light, precise=True, duration_s=args.seconds, tag="light")
            knee = None
            if step["closed"]:
                log("the deployment closed connections in the light step; not going on")
            elif rates:
                for rate in rates:
                    step = run.run_step(rate, duration_s=args.seconds, tag="fixed")
                    if step["closed"]:  # the later steps would run on closed connections
                        log(f"the deployment closed connections at {rate:g} msgs/s; stopping")
                        break
            else:
                start = args.start or min(500.0 * 9 / fanout, 25.0 * senders)
                knee = run.ramp(start, RAMP_FACTOR, args.max_steps, duration_s=args.seconds)
            record = {"label": sc.label, "system": "external", "urls": list(args.urls),
                      "rooms": sc.rooms, "participants": sc.participants, "payload": sc.payload,
                      "kind": sc.kind,
                      "info": run.info, "steps": run.steps, "knee": knee,
                      "ramped": not rates}  # fmt: skip
    except (RuntimeError, TimeoutError) as exc:  # a join refused (a wrong key, ...), no node
        log(f"cannot benchmark {args.urls}: {exc}")
        sys.exit(2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {
        "mode": "target", "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench target " + " ".join(args.urls),
        "machine": {"cores": os.cpu_count(), "cpu": "(load generators only)", "python":
                    sys.version.split()[0], "versions": {}},
        "scenarios": [record], "duration_s": time.monotonic() - started,
        "quiet_waited_s": runner.QUIET.waited, "targets": [],
    }  # fmt: skip
    results["summary"] = summary(record)
    paths = report.write(results, args.out, "target")
    log(f"results: {paths}")
    print(orjson.dumps(results["summary"]).decode(), flush=True)


if __name__ == "__main__":
    main()
