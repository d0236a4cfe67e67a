"""The two documented runs: `quick` (under 3 minutes) and `full` (the matrix, ~20-25 minutes).

    .venv/bin/python -m bench quick
    .venv/bin/python -m bench full [--only PART,...]

Both write bench/out/{quick,full}.json, .md and .png (git ignores bench/out/; the run of record
is copied into bench/results/ by `python -m bench.harness.record`); the last stdout line is one
JSON object (the summary). The systems: roomstate's topologies (bench/harness/deploy.py), the
peers (bench/harness/peers.py: python-socketio, and Node.js Socket.IO with its Redis Streams and
its pub/sub adapter) and the floors (bench/systems/).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import report, runner
from bench.harness.common import dig
from bench.harness.machine import machine
from bench.harness.report import COLD_TAG, OUT, WARM_UP_TAG
from bench.harness.runner import (
    FLOOR_RECEIVERS,
    LIGHT_RATE,
    RAMP_STEPS,
    REF_RATE,
    Scenario,
    ScenarioRun,
    log,
    run_redis_floor,
)
from bench.harness.webinar_report import write as write_webinar
from bench.studies import hops, paired, wake_cost, webinar
from bench.summary import (
    BASE,
    FLOOR_AT_KNEE_LABEL,
    FLOOR_LABEL,
    NODE_PEER_LABELS,
    PEER_KNEE_TAG,
    PEER_LABEL,
    PICOWS_ROOMS_FLOOR_LABEL,
    ROOMS_FLOOR_AT_KNEE_LABEL,
    ROOMS_FLOOR_LABEL,
    TOPOLOGY_LABELS,
    rooms_target,
    summarize,
    tagged_step,
)

PAIRED_ROUNDS = 3  # rounds of the CPU ratios measured in turn (full run)
WAKE_MESSAGES = 300  # ping-pongs per rate for the machine's wake-up cost (3.3 s in all)
# The Node peers: which adapters, and their warm-up ramps (× the reference load). The quick run
# has one adapter, one warm-up step, no light step and a ramp from the reference load (not half
# of it: three steps fewer, on a grid of rates 1.3^2.6 apart from the others'), to stay within
# its time budget.
QUICK_NODE_ADAPTERS, QUICK_WARM_UP = ("streams",), (4.0,)
FULL_NODE_ADAPTERS, FULL_WARM_UP = ("streams", "pubsub"), (2.0, 4.0, 8.0)


def _machine_wake() -> list[dict[str, Any]]:
    """One loopback hop between two sleeping processes on this machine, at the light and the
    reference rate (`bench.studies.wake_cost`, TCP): what light-load latency is made of. It differs
    between machines of one kind and between moments of one machine (docs/performance.md), so
    every run reports it beside its latencies. Run first, before any child process or thread."""
    log("== the machine's wake-up cost")
    return [wake_cost.measure("tcp", rate, WAKE_MESSAGES) for rate in (LIGHT_RATE, REF_RATE)]


def _scenario_record(run: ScenarioRun, knee: dict[str, Any] | None, ramped: bool) -> dict[str, Any]:
    sc = run.sc
    return {
        "label": sc.label, "system": sc.system, "participants": sc.participants,
        "rooms": sc.rooms, "payload": sc.payload, "kind": sc.kind, "env": sc.env,
        "setup_s": round(run.setup_s, 1), "info": run.info, "steps": run.steps,
        "knee": knee, "ramped": ramped,
    }  # fmt: skip


def _light_and_ramp(
    sc: Scenario,
    tmp: Path,
    ref: float | None,
    factor: float,
    max_steps: int,
    duration: float,
    light: bool = True,
    after: tuple[tuple[float, str], ...] = (),
    warm_up: tuple[float, ...] = (),
    ramp_from: float = 0.5,
) -> dict[str, Any]:
    """A light-load step (precise timing), a step at the reference load `ref` (msgs/s), a
    ramp from `ramp_from` × it, then a step at each (rate, tag) of `after`; first, with
    `warm_up`, a cold step and a warm-up ramp at those multiples of `ref` (`_warm_up`)."""
    fanout = sc.participants - 1
    ref = ref or REF_RATE * 9 / fanout  # the same deliveries/s as 10 x 10 at REF_RATE
    with ScenarioRun(sc, tmp) as run:
        if warm_up:
            _warm_up(run, ref, warm_up, duration)
        if light:
            rate = max(10.0, LIGHT_RATE * 9 / fanout)
            _measured_step(run, rate, "light", precise=True, duration_s=duration)
        _measured_step(run, round(ref), "ref", settle=True, duration_s=duration)
        run.settle()
        knee = run.ramp(round(ref * ramp_from), factor, max_steps, refine=1, duration_s=duration)
        for rate, tag in after:
            run.settle()
            _measured_step(run, rate, tag, settle=True, duration_s=duration)
        return _scenario_record(run, knee, ramped=True)


def _warm_up(run: ScenarioRun, ref: float, factors: tuple[float, ...], duration: float) -> None:
    """A fresh Node.js process runs a handler in V8's interpreter until it is hot enough to be
    compiled, and grows its heap in its first seconds of load: it costs more per delivery than
    the same process warm, as a user's server runs. So a Node peer's first step, at the
    reference load on fresh processes, is kept as its cold cost (tagged `COLD_TAG`), then a
    warm-up ramp (`factors` × the reference load, up to the first failed step) runs
    before the measured steps, which are all warm. Its steps are tagged `WARM_UP_TAG`."""
    run.run_step(round(ref), tag=COLD_TAG, duration_s=duration)
    for factor in factors:
        run.settle()
        if not run.run_step(round(ref * factor), tag=WARM_UP_TAG, duration_s=duration)["ok"]:
            break
    run.settle()


def _node_peers(
    results: dict[str, Any],
    tmp: Path,
    adapters: tuple[str, ...],
    warm_up: tuple[float, ...],
    duration: float,
    quick: bool = False,
) -> None:
    """The Node.js Socket.IO peer with each Redis adapter of `adapters`, measured warm (`quick`:
    no light step, the ramp from the reference load)."""
    for adapter in adapters:
        system = f"node-peer-{adapter}"
        log(f"== {NODE_PEER_LABELS[system]}")
        sc = Scenario(NODE_PEER_LABELS[system], system)
        rec = _light_and_ramp(
            sc, tmp / system, REF_RATE, 1.3, RAMP_STEPS, duration, light=not quick,
            warm_up=warm_up, ramp_from=1.0 if quick else 0.5,
        )  # fmt: skip
        results["scenarios"].append(rec)


def _measured_step(
    run: ScenarioRun, rate: float, tag: str, settle: bool = False, **step_args: Any
) -> None:
    """A step, run once more if other processes took the CPU during it (the first is kept,
    tagged "(disturbed)"); `settle`: wait for the nodes to be idle before the second."""
    s = run.run_step(rate, tag=tag, **step_args)
    if s["disturbed"]:
        s["tag"] = f"{tag} (disturbed)"
        if settle:
            run.settle()
        run.run_step(rate, tag=tag, **step_args)


def _at_peer_knee(results: dict[str, Any]) -> tuple[tuple[float, str], ...]:
    """A step for ours at the peer's knee rate, if the peer was measured: CPU per delivery
    falls with load, so "each at its own knee" compares loads several times apart; this is
    the same ratio at the same load."""
    peer = next((sc for sc in results["scenarios"] if sc["label"] == PEER_LABEL), None)
    rate = dig(peer, "knee", "rate")
    return ((rate, PEER_KNEE_TAG),) if rate else ()


def _fixed(
    sc: Scenario, tmp: Path, rates: list[tuple[float, str]], duration: float
) -> dict[str, Any]:
    with ScenarioRun(sc, tmp) as run:
        for rate, tag in rates:
            _measured_step(run, rate, tag, duration_s=duration, precise=rate <= 200)
        return _scenario_record(run, None, ramped=False)


ROOMS_ROUNDS = 3  # 1,000-room and 10-room steps, in turn


def _rooms_in_turn(tmp: Path, duration: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """1,000 rooms × 10 and 10 rooms × 10, both deployments up at once, a step at the reference
    load on each in turn, `ROOMS_ROUNDS` times: the ratio of two steps taken minutes apart
    carries the machine's drift (the full run of 2026-11-29 09:06 had the 10-room step 18 %
    under a quick run of the same hour), so the 10-room figure is measured again beside the
    1,000-room one. Connecting 10,000 clients grows each node's heap enough that a full garbage
    collection may fall in the first steps; the median is the steady state, all are reported."""
    big = Scenario("roomstate 2 nodes, 1000 rooms x 10", BASE, participants=10, rooms=1000)
    small = Scenario("roomstate 2 nodes, 10 rooms x 10, in turn with 1,000", BASE)
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(ScenarioRun(sc, tmp / key))
                for key, sc in (("big", big), ("small", small))]  # fmt: skip
        for _ in range(ROOMS_ROUNDS):
            for run in runs:
                _measured_step(run, REF_RATE, "ref", settle=True, duration_s=duration)
        big_rec, small_rec = (_scenario_record(run, None, ramped=False) for run in runs)
    small_rec["beside"] = big.label  # not a system of its own in the plots
    return big_rec, small_rec


def _rooms_floor(
    where: Path,
    duration: float,
    picows: bool = False,
    rates: tuple[tuple[float, str], ...] = ((LIGHT_RATE, "light"), (REF_RATE, "ref")),
    label: str | None = None,
) -> dict[str, Any]:
    """The bare aiohttp server in the shape of ours (or the same on picows, a callback-based
    server in Cython), at light load and the reference load unless `rates` says otherwise."""
    label = label or (PICOWS_ROOMS_FLOOR_LABEL if picows else ROOMS_FLOOR_LABEL)
    log(f"== {label}")
    system = "python-floor-rooms-picows" if picows else "python-floor-rooms"
    sc = Scenario(label, system, participants=10, rooms=10)
    return _fixed(sc, where, list(rates), duration)


def _floors_at_knee(results: dict[str, Any], tmp: Path, duration: float) -> None:
    """Both Python floors at the deliveries/s of our base system's knee: CPU per delivery falls
    with load (more messages per wake-up, per read, per write to Redis), so the comparison at
    capacity needs the floors at the same deliveries/s, not only at the reference load."""
    ours = next((sc for sc in results["scenarios"] if sc["label"] == TOPOLOGY_LABELS[BASE]), None)
    knee = ours["knee"] if ours else None
    if not knee:
        return
    per_s = knee["deliveries_per_s"]
    log(f"== Python floors at our knee's {per_s} deliveries/s")
    floor = Scenario(FLOOR_AT_KNEE_LABEL, "python-floor", participants=FLOOR_RECEIVERS, rooms=1)
    rate = per_s / FLOOR_RECEIVERS
    results["scenarios"].append(_fixed(floor, tmp / "floor-knee", [(rate, "knee load")], duration))
    results["scenarios"].append(
        _rooms_floor(tmp / "rooms-floor-knee", duration, rates=((per_s / 9, "knee load"),),
                     label=ROOMS_FLOOR_AT_KNEE_LABEL)
    )  # fmt: skip


def _paired(results: dict[str, Any], tmp: Path, duration: float) -> None:
    """The four CPU ratios again, with ours, the floor and the peer measured in turn in the same
    minutes (`bench.studies.paired`), at the knees just found: a ratio of steps taken minutes apart
    carries the machine's drift between them."""
    by_label = {sc["label"]: sc for sc in results["scenarios"]}
    ours, peer = by_label.get(TOPOLOGY_LABELS[BASE]), by_label.get(PEER_LABEL)
    knee, peer_knee = dig(ours, "knee", "rate"), dig(peer, "knee", "rate")
    if not knee or not peer_knee:
        return
    log(f"== CPU ratios measured in turn (bench.studies.paired; knees {knee:g}, {peer_knee:g})")
    results["paired"] = paired.run(
        tmp / "paired", knee, peer_knee, PAIRED_ROUNDS, duration, REF_RATE, FLOOR_RECEIVERS
    )


def _finish(results: dict[str, Any], started: float, stem: str) -> dict[str, Any]:
    results["duration_s"] = time.monotonic() - started
    results["quiet_waited_s"] = runner.QUIET.waited
    summary, targets = summarize(results)
    results["summary"], results["targets"] = summary, targets
    paths = report.write(results, OUT, stem)
    log(f"results: {paths}")
    return summary


def quick(tmp: Path) -> dict[str, Any]:
    started = time.monotonic()
    runner.QUIET.left = 25.0
    results: dict[str, Any] = {
        "mode": "quick", "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench quick", "machine": machine(), "scenarios": [],
    }  # fmt: skip
    results["machine_wake"] = _machine_wake()
    log("== Redis floor")
    results["redis_floor"] = run_redis_floor(tmp / "redis-floor", 1000, 2.0)
    log("== Python floor")
    floor = Scenario(FLOOR_LABEL, "python-floor", participants=FLOOR_RECEIVERS, rooms=1)
    ref_floor = REF_RATE * 9 / FLOOR_RECEIVERS
    results["scenarios"].append(_fixed(floor, tmp / "floor", [(ref_floor, "ref")], 2.0))
    results["scenarios"].append(_rooms_floor(tmp / "rooms-floor", 2.0))
    log("== peer")
    results["scenarios"].append(
        _light_and_ramp(Scenario(PEER_LABEL, "peer"), tmp / "peer", REF_RATE, 1.3, RAMP_STEPS, 2.0)
    )
    _node_peers(results, tmp, QUICK_NODE_ADAPTERS, QUICK_WARM_UP, 2.0, quick=True)
    log("== roomstate")
    results["scenarios"].append(
        _light_and_ramp(
            Scenario(TOPOLOGY_LABELS[BASE], BASE), tmp / "ours", REF_RATE, 1.3, RAMP_STEPS, 2.0,
            after=_at_peer_knee(results),
        )
    )  # fmt: skip
    _floors_at_knee(results, tmp, 2.0)
    return _finish(results, started, "quick")


def full(tmp: Path, only: set[str] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    runner.QUIET.left = 150.0
    results: dict[str, Any] = {
        "mode": "full", "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench full" + (f" --only {','.join(sorted(only))}" if only else ""),
        "machine": machine(), "scenarios": [],
    }  # fmt: skip
    results["machine_wake"] = _machine_wake()
    extra: list[dict[str, Any]] = []
    results["targets_extra"] = extra
    d = 3.0  # measured seconds per step

    def want(part: str) -> bool:
        return only is None or part in only

    if want("floors"):
        log("== Redis floor")
        results["redis_floor"] = run_redis_floor(tmp / "redis-floor", 1000, 4.0)
        log("== Python floor")
        ref_floor = REF_RATE * 9 / FLOOR_RECEIVERS
        results["scenarios"].append(
            _fixed(
                Scenario(FLOOR_LABEL, "python-floor", participants=FLOOR_RECEIVERS, rooms=1),
                tmp / "floor", [(ref_floor, "ref"), (4 * ref_floor, "4x ref")], d,
            )
        )  # fmt: skip
        results["scenarios"].append(_rooms_floor(tmp / "rooms-floor", d))
        results["scenarios"].append(_rooms_floor(tmp / "rooms-floor-picows", d, picows=True))
        for payload in (64, 1024, 4096):
            results["scenarios"].append(
                _fixed(
                    Scenario(f"{FLOOR_LABEL}, {payload} B", "python-floor",
                             participants=FLOOR_RECEIVERS, rooms=1, payload=payload),
                    tmp / "floor", [(ref_floor, "ref")], d,
                )
            )  # fmt: skip
    if want("peer"):
        log("== peer")
        results["scenarios"].append(
            _light_and_ramp(
                Scenario(PEER_LABEL, "peer"), tmp / "peer", REF_RATE, 1.3, RAMP_STEPS, d
            )
        )
    if want("node-peers"):
        _node_peers(results, tmp, FULL_NODE_ADAPTERS, FULL_WARM_UP, d)
    if want("topologies"):
        for topo, label in TOPOLOGY_LABELS.items():
            log(f"== {label}")
            after = _at_peer_knee(results) if topo == BASE else ()
            results["scenarios"].append(
                _light_and_ramp(
                    Scenario(label, topo), tmp / topo, REF_RATE, 1.3, RAMP_STEPS, d, after=after
                )
            )
        _floors_at_knee(results, tmp, d)
        if want("peer"):
            _paired(results, tmp, d)
    if want("participants"):
        for p in (2, 50, 200):
            log(f"== participants {p}")
            sc = Scenario(f"roomstate 2 nodes, 10 rooms x {p}", BASE, participants=p, rooms=10)
            results["scenarios"].append(
                _light_and_ramp(sc, tmp / f"p{p}", None, 1.3, RAMP_STEPS, d, light=p == 2)
            )
    if want("rooms"):
        per_delivery: dict[int, float | None] = {}
        for rooms in (1, 100):
            log(f"== rooms {rooms}")
            sc = Scenario(
                f"roomstate 2 nodes, {rooms} rooms x 10", BASE, participants=10, rooms=rooms
            )
            rec = _light_and_ramp(sc, tmp / f"r{rooms}", REF_RATE, 1.3, RAMP_STEPS, d, light=False)
            per_delivery[rooms] = (tagged_step(rec, "ref") or {}).get("node_cpu_us_per_delivery")
            results["scenarios"].append(rec)
        log("== rooms 1000, in turn with 10")
        big, small = _rooms_in_turn(tmp / "r1000", d)
        results["scenarios"] += [big, small]
        base = next(
            (sc for sc in results["scenarios"] if sc["label"] == TOPOLOGY_LABELS[BASE]), None
        )
        earlier = (tagged_step(base, "ref") or {}).get("node_cpu_us_per_delivery")
        target = rooms_target(big["steps"], small["steps"], earlier)
        per_delivery[1000], per_delivery[10] = target.pop("big"), target.pop("small")
        extra.append(target)
        results["rooms_cpu_per_delivery"] = per_delivery
    if want("payloads"):
        for payload in (64, 1024, 4096):
            log(f"== payload {payload}")
            sc = Scenario(f"roomstate 2 nodes, 10 x 10, {payload} B", BASE, payload=payload)
            results["scenarios"].append(
                _light_and_ramp(sc, tmp / f"b{payload}", REF_RATE, 1.3, RAMP_STEPS, d, light=False)
            )
    if want("bystander"):
        log("== bystander node")
        sc = Scenario("roomstate 3 nodes, rooms on 2 (bystander)", "3-nodes-redis",
                      active_nodes=2, idle_rooms=5)  # fmt: skip
        rec = _fixed(
            sc,
            tmp / "bystander",
            [(10, "idle-ish"), (REF_RATE, "ref"), (2 * REF_RATE, "2x ref")],
            d,
        )
        results["scenarios"].append(rec)
        by = {s["tag"]: s["cpu_pct"]["nodes"][2] for s in rec["steps"]}
        results["bystander"] = {"bystander_node_cpu_pct_by_step": by}
        growth = by.get("2x ref", 0) - by.get("idle-ish", 0)
        extra.append(
            {
                "target": "bystander node CPU growth, % of a core (10 → 2,000 msgs/s elsewhere)",
                "measured": round(growth, 1),
                "limit": 1.0,
            }
        )
    if want("propagation"):
        prop: dict[str, Any] = {}
        for kind, rate in (("userdata", 200.0), ("session", 50.0)):
            off = {
                "ROOMSTATE_USER_DATA_INTERVAL_MS": "0",
                "ROOMSTATE_SESSION_DATA_INTERVAL_MS": "0",
            }
            for batching, env in (("default", {}), ("off", off)):
                log(f"== propagation {kind}, batching {batching}")
                sc = Scenario(
                    f"roomstate 2 nodes, {kind} batching {batching}", BASE, kind=kind, env=env
                )
                rec = _fixed(sc, tmp / f"{kind}-{batching}", [(rate, "propagation")], d)
                results["scenarios"].append(rec)
                s = rec["steps"][0]
                prop[f"{kind}/{batching}"] = {
                    "writes_per_s": rate, "writes_per_room_per_s": rate / 10,
                    "writes": s["sent"], "updates_received": s["updates_received"],
                    "receivers_converged": f"{s['unique']}/{s['expected']}",
                    "latency": s["latency"], "cross_node": s["cross_node"],
                }  # fmt: skip
        results["propagation"] = prop
    if want("memory"):
        log("== idle memory, 5,000 connections")
        mem = runner.idle_memory(tmp / "memory", "1-node-redis", 5000)
        results["memory"] = mem
        extra.append(
            {
                "target": "node memory per idle connection at 5,000 connections, KB",
                "measured": mem["kb_per_connection"],
                "limit": 30.0,
            }
        )
    if want("hops"):
        log("== light load, hop by hop (bench.studies.hops)")
        results["hops"] = hops.measure(tmp / "hops", BASE, LIGHT_RATE)
    if want("webinar"):
        log("== large rooms (bench.studies.webinar)")
        large = webinar.measure(tmp / "webinar")
        large["command"] = results["command"]
        # its own files beside the run's (phases, not rate steps); the summary goes in the run's
        results["webinar"], _ = write_webinar(large, OUT, "full-webinar")
    stem = "full" if only is None else "full-" + "-".join(sorted(only))
    return _finish(results, started, stem)


def main(mode: str, only: set[str] | None = None) -> None:
    import orjson

    tmp = Path(tempfile.mkdtemp(prefix="roomstate-bench-"))
    try:
        summary = quick(tmp) if mode == "quick" else full(tmp, only)
    finally:
        if os.environ.get("BENCH_KEEP_LOGS") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"logs kept in {tmp}")
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    sys.stdout.flush()
