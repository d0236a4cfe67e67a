"""What a quick or full run concludes: the systems' labels, the summary of a run's results and
its targets (issue 5's, read as docs/decisions/0006-cpu-targets-at-capacity.md says).

Pure functions of the results dictionary that `bench.suite` builds; nothing here starts a process,
so the report can be written again from a run's JSON (`bench.harness.record`).
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.harness.common import dig
from bench.harness.report import COLD_TAG
from bench.harness.runner import LIGHT_RATE, REF_RATE

BASE = "2-nodes-redis"
TOPOLOGY_LABELS = {
    "1-node-memory": "roomstate 1 node in-memory",
    "1-node-redis": "roomstate 1 node + Redis",
    "2-nodes-redis": "roomstate 2 nodes + Redis",
    "3-nodes-redis": "roomstate 3 nodes + Redis",
    "3-nodes-cluster": "roomstate 3 nodes + Redis Cluster",
}
PEER_LABEL = "peer: python-socketio 2 nodes + Redis"  # the peer of issue 5's targets
# The peer most users would pick: Node.js Socket.IO 4.8, 2 processes sharing rooms through one
# Redis, with each of its two Redis adapters (bench/systems/node_peer/server.js)
NODE_PEER_LABELS = {
    "node-peer-streams": "peer: Node.js Socket.IO 2 nodes + Redis Streams adapter",
    "node-peer-pubsub": "peer: Node.js Socket.IO 2 nodes + Redis pub/sub adapter",
}
PEER_KNEE_TAG = "peer knee load"  # ours at the peer's knee rate
FLOOR_LABEL = "python floor: aiohttp 1 -> 99"
# The same shape as ours (10 rooms x 10, every member sends to its room's 9 others) on one bare
# aiohttp process: what a WebSocket server pays per message at a fan-out of 9, with no protocol,
# no store and no second node. Context for the floor ratio and the light-load latency.
ROOMS_FLOOR_LABEL = "python floor: aiohttp, 10 rooms x 10, 1 process"
FLOOR_AT_KNEE_LABEL = f"{FLOOR_LABEL}, at our knee's load"
ROOMS_FLOOR_AT_KNEE_LABEL = f"{ROOMS_FLOOR_LABEL}, at our knee's load"
PICOWS_ROOMS_FLOOR_LABEL = "python floor: picows, 10 rooms x 10, 1 process"


def tagged_step(rec: dict[str, Any] | None, tag: str) -> dict[str, Any] | None:
    """The first step of a scenario's record with `tag` among its comma-separated tags."""
    if rec is None:
        return None
    return next((s for s in rec["steps"] if tag in (s.get("tag") or "").split(",")), None)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 3 decimals, None without both."""
    return round(a / b, 3) if a is not None and b else None


def rooms_target(
    big: list[dict[str, Any]], small: list[dict[str, Any]], earlier: float | None
) -> dict[str, Any]:
    """The 1,000-room row: the median CPU per delivery of the 1,000-room steps against that of
    the 10-room steps measured in turn with them (steps tagged "ref": a disturbed step's rerun
    replaces it; a rerun disturbed too is left out, as `bench.studies.paired` leaves out disturbed
    rounds, unless every step of its side was); `earlier`: the 10-room reference step of the
    topologies, for the note. The row carries the two medians as "big" and "small" (the caller
    takes them out)."""

    def measured(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            s for s in steps if s.get("tag") == "ref" and s["node_cpu_us_per_delivery"] is not None
        ]

    def used(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calm = [s for s in measured(steps) if not s.get("disturbed")]
        return calm or measured(steps)

    def median(steps: list[dict[str, Any]]) -> float | None:
        costs = [s["node_cpu_us_per_delivery"] for s in used(steps)]
        return round(statistics.median(costs), 2) if costs else None

    def listed(steps: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{s['node_cpu_us_per_delivery']} µs (p99 {dig(s, 'latency', 'p99_ms')} ms, GC "
            f"{s.get('gc_pause_ms')} ms{', disturbed' if s.get('disturbed') else ''})"
            for s in measured(steps)
        )

    m_big, m_small = median(big), median(small)
    note = (
        f"medians of {len(used(big))} and {len(used(small))} undisturbed steps, in turn: "
        f"1,000 rooms {listed(big)}; 10 rooms {listed(small)}"
    )
    if any(all(s.get("disturbed") for s in measured(side)) for side in (big, small)):
        note = "every step of one side was disturbed; " + note.replace(" undisturbed", "")
    if earlier is not None:
        note += (
            f"; against the 10-room step of the topologies, minutes earlier ({earlier} µs): "
            f"{ratio(m_big, earlier)}"
        )
    bad = [s for s in measured(big + small) if s.get("errors") or s.get("lost")]
    if bad:  # then its CPU/delivery is not comparable
        note = f"inconclusive: {len(bad)} of the steps had errors or lost deliveries; " + note
    return {
        "target": "node CPU/delivery at 1,000 rooms ≤ 1.3× at 10 rooms (same load)",
        "measured": ratio(m_big, m_small), "limit": 1.3, "note": note,
        "big": m_big, "small": m_small,
    }  # fmt: skip


def summarize(results: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    by_label = {sc["label"]: sc for sc in results["scenarios"]}
    ours, peer, floor = (
        by_label.get(TOPOLOGY_LABELS[BASE]),
        by_label.get(PEER_LABEL),
        by_label.get(FLOOR_LABEL),
    )
    ours_ref, peer_ref = tagged_step(ours, "ref"), tagged_step(peer, "ref")
    floor_ref = tagged_step(floor, "ref")
    floor_knee = tagged_step(by_label.get(FLOOR_AT_KNEE_LABEL), "knee load")
    rooms_floor_knee = tagged_step(by_label.get(ROOMS_FLOOR_AT_KNEE_LABEL), "knee load")
    rooms_floor = by_label.get(ROOMS_FLOOR_LABEL)
    rooms_floor_ref = tagged_step(rooms_floor, "ref")
    rooms_floor_light = tagged_step(rooms_floor, "light")
    light = tagged_step(ours, "light")
    ours_at_peer_knee = tagged_step(ours, PEER_KNEE_TAG)
    ours_knee = ours["knee"] if ours else None
    peer_knee = peer["knee"] if peer else None
    rf = results.get("redis_floor") or {}
    wake = {w["rate"]: w for w in results.get("machine_wake") or ()}

    evalsha = dig(ours_knee, "redis_calls_per_message", "evalsha")
    paired_ratios = dig(results.get("paired"), "ratios")
    every_step = [s for sc in results["scenarios"] for s in sc["steps"]]
    every_step += dig(results.get("paired"), "rows") or []  # the steps measured in turn
    summary = {
        "deliveries_per_s": dig(ours_knee, "deliveries_per_s"),
        "peer_deliveries_per_s": dig(peer_knee, "deliveries_per_s"),
        "node_cpu_us_per_delivery": dig(ours_ref, "node_cpu_us_per_delivery"),
        "peer_node_cpu_us_per_delivery": dig(peer_ref, "node_cpu_us_per_delivery"),
        "floor_cpu_us_per_delivery": dig(floor_ref, "node_cpu_us_per_delivery"),
        "rooms_floor_cpu_us_per_delivery": dig(rooms_floor_ref, "node_cpu_us_per_delivery"),
        "rooms_floor_light_p50_ms": dig(rooms_floor_light, "latency", "p50_ms"),
        "rooms_floor_light_p99_ms": dig(rooms_floor_light, "latency", "p99_ms"),
        "cross_node_p50_ms": dig(light, "cross_node", "p50_ms"),
        "cross_node_p99_ms": dig(light, "cross_node", "p99_ms"),
        "same_node_p50_ms": dig(light, "same_node", "p50_ms"),
        "redis_floor_p50_ms": dig(rf, "from_send", "p50_ms"),
        "redis_floor_p99_ms": dig(rf, "from_send", "p99_ms"),
        "peer_cross_node_p50_ms": dig(tagged_step(peer, "light"), "cross_node", "p50_ms"),
        "peer_cross_node_p99_ms": dig(tagged_step(peer, "light"), "cross_node", "p99_ms"),
        "max_rate_msgs_per_s": dig(ours_knee, "rate"),
        "peer_max_rate_msgs_per_s": dig(peer_knee, "rate"),
        "node_cpu_us_per_delivery_at_knee": dig(ours_knee, "node_cpu_us_per_delivery"),
        "peer_node_cpu_us_per_delivery_at_knee": dig(peer_knee, "node_cpu_us_per_delivery"),
        "floor_cpu_us_per_delivery_at_knee_load": dig(floor_knee, "node_cpu_us_per_delivery"),
        "rooms_floor_cpu_us_per_delivery_at_knee_load": dig(
            rooms_floor_knee, "node_cpu_us_per_delivery"
        ),
        "ref_deliveries_per_s": dig(ours_ref, "deliveries_per_s"),
        # ours at the peer's knee rate: the peer ratio at one load
        "node_cpu_us_per_delivery_at_peer_knee_load": dig(
            ours_at_peer_knee, "node_cpu_us_per_delivery"
        ),
        # Redis's CPU per delivery (ours does more per message than the peer's one PUBLISH)
        "redis_cpu_us_per_delivery": dig(ours_ref, "store_cpu_us_per_delivery"),
        "peer_redis_cpu_us_per_delivery": dig(peer_ref, "store_cpu_us_per_delivery"),
        "redis_cpu_us_per_delivery_at_knee": dig(ours_knee, "store_cpu_us_per_delivery"),
        "peer_redis_cpu_us_per_delivery_at_knee": dig(peer_knee, "store_cpu_us_per_delivery"),
        "evalsha_per_message": evalsha,
        "knee_cores_saturated": dig(ours_knee, "saturated"),
        "peer_knee_cores_saturated": dig(peer_knee, "saturated"),
        "knee_capped": dig(ours_knee, "capped"),
        "peer_knee_capped": dig(peer_knee, "capped"),
        "machine_hop_p50_us_light": dig(wake.get(LIGHT_RATE), "hop_us", "p50"),
        "machine_hop_p50_us_ref": dig(wake.get(REF_RATE), "hop_us", "p50"),
        "machine_python_loop_us": dig(results.get("machine"), "python_loop_us"),
        # the CPU ratios again, measured in turn in the same minutes (full run; studies.paired)
        **{f"paired_{name}_ratio_{load}": dig(paired_ratios, f"{name}_{load}", "median")
           for name in ("floor", "peer") for load in ("ref", "knee")},
        **node_peers_summary(by_label),
        "disturbed_steps": sum(1 for s in every_step if s.get("disturbed")),
        # the most the hypervisor took from this machine in any step, % of one core
        "max_steal_cpu_pct": max(
            (s["steal_cpu_pct"] for s in every_step if s.get("steal_cpu_pct") is not None),
            default=None,
        ),
    }  # fmt: skip
    s = summary
    targets = [
        {"target": "node CPU/delivery ≤ 2× floor (at the reference load)",
         "measured": ratio(s["node_cpu_us_per_delivery"], s["floor_cpu_us_per_delivery"]),
         "limit": 2.0, "below_capacity": True, **_paired_note(paired_ratios, "floor_ref")},
        {"target": "node CPU/delivery ≤ 1/5 of the peer's (reference load)",
         "measured": ratio(s["node_cpu_us_per_delivery"], s["peer_node_cpu_us_per_delivery"]),
         "limit": 0.2, "below_capacity": True, **_paired_note(paired_ratios, "peer_ref"),
         **_past_capacity(peer_ref)},
        {"target": "node CPU/delivery ≤ 2× floor, both at our knee's deliveries/s",
         "measured": ratio(s["node_cpu_us_per_delivery_at_knee"],
                            s["floor_cpu_us_per_delivery_at_knee_load"]),
         "limit": 2.0, **_paired_note(paired_ratios, "floor_knee")},
        {"target": "node CPU/delivery ≤ 1/5 of the peer's, each at its own knee",
         "measured": ratio(s["node_cpu_us_per_delivery_at_knee"],
                            s["peer_node_cpu_us_per_delivery_at_knee"]),
         "limit": 0.2, **_paired_note(paired_ratios, "peer_knee")},
        {"target": "node CPU/delivery ≤ 1/5 of the peer's, both at the peer's knee load",
         "measured": ratio(s["node_cpu_us_per_delivery_at_peer_knee_load"],
                            s["peer_node_cpu_us_per_delivery_at_knee"]),
         "limit": 0.2, "below_capacity": True},
        _throughput_target(s),
        {"target": "cross-node p50 at light load ≤ 1 ms",
         "measured": s["cross_node_p50_ms"], "limit": 1.0},
        {"target": "cross-node p99 at light load ≤ 3 ms",
         "measured": s["cross_node_p99_ms"], "limit": 3.0},
        {"target": "Redis write round trips (EVALSHA) per app message ≤ 1 (+ 1 lease "
                   "renewal per node per second)",
         "measured": evalsha, "limit": 1.01},
    ]  # fmt: skip
    extra = results.get("targets_extra") or []
    for t in [*targets, *extra]:
        m, higher = t["measured"], t.pop("higher", False)
        if m is None or t.get("note", "").startswith("inconclusive"):
            t["met"] = None
        elif higher:
            t["met"] = m >= t["limit"]
        else:
            t["met"] = m <= t["limit"]
    return summary, [*targets, *extra]


def node_peers_summary(by_label: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per Node peer (keys `node_peer_streams_...`, `node_peer_pubsub_...`): deliveries/s and node
    CPU per delivery at its knee, CPU per delivery at the reference load measured warm (after
    its warm-up ramp) and cold (the first step of fresh processes)."""
    out: dict[str, Any] = {}
    for system, label in NODE_PEER_LABELS.items():
        key, rec = system.replace("-", "_"), by_label.get(label)
        knee = rec["knee"] if rec else None
        out[f"{key}_deliveries_per_s"] = dig(knee, "deliveries_per_s")
        out[f"{key}_node_cpu_us_per_delivery_at_knee"] = dig(knee, "node_cpu_us_per_delivery")
        out[f"{key}_node_cpu_us_per_delivery"] = dig(
            tagged_step(rec, "ref"), "node_cpu_us_per_delivery"
        )
        out[f"{key}_cold_node_cpu_us_per_delivery"] = dig(
            tagged_step(rec, COLD_TAG), "node_cpu_us_per_delivery"
        )
    return out


def _past_capacity(step: dict[str, Any] | None) -> dict[str, str]:
    """A note making a ratio inconclusive when the peer's step failed (p99 over 50 ms, loss):
    a server past its capacity spends its CPU on a backlog, not on the load asked."""
    if step is None or step.get("ok", True):
        return {}
    p99 = dig(step, "latency", "p99_ms")
    return {"note": f"inconclusive: the peer was past its capacity at this load (p99 {p99} ms)"}


def _paired_note(ratios: dict[str, Any] | None, name: str) -> dict[str, str]:
    """A target's note with the same ratio measured in turn (`bench.studies.paired`), if it was."""
    r = (ratios or {}).get(name) or {}
    if r.get("median") is None:
        return {}
    flag = ", every round disturbed" if r.get("disturbed") else ""
    return {
        "note": f"measured in turn, in the same minutes: median {r['median']} of {r['used']} "
        f"rounds (range {r['min']}–{r['max']}{flag})"
    }


def _throughput_target(s: dict[str, Any]) -> dict[str, Any]:
    """Ours against the peer's knee. A capped ramp (no step failed) gives only a lower bound of
    that system's knee: ours capped makes the ratio a lower bound, the peer's an upper one."""
    t: dict[str, Any] = {
        "target": "max sustainable deliveries/s ≥ 3× the peer's",
        "measured": ratio(s["deliveries_per_s"], s["peer_deliveries_per_s"]),
        "limit": 3.0, "higher": True,
    }  # fmt: skip
    m = t["measured"]
    if s.get("peer_knee_capped") and m is not None and m < 3.0:
        t["note"] = "inconclusive: the peer's ramp was capped before its knee"
    elif s.get("knee_capped"):
        t["note"] = "lower bound: our ramp was capped before the knee"
        if m is not None and m < 3.0:
            t["note"] = "inconclusive: " + t["note"]
    return t
