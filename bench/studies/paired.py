"""The CPU ratios of issue 5's targets, with roomstate, the floor and the peer measured in turn.

    python -m bench paired [--rounds 3] [--seconds 3] [--knee MSGS_PER_S] [--peer-knee MSGS_PER_S]

A full run measures the floors first, then the peer, then roomstate, minutes apart. On a virtual
machine whose speed drifts, a ratio of two steps taken minutes apart carries that drift: the
99-receiver floor cost 4.46 µs per delivery at the reference load in one full run and 5.57 in the
next, on machines of the same kind. Here the three deployments are up at once (roomstate on 2
nodes + Redis and the python-socketio peer, each 10 rooms x 10; the bare aiohttp floor, 1 -> 99;
256 B), and each round measures, one after the other:

- the reference load, 9,000 deliveries/s: roomstate, the floor, the peer;
- roomstate at its knee (`--knee`, msgs/s), then the floor at the same deliveries/s;
- the peer at its own knee (`--peer-knee`).

A round gives the four CPU ratios of the targets: node CPU per delivery of roomstate against the
floor's and against the peer's, at the reference load and at capacity. Printed: every step, then
per ratio the median over the rounds in which neither of its two steps was disturbed (over all
rounds, and flagged, if none was quiet) and the range over those rounds. The knees default to
those of bench/results/full.json (the full run of record; a knee past this machine's capacity at
the moment still gives ratios, with p99 over the limit in its steps); `python -m bench full` runs
this after its topologies and the peer, with the knees it has just found. The last stdout line is
JSON. A step that reads no CPU at all (the kernel counts it in 10 ms ticks: a short step at a low
rate) gives its ratios no value for that round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.harness.common import dig
from bench.harness.report import RECORD, paired_tables
from bench.harness.runner import FLOOR_RECEIVERS, REF_RATE, Scenario, ScenarioRun

FANOUT = 9  # deliveries per app message in 10 rooms x 10
# (ratio, numerator's system and load, denominator's system and load)
RATIOS = (
    ("floor_ref", ("ours", "ref"), ("floor", "ref")),
    ("peer_ref", ("ours", "ref"), ("peer", "ref")),
    ("floor_knee", ("ours", "knee"), ("floor", "knee")),
    ("peer_knee", ("ours", "knee"), ("peer", "knee")),
)


def plan(
    knee: float, peer_knee: float, ref_rate: float, receivers: int
) -> list[tuple[str, str, float]]:
    """One round's steps: (system, load, msgs/s), the floor at the deliveries/s of the step
    before it."""
    return [
        ("ours", "ref", ref_rate),
        ("floor", "ref", ref_rate * FANOUT / receivers),
        ("peer", "ref", ref_rate),
        ("ours", "knee", knee),
        ("floor", "knee", knee * FANOUT / receivers),
        ("peer", "knee", peer_knee),
    ]


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ratio: each round's value, and the median, least and most over the rounds in which
    neither of its two steps was disturbed (over all of them, with "disturbed": true, if there is
    no such round)."""
    by_key = {(r["round"], r["system"], r["load"]): r for r in rows}
    out: dict[str, dict[str, Any]] = {}
    for name, top, bottom in RATIOS:
        per_round = []
        for i in sorted({r["round"] for r in rows}):
            a, b = by_key.get((i, *top)) or {}, by_key.get((i, *bottom)) or {}
            if not a.get("cpu_us_per_delivery") or not b.get("cpu_us_per_delivery"):
                continue  # a step not run, or one that measured nothing
            value = round(a["cpu_us_per_delivery"] / b["cpu_us_per_delivery"], 3)
            per_round.append({"round": i, "value": value,
                              "disturbed": a["disturbed"] or b["disturbed"]})  # fmt: skip
        quiet = [r for r in per_round if not r["disturbed"]]
        used = [r["value"] for r in (quiet or per_round)]
        summary: dict[str, Any] = {"rounds": per_round, "used": len(used)}
        if used:
            summary.update(median=round(statistics.median(used), 3), min=min(used), max=max(used))
        if per_round and not quiet:
            summary["disturbed"] = True
        out[name] = summary
    return out


def run(
    tmp: Path,
    knee: float,
    peer_knee: float,
    rounds: int,
    seconds: float,
    ref_rate: float,
    receivers: int,
) -> dict[str, Any]:
    """Measure `rounds` rounds (the three deployments stay up throughout); return every step as
    a row, the ratios, and the rates used."""
    scenarios = {
        "ours": Scenario("roomstate 2 nodes + Redis", "2-nodes-redis"),
        "floor": Scenario("python floor: aiohttp 1 -> 99", "python-floor",
                          participants=receivers, rooms=1),
        "peer": Scenario("peer: python-socketio 2 nodes + Redis", "peer"),
    }  # fmt: skip
    rows = []
    with contextlib.ExitStack() as stack:
        runs = {
            key: stack.enter_context(ScenarioRun(sc, tmp / key)) for key, sc in scenarios.items()
        }
        for i in range(1, rounds + 1):
            for system, load, rate in plan(knee, peer_knee, ref_rate, receivers):
                step = runs[system].run_step(rate, duration_s=seconds, tag=f"paired {load}")
                rows.append(
                    {
                        "round": i, "system": system, "load": load, "rate": round(rate, 1),
                        "deliveries_per_s": step["deliveries_per_s"],
                        "cpu_us_per_delivery": step["node_cpu_us_per_delivery"],
                        "p99_ms": dig(step, "latency", "p99_ms"),
                        "lost": step.get("lost"), "disturbed": bool(step.get("disturbed")),
                        "steal_cpu_pct": step.get("steal_cpu_pct"),
                    }
                )  # fmt: skip
    return {"knee_msgs_per_s": knee, "peer_knee_msgs_per_s": peer_knee,
            "ref_msgs_per_s": ref_rate, "seconds": seconds, "rows": rows,
            "ratios": ratios(rows)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench paired", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per step")
    ap.add_argument("--knee", type=float, help="roomstate's knee, msgs/s (10 rooms x 10)")
    ap.add_argument("--peer-knee", type=float, help="the peer's knee, msgs/s")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, not {args.rounds}")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        ap.error(f"--seconds must be a finite number above 0, not {args.seconds}")
    last: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        last = json.loads((RECORD / "full.json").read_text()).get("summary") or {}
    knee = args.knee if args.knee is not None else last.get("max_rate_msgs_per_s")
    peer_knee = (
        args.peer_knee if args.peer_knee is not None else last.get("peer_max_rate_msgs_per_s")
    )
    for name, value in (("--knee", knee), ("--peer-knee", peer_knee)):
        if value is None:
            ap.error(f"{name} is needed: bench/results/full.json has no knee to take it from")
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            ap.error(f"{name} must be a finite number of msgs/s above 0, not {value}")
    with tempfile.TemporaryDirectory(prefix="paired-") as tmp:
        result = run(Path(tmp), knee, peer_knee, args.rounds, args.seconds, REF_RATE,
                     FLOOR_RECEIVERS)  # fmt: skip
    print(f"knees: roomstate {knee:g} msgs/s, the peer {peer_knee:g} msgs/s")
    print(paired_tables(result))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
