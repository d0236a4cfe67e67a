"""Where an app message's time goes at light load, step by step through the processes.

    python -m bench hops [--system 2-nodes-redis] [--rate 100] [--seconds 6]

Runs 10 rooms x 10 (256 B) at one light, open-loop rate twice: as is, then with
`bench.studies.hop_probe` in every node (loaded through a ``sitecustomize`` on the nodes'
PYTHONPATH).
Prints, over the messages of the second run, the time from the generator's send to each step in
the node that took the message from its client (the sender's node) and in the other nodes (p50
and p90, µs), then the end-to-end latency of both runs: their difference is the probe's own cost.
Meant for light load: the probe tells messages apart only when a node handles one at a time.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.harness.common import percentile
from bench.harness.deploy import TOPOLOGIES
from bench.harness.runner import Scenario, ScenarioRun

SENDER_STEPS = (
    ("client frame read", "reads the client's frame"),
    ("request handled", "has parsed it (enters Node.handle)"),
    ("redis write done", "has written the EVALSHA"),
    ("redis reply read", "reads the EVALSHA reply"),
    ("redis push read", "reads its own push (skipped)"),
    ("client writes start", "starts writing to its clients"),
    ("client writes done", "has written to its clients"),
)
OTHER_STEPS = (
    ("redis push read", "reads the push"),
    ("client writes start", "starts writing to its clients"),
    ("client writes done", "has written to its clients"),
)


def read_marks(where: Path) -> list[list[tuple[str, int, int]]]:
    """Each node process's marks, in the order they were made."""
    processes = []
    for path in sorted(where.glob("hops-*.tsv")):
        marks = []
        for line in path.read_text().splitlines():
            step, key, t = line.split("\t")
            marks.append((step, int(key), int(t)))
        processes.append(marks)
    return processes


def hop_times(processes: list[list[tuple[str, int, int]]]) -> dict[str, dict[str, list[float]]]:
    """µs from each message's send to the first mark of each step that carries its key, in the
    sender's node ("sender") and in the others ("other"). A frame read carries no key: it is
    the last one before the message's `request handled`."""
    firsts: list[dict[int, dict[str, int]]] = []
    senders: dict[int, int] = {}
    overlapped = _overlapped(processes)
    for p, marks in enumerate(processes):
        seen: dict[int, dict[str, int]] = collections.defaultdict(dict)
        last_read = None
        for step, key, t in marks:
            if step == "client frame read":
                last_read = t
                continue
            if step == "request handled":
                senders[key] = p
                if last_read is not None:
                    seen[key]["client frame read"] = last_read
            seen[key].setdefault(step, t)
        firsts.append(seen)
    out: dict[str, dict[str, list[float]]] = {"sender": {}, "other": {}}
    for key, sender in senders.items():
        if key in overlapped:
            continue
        for p, seen in enumerate(firsts):
            role, steps = ("sender", SENDER_STEPS) if p == sender else ("other", OTHER_STEPS)
            for step, _ in steps:
                if step in seen.get(key, {}):
                    us = (seen[key][step] - key) / 1000
                    out[role].setdefault(step, []).append(us)
    return out


def _overlapped(processes: list[list[tuple[str, int, int]]]) -> set[int]:
    """Messages whose marks, in some process, come in two runs with another message's between:
    the node handled two at once, and which step was whose is not known."""
    found: set[int] = set()
    for marks in processes:
        done: set[int] = set()
        previous = None
        for _, key, _ in marks:
            if key != previous:
                if key in done:
                    found.add(key)
                    if previous is not None:
                        found.add(previous)
                if previous is not None:
                    done.add(previous)
                previous = key
    return found


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_us": round(percentile(values, 0.5), 1),
        "p90_us": round(percentile(values, 0.9), 1),
        "n": len(values),
    }


def report(
    times: dict[str, dict[str, list[float]]], plain: dict[str, Any], probed: dict[str, Any]
) -> str:
    lines = ["time from the generator's send, µs", f"{'where':58} {'p50':>8} {'p90':>8} {'n':>6}"]
    if not any(times.values()):
        lines.append("(no marks: the nodes wrote none, or did not exit cleanly)")
    for role, steps, name in (
        ("sender", SENDER_STEPS, "sender's node"),
        ("other", OTHER_STEPS, "other node"),
    ):
        for step, text in steps:
            values = times[role].get(step)
            if values:
                lines.append(f"{name + ' ' + text:58} {percentile(values, 0.5):8.1f} "
                             f"{percentile(values, 0.9):8.1f} {len(values):6d}")  # fmt: skip
    for label, step in (("without the probe", plain), ("with the probe", probed)):
        latency, cross = step["latency"], step.get("cross_node") or {}
        lines.append(f"end to end {label}: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} "
                     f"ms; cross-node p50 {cross.get('p50_ms')} ms")  # fmt: skip
    return "\n".join(lines)


def measure(
    tmp: Path, system: str = "2-nodes-redis", rate: float = 100.0, seconds: float = 6.0
) -> dict[str, Any]:
    """Both runs; the p50/p90 of each step (µs from the send) and the printed report."""
    hooks, out = tmp / "hooks", tmp / "marks"
    hooks.mkdir(parents=True)
    out.mkdir()
    (hooks / "sitecustomize.py").write_text("import bench.studies.hop_probe  # noqa: F401\n")
    with ScenarioRun(Scenario("hops: as is", system), tmp / "plain") as run:
        plain = run.run_step(rate, precise=True, duration_s=seconds, tag="light")
    env = {"PYTHONPATH": str(hooks), "ROOMSTATE_BENCH_HOPS": str(out)}
    with ScenarioRun(Scenario("hops: with the probe", system, env=env), tmp / "probe") as run:
        probed = run.run_step(rate, precise=True, duration_s=seconds, tag="light")
    # the nodes have stopped: each wrote its marks as it exited
    times = hop_times(read_marks(out))
    steps = {
        role: {step: _summary(values) for step, values in by_step.items()}
        for role, by_step in times.items()
    }
    return {
        "system": system, "rate": rate, "steps": steps,
        "as_is": {"latency": plain["latency"], "cross_node": plain.get("cross_node")},
        "with_probe": {"latency": probed["latency"], "cross_node": probed.get("cross_node")},
        "report": report(times, plain, probed),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench hops", description=__doc__)
    ap.add_argument("--system", default="2-nodes-redis", choices=sorted(TOPOLOGIES))
    ap.add_argument("--rate", type=float, default=100.0, help="msgs/s (light: at most 200)")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-hops-"))
    try:
        print(measure(tmp, args.system, args.rate, args.seconds)["report"], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
