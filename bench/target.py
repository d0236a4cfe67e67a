"""Benchmark your own roomstate deployment: latency and the highest sustainable rate.

    python -m bench.target http://node-a:8080 http://node-b:8080 [--api-key KEY]
    python -m bench.target https://rooms.example.com --api-key KEY --rates 100,500

Load generators on this machine join rooms on the given nodes (participant j of room r on node
(r + j) mod N, so each room spans the nodes), send app messages open-loop and measure each
delivery: a light step, then a ramp by 1.3x until a step fails (p99 > 50 ms, a loss, an error),
or the fixed `--rates`. With one URL (a load balancer) the same-node / cross-node split is not
known. With `--api-key` (or ``ROOMSTATE_API_KEY``) each room gets a meeting token signed with
it; the deployment's own rate limit per connection (100 requests/s by default) caps what one
sender can send, and a refused request fails its step. Rooms are named ``b<digits>-r<i>``.

Results go to bench/results/target.{json,md} (`--out` to change); progress goes to stderr; the
last stdout line is one JSON object. The nodes' CPU is not measured (they run elsewhere): the
generators' is, and a step with the generators' cores saturated says so.
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

from bench import report, runner
from bench.runner import Scenario, ScenarioRun, log

LIGHT_RATE = 100.0  # msgs/s at 10 x 10: 900 deliveries/s
RAMP_FACTOR = 1.3
RESULTS = Path(__file__).resolve().parent / "results"


def summary(record: dict[str, Any]) -> dict[str, Any]:
    steps = record["steps"]
    light = next((s for s in steps if s["tag"] == "light"), None)
    knee = record["knee"]
    ok = [s for s in steps if s["ok"]]
    # a ramp's result is its knee (None: not even its lowest step passed); fixed rates: the
    # busiest step that passed
    best = knee if record["ramped"] else max(ok, key=lambda s: s["deliveries_per_s"], default=None)

    def get(step: dict[str, Any] | None, *keys: str) -> Any:
        for key in keys:
            if step is None:
                return None
            step = step.get(key)
        return step

    return {
        "deliveries_per_s": get(best, "deliveries_per_s"),
        "max_rate_msgs_per_s": get(best, "rate"),
        "p99_ms_at_max": get(best, "latency", "p99_ms"),
        "capped": bool(knee and knee.get("capped")),
        "light_p50_ms": get(light, "latency", "p50_ms"),
        "light_p99_ms": get(light, "latency", "p99_ms"),
        "cross_node_p50_ms": get(light, "cross_node", "p50_ms"),
        "cross_node_p99_ms": get(light, "cross_node", "p99_ms"),
        "steps": len(steps),
        "failed_steps": sum(1 for s in steps if not s["ok"]),
        "errors": sum(s["errors"] for s in steps),
        "error_samples": [e for s in steps for e in s["error_samples"]][:3],
        "generators_saturated": any(s["saturated"] for s in steps if s["ok"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.target", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("urls", nargs="+", help="the nodes' base URLs (http:// or https://)")
    ap.add_argument("--api-key", default=os.environ.get("ROOMSTATE_API_KEY"))
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--participants", type=int, default=10, help="per room")
    ap.add_argument("--payload", type=int, default=256, help="bytes of JSON per app message")
    ap.add_argument("--generators", type=int, default=2, help="load generator processes")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per step")
    ap.add_argument("--rates", help="comma-separated msgs/s: run these steps, no ramp")
    ap.add_argument("--start", type=float, help="first ramp rate, msgs/s (default: 500 at 10x10)")
    ap.add_argument("--max-steps", type=int, default=16, help="ramp steps at most")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for target.json/.md")
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

    started = time.monotonic()
    runner.QUIET.left = 30.0
    fanout = args.participants - 1
    sc = Scenario(
        f"target: {len(args.urls)} URL(s)", "external", participants=args.participants,
        rooms=args.rooms, payload=args.payload, generators=args.generators,
        urls=tuple(args.urls), api_key=args.api_key,
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-target-"))
    try:
        with ScenarioRun(sc, tmp) as run:
            light = max(10.0, LIGHT_RATE * 9 / fanout)
            run.run_step(light, precise=True, duration_s=args.seconds, tag="light")
            knee = None
            if rates:
                for rate in rates:
                    run.run_step(rate, duration_s=args.seconds, tag="fixed")
            else:
                start = args.start or 500.0 * 9 / fanout
                knee = run.ramp(start, RAMP_FACTOR, args.max_steps, duration_s=args.seconds)
            record = {"label": sc.label, "system": "external", "urls": list(args.urls),
                      "rooms": sc.rooms, "participants": sc.participants, "payload": sc.payload,
                      "kind": sc.kind,
                      "info": run.info, "steps": run.steps, "knee": knee,
                      "ramped": not rates}  # fmt: skip
    except (RuntimeError, TimeoutError) as exc:  # a join refused (a wrong key, ...), no node
        log(f"cannot benchmark {args.urls}: {exc}")
        sys.exit(2)
    results = {
        "mode": "target", "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.target " + " ".join(args.urls),
        "machine": {"cores": os.cpu_count(), "cpu": "(load generators only)", "python":
                    sys.version.split()[0], "versions": {}},
        "scenarios": [record], "duration_s": time.monotonic() - started,
        "quiet_waited_s": runner.QUIET.waited, "targets": [],
    }  # fmt: skip
    results["summary"] = summary(record)
    paths = report.write(results, args.out, "target")
    log(f"results: {paths}")
    import orjson

    print(orjson.dumps(results["summary"]).decode(), flush=True)


if __name__ == "__main__":
    main()
