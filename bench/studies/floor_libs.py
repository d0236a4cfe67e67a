"""What another WebSocket path could save the node: the bare server in roomstate's shape three ways.

    python -m bench floor_libs [--rounds 3] [--seconds 3]

One process, 10 rooms x 10, 256 B app-message-sized frames, every member sending and receiving,
no protocol (bench/ws_floor.py). Each round runs the three servers one after the other, each at
light load (100 msgs/s, precise timing), at the reference load (1,000 msgs/s) and near capacity
(13,000 msgs/s, 117,000 deliveries/s: about roomstate's knee on 2 nodes + Redis here, where the
bare aiohttp server saturates a core; what counts there is CPU per delivery, not latency):

- ``aiohttp``: ``await ws.send_frame(...)`` to each other member (the rooms floor of the quick
  and full runs);
- ``aiohttp, direct writes``: aiohttp receives the same way, and sends in the style of
  roomstate's node (node/server/connection.py): the frame is built once, header included, and
  the same bytes are written to each member's transport;
- ``picows``: callbacks and Cython framing for both directions.

The node already sends the second way, so what it could gain by moving its client side to picows
is about the difference between the last two rows: picows's cheaper receive path (picows also
frames each message for every receiver, which a node on it need not do). The order of the three
is the same in every round. Prints a row per step and the median over the rounds of each server
and load (of the undisturbed rounds; of all, flagged, if every round was disturbed); the last
stdout line is JSON.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.harness.common import dig
from bench.harness.runner import Scenario, ScenarioRun

SYSTEMS = (
    ("python-floor-rooms", "aiohttp"),
    ("python-floor-rooms-direct", "aiohttp, direct writes"),
    ("python-floor-rooms-picows", "picows"),
)
LOADS = ((100.0, "light"), (1000.0, "ref"), (13000.0, "high"))
FIELDS = (
    ("p50_ms", ("latency", "p50_ms")),
    ("p99_ms", ("latency", "p99_ms")),
    ("cpu_us_per_delivery", ("node_cpu_us_per_delivery",)),
)


def row(name: str, load: str, step: dict[str, Any], deployment: str = "") -> dict[str, Any]:
    """The figures of one step that this tool compares (`deployment`: the server started)."""
    out: dict[str, Any] = {"server": name, "load": load, "deployment": deployment}
    for key, path in FIELDS:
        out[key] = dig(step, *path)
    for key in ("expected", "unique", "lost", "dups"):
        out[key] = step.get(key)
    out["disturbed"] = bool(step.get("disturbed"))
    return out


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per server and load, the median of each figure over the undisturbed rounds (over all of
    them if every round was disturbed), and how many rounds it is of."""
    out = []
    for _, name in SYSTEMS:
        for _, load in LOADS:
            mine = [r for r in rows if r["server"] == name and r["load"] == load]
            quiet = [r for r in mine if not r["disturbed"]]
            used = quiet or mine
            if not used:
                continue
            summary: dict[str, Any] = {"server": name, "load": load, "rounds": len(used)}
            if not quiet:
                summary["disturbed"] = True
            for key, _ in FIELDS:
                values = [r[key] for r in used if r[key] is not None]
                summary[key] = round(statistics.median(values), 3) if values else None
            out.append(summary)
    return out


def table(rows: list[dict[str, Any]], first: str) -> str:
    head = [first, "server", "load", "p50 ms", "p99 ms", "node CPU µs/delivery"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.get("round", r.get("rounds")), r["server"], r["load"]]
        cells += [r["p50_ms"], r["p99_ms"], r["cpu_us_per_delivery"]]
        flag = " (disturbed)" if r.get("disturbed") else ""
        lines.append("| " + " | ".join(str(c) for c in cells) + flag + " |")
    return "\n".join(lines)


def measure(tmp: Path, rounds: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for i in range(1, rounds + 1):
        for system, name in SYSTEMS:
            sc = Scenario(name, system, participants=10, rooms=10)
            with ScenarioRun(sc, tmp / f"{system}-{i}") as run:
                for rate, load in LOADS:
                    step = run.run_step(rate, duration_s=seconds, tag=load, precise=rate <= 200)
                    assert run.dep is not None
                    rows.append({"round": i, **row(name, load, step, run.dep.name)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench floor_libs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per step")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, not {args.rounds}")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        ap.error(f"--seconds must be a finite number above 0, not {args.seconds}")
    with tempfile.TemporaryDirectory(prefix="floor-libs-") as tmp:
        rows = measure(Path(tmp), args.rounds, args.seconds)
    summary = medians(rows)
    print(table(rows, "round"))
    print()
    print(table(summary, "rounds"))
    print(orjson.dumps({"rows": rows, "medians": summary}).decode())


if __name__ == "__main__":
    main()
