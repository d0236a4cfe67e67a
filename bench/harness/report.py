"""Write a run's results: JSON, a markdown report, and PNG plots (latency CDF per system at light
and at the reference load; p99 against deliveries/s over the rate ramps).

Every run writes into `OUT`, which git ignores; bench/results/ (`RECORD`) holds only the run of
record, made from a run's files by `python -m bench.harness.record`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness.common import CPU_LATE_MS

BENCH = Path(__file__).resolve().parents[1]
OUT = BENCH / "out"  # every run's files (ignored by git)
RECORD = BENCH / "results"  # the run of record (tracked)
# the plots: title in the markdown -> file name after the run's stem
PLOTS = {"latency CDF per system": "latency-cdf", "p99 against deliveries/s": "p99-vs-throughput"}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _step_row(s: dict[str, Any]) -> list[Any]:
    lat, cross = s["latency"], s["cross_node"]
    cpu = s["cpu_pct"]
    flags = []
    if s.get("knee"):
        flags.append("**knee**")
    if s["saturated"]:
        flags.append("cores saturated")
    if s["saturated_procs"]:
        flags.append("busy: " + ",".join(s["saturated_procs"]))
    if s.get("generator_stalled"):
        flags.append(f"disturbed (a generator sent {s['max_late_ms']:.0f} ms late)")
    elif (s.get("cpu_window_late_ms") or 0) > CPU_LATE_MS:
        flags.append(f"disturbed (CPU read {s['cpu_window_late_ms']:.0f} ms into the window)")
    elif s.get("disturbed"):
        steal = s.get("steal_cpu_pct")  # absent in steps recorded before it was
        stolen = f", {steal:.0f}% stolen by the hypervisor" if steal and steal >= 0.5 else ""
        flags.append(f"disturbed ({s['other_cpu_pct']:.0f}% others{stolen})")
    if s["errors"]:
        flags.append(f"{s['errors']} errors")
    if s["closed"]:
        flags.append(f"{s['closed']} closed")
    return [
        s["label"],
        s["tag"] or "",
        s["rate"],
        s["deliveries_per_s"],
        lat["p50_ms"],
        lat["p90_ms"],
        lat["p99_ms"],
        lat["p99_9_ms"],
        lat["max_ms"],
        cross["p50_ms"],
        cross["p99_ms"],
        s["lost"],
        s["dups"],
        "+".join(f"{v:.0f}" for v in cpu["nodes"]),
        "+".join(f"{v:.0f}" for v in cpu["stores"]) or "–",
        "+".join(f"{v:.0f}" for v in cpu["gens"]),
        s["node_cpu_us_per_delivery"],
        s["machine_busy_pct"],
        "OK" if s["ok"] else "fail",
        "; ".join(flags),
    ]


STEP_HEADERS = [
    "scenario", "step", "msgs/s", "deliveries/s", "p50 ms", "p90", "p99", "p99.9", "max",
    "x-node p50", "x-node p99", "lost", "dup", "node CPU %", "redis CPU %", "gen CPU %",
    "node µs/delivery", "machine busy %", "ok", "notes",
]  # fmt: skip


def _python_build(machine: dict[str, Any]) -> str:
    """Where the interpreter comes from, and how fast it runs plain Python here."""
    if "python_loop_us" not in machine:  # a run from before these were recorded
        return ""
    flags = " ".join(machine["python_configure"]) or "neither --enable-optimizations nor --with-lto"
    return (
        f" (from {machine['python_prefix']}; configure arguments list {flags}; a fixed Python "
        f"loop takes {machine['python_loop_us']:.1f} µs, `bench.harness.machine.python_loop_us`)"
    )


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    lines = [
        f"# roomstate fan-out benchmark — {results['mode']} run",
        "",
        f"- started {results['started']}, took {results['duration_s']:.0f} s; command "
        f"`{results['command']}`",
        f"- machine: {results['machine']['cores']} cores ({results['machine']['cpu']}), "
        f"Python {results['machine']['python']}{_python_build(results['machine'])}, "
        f"{results['machine']['versions']}",
        f"- waited {results['quiet_waited_s']:.0f} s in all for other processes on the machine to "
        "quiet down; steps where others used > 25 % of a core, or the hypervisor stole as much, or "
        "where a generator sent a message > 10 ms late with the cores not saturated, are marked "
        "*disturbed*",
        "- latency is receive time − scheduled send time (open loop), in ms; CPU % is of one core "
        "over the measured window; node µs/delivery = all nodes' CPU / deliveries in the window",
    ]
    for w in results.get("machine_wake") or ():
        lines.append(
            f"- this machine's wake-up cost at {w['rate']:g} msgs/s (`python -m bench wake_cost`): "
            f"one loopback hop between two sleeping processes p50 {w['hop_us']['p50']:.1f} µs, "
            f"p90 {w['hop_us']['p90']:.1f} µs; a cross-node app message crosses four such hops"
        )
    lines.append("")
    # a part of the full run (--only) has no figure for most of the summary and targets
    measured = [t for t in results.get("targets") or () if t.get("measured") is not None]
    context = ("disturbed_steps", "machine_hop_p50_us_light", "machine_hop_p50_us_ref",
               "machine_python_loop_us", "max_steal_cpu_pct")  # fmt: skip
    if any(v is not None for k, v in results["summary"].items() if k not in context):
        lines += ["## Summary", "", "```json", json.dumps(results["summary"], indent=1), "```", ""]
    if measured:
        lines += [
            "## Targets",
            "",
            _table(
                ["target", "measured", "limit", "met", "note"],
                [
                    [t["target"], t["measured"], t["limit"], t["met"], t.get("note", "")]
                    for t in measured
                ],
            ),
            "",
        ]
        below = [t["target"] for t in measured if t.get("below_capacity")]
        if below:
            lines += [
                "The CPU targets are read at capacity (docs/decisions/0006-cpu-targets-at-"
                "capacity.md): ours at its knee against the floor at the same deliveries/s and "
                "against the peer at its own knee. These rows are read below capacity and are "
                "reported for information: " + "; ".join(below) + ".",
                "",
            ]
    if results.get("redis_floor"):
        rf = results["redis_floor"]
        lines += [
            "## Redis floor (raw redis-py XADD → XREAD BLOCK, one way)",
            "",
            _table(
                ["msgs/s", "from", "p50", "p90", "p99", "p99.9", "max", "lost"],
                [
                    [
                        rf["rate"],
                        "actual send",
                        *[
                            rf["from_send"][k]
                            for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")
                        ],
                        rf["lost"],
                    ],
                    [
                        rf["rate"],
                        "schedule",
                        *[
                            rf["from_sched"][k]
                            for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")
                        ],
                        rf["lost"],
                    ],
                ],
            ),
            "",
        ]
    knees = []
    for sc in results["scenarios"]:
        knee = sc.get("knee")
        if sc.get("ramped"):
            knees.append(
                [
                    sc["label"],
                    knee["rate"] if knee else None,
                    knee["deliveries_per_s"] if knee else None,
                    knee["latency"]["p50_ms"] if knee else None,
                    knee["latency"]["p99_ms"] if knee else None,
                    knee["node_cpu_us_per_delivery"] if knee else None,
                    "+".join(f"{v:.0f}" for v in knee["cpu_pct"]["nodes"]) if knee else None,
                    knee["machine_busy_pct"] if knee else None,
                ]
            )
    if knees:
        lines += [
            "## Highest sustainable rate (p99 ≤ 50 ms, no loss, no errors)",
            "",
            _table(
                [
                    "scenario",
                    "msgs/s",
                    "deliveries/s",
                    "p50 ms",
                    "p99 ms",
                    "node µs/delivery",
                    "node CPU %",
                    "machine busy %",
                ],
                knees,
            ),
            "",
        ]
    lines += _systems_compared(results["scenarios"])
    for name in ("propagation", "memory", "bystander", "webinar"):  # webinar: full-webinar.md
        if results.get(name):
            lines += [f"## {name.capitalize()}", "", "```json",
                      json.dumps(results[name], indent=1), "```", ""]  # fmt: skip
    if results.get("paired"):
        pr = results["paired"]
        lines += [
            "## CPU ratios measured in turn (`python -m bench paired`)",
            "",
            f"The three deployments up at once, measured one after the other in each round; "
            f"knees {pr['knee_msgs_per_s']:g} (roomstate) and {pr['peer_knee_msgs_per_s']:g} "
            f"(the peer) msgs/s, {pr['seconds']:g} s per step.",
            "",
            paired_tables(pr),
            "",
        ]
    if results.get("hops"):
        lines += ["## Light load, hop by hop (`python -m bench hops`)", "", "```",
                  results["hops"]["report"], "```", ""]  # fmt: skip
    for title, path in plots.items():
        lines += [f"![{title}]({Path(path).name})", ""]
    rows = [_step_row(s) for sc in results["scenarios"] for s in sc["steps"]]
    if rows:
        lines += ["## Every step", "", _table(STEP_HEADERS, rows), ""]
    calls = [
        [s["label"], s["rate"], s["redis_calls_per_message"]]
        for sc in results["scenarios"]
        for s in sc["steps"]
        if s.get("redis_calls_per_message") and s.get("knee")
    ]
    if calls:
        lines += [
            "## Redis commands per message sent (INFO commandstats, at the knee)",
            "",
            _table(["scenario", "msgs/s", "calls per message"], calls),
            "",
        ]
    return "\n".join(lines)


OURS_SYSTEM = "2-nodes-redis"  # roomstate's deployment the peers are set beside (2 nodes + Redis)
COLD_TAG = "ref (cold)"  # a Node peer's first step, on fresh processes, before its warm-up
WARM_UP_TAG = "warm-up"  # a step of a Node peer's warm-up ramp (measured, used for nothing)
COMPARED_HEADERS = [
    "system", "deliveries/s at the knee", "roomstate / it", "node µs/delivery at the knee",
    "roomstate / it", "Redis µs/delivery at the knee", "node µs/delivery at the reference load",
    "the same, cold",
]  # fmt: skip


def _systems_compared(scenarios: list[dict[str, Any]]) -> list[str]:
    """roomstate on 2 nodes + Redis beside the peers (python-socketio; Node.js Socket.IO with
    each Redis adapter), each at its own knee and at the reference load; shown when a Node.js
    peer was measured (a run from before it had none). Says how the Node peers were warmed."""
    main = [sc for sc in scenarios if _is_main(sc) and sc.get("ramped")]
    ours = next((sc for sc in main if sc["system"] == OURS_SYSTEM), None)
    peers = [sc for sc in main if sc["system"] == "peer" or sc["system"].startswith("node-peer-")]
    if not any(sc["system"].startswith("node-peer-") for sc in peers):
        return []

    def tagged(sc: dict[str, Any], tag: str) -> dict[str, Any] | None:
        return next((s for s in sc["steps"] if s.get("tag") == tag), None)

    def cost(step: dict[str, Any] | None) -> float | None:
        return step["node_cpu_us_per_delivery"] if step else None

    def per(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    ours_knee = (ours or {}).get("knee") or {}
    rows = []
    for sc in [ours, *peers] if ours else peers:
        knee = sc.get("knee") or {}
        rows.append([
            sc["label"], knee.get("deliveries_per_s"),
            per(ours_knee.get("deliveries_per_s"), knee.get("deliveries_per_s")),
            knee.get("node_cpu_us_per_delivery"),
            per(ours_knee.get("node_cpu_us_per_delivery"), knee.get("node_cpu_us_per_delivery")),
            knee.get("store_cpu_us_per_delivery"), cost(tagged(sc, "ref")),
            cost(tagged(sc, COLD_TAG)),
        ])  # fmt: skip
    lines = [
        "## roomstate and the peers, each at its knee",
        "",
        _table(COMPARED_HEADERS, rows),
        "",
    ]
    for sc in peers:
        cold, warm = tagged(sc, COLD_TAG), [s for s in sc["steps"] if s.get("tag") == WARM_UP_TAG]
        if cold is None:
            continue
        rates = ", ".join(f"{s['rate']:,.0f}" for s in warm) or "none"
        lines.append(
            f"- {sc['label']}: measured warm. Its first step, at the reference load on fresh "
            f"processes, gives the cold figure ({_fmt(cost(cold))} µs per delivery); then "
            f"warm-up steps at {rates} msgs/s (up to the first that failed); every other step "
            "of it ran after them."
        )
    return [*lines, ""] if len(lines) > 4 else lines


def _is_main(sc: dict[str, Any]) -> bool:
    """A system at the base shape: 10 rooms x 10 (the floor: 1 x 99), 256 B app messages."""
    return (
        sc["payload"] == 256
        and sc["kind"] == "app"
        and ((sc["participants"], sc["rooms"]) in ((10, 10), (99, 1)))
        and "bystander" not in sc["label"]
        and not sc.get("beside")  # the 10-room deployment measured in turn with 1,000 rooms
    )


def _ramp_steps(sc: dict[str, Any]) -> list[dict[str, Any]]:
    by_rate: dict[float, dict[str, Any]] = {}
    for s in sc["steps"]:  # a step run again (after a disturbed one) replaces it
        if s.get("tag") and "ramp" in s["tag"] and s["latency"]["p99_ms"] is not None:
            by_rate[s["rate"]] = s
    return [by_rate[r] for r in sorted(by_rate)]


def plot(results: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    main = [sc for sc in results["scenarios"] if _is_main(sc)]
    # 1. latency CDF per system (base shape), at light load and at the reference load
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    drawn = False
    for ax, tag, title in ((axes[0], "light", "light load"), (axes[1], "ref", "reference load")):
        ax.set_prop_cycle(color=plt.cm.tab10.colors)
        for sc in main:
            step = next((s for s in sc["steps"] if tag in (s.get("tag") or "").split(",")), None)
            if step is None or not step["cdf"]:
                continue
            xs = [max(v, 0.01) for _, v in step["cdf"]]
            ys = [p for p, _ in step["cdf"]]
            mark = " [disturbed]" if step.get("disturbed") else ""
            label = f"{sc['label']} ({step['deliveries_per_s']:,}/s){mark}"
            ax.plot(xs, ys, marker=".", label=label)
            drawn = True
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (receive − scheduled send)")
        ax.set_title(f"latency CDF, {title}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("percentile")
    if drawn:
        path = out_dir / f"{stem}-{PLOTS['latency CDF per system']}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        paths["latency CDF per system"] = str(path)
    plt.close(fig)

    # 2. p99 against deliveries/s over the ramps: systems; the 2-node matrix sweeps
    sweeps = [sc for sc in results["scenarios"] if not _is_main(sc) and sc.get("ramped")]
    panels = [("systems, 10 rooms x 10, 256 B", main)]
    if sweeps:
        base = [sc for sc in main if sc["system"] == "2-nodes-redis"]
        panels.append(("2 nodes + Redis: participants, rooms, payload", base + sweeps))
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5.5), squeeze=False)
    drawn = False
    for ax, (title, scs) in zip(axes[0], panels, strict=True):
        ax.set_prop_cycle(color=plt.cm.tab10.colors + plt.cm.Dark2.colors)
        for sc in scs:
            steps = _ramp_steps(sc)
            if len(steps) < 2:
                continue
            pts = [(s["deliveries_per_s"], s["latency"]["p99_ms"]) for s in steps]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            (line,) = ax.plot(xs, ys, marker="o", label=sc["label"])
            hollow = [p for p, s in zip(pts, steps, strict=True) if s.get("disturbed")]
            if hollow:  # steps during which other processes took > 25 % of a core
                ax.plot(
                    [p[0] for p in hollow], [p[1] for p in hollow], "o", markersize=11,
                    markerfacecolor="none", markeredgecolor=line.get_color(),
                )  # fmt: skip
            drawn = True
        ax.axhline(50, color="red", linestyle="--", linewidth=1, label="p99 limit 50 ms")
        ax.set_yscale("log")
        ax.set_xlabel("deliveries/s")
        ax.set_ylabel("p99 latency, ms")
        ax.set_title(f"p99 against throughput: {title}\n(open-loop ramp; ringed: disturbed step)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if drawn:
        path = out_dir / f"{stem}-{PLOTS['p99 against deliveries/s']}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        paths["p99 against deliveries/s"] = str(path)
    plt.close(fig)
    return paths


def write(results: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(results, out_dir, stem)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown(results, plots))
    return {"json": str(out_dir / f"{stem}.json"), "md": str(out_dir / f"{stem}.md"), **plots}


# -- the CPU ratios measured in turn (bench.studies.paired) --

RATIO_TITLES = {
    "floor_ref": "roomstate / floor, at the reference load",
    "peer_ref": "roomstate / peer, at the reference load",
    "floor_knee": "roomstate / floor, both at our knee's deliveries/s",
    "peer_knee": "roomstate / peer, each at its own knee",
}


def paired_steps_table(rows: list[dict[str, Any]]) -> str:
    head = ["round", "system", "load", "msgs/s", "deliveries/s", "node µs/delivery", "p99 ms",
            "lost"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["round"], r["system"], r["load"], r["rate"], r["deliveries_per_s"],
                 r["cpu_us_per_delivery"], r["p99_ms"], r["lost"]]  # fmt: skip
        flag = " (disturbed)" if r["disturbed"] else ""
        lines.append("| " + " | ".join(str(c) for c in cells) + flag + " |")
    return "\n".join(lines)


def paired_ratios_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| ratio | median | range | rounds used | each round |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        each = ", ".join(
            f"{r['value']}{' (disturbed)' if r['disturbed'] else ''}" for r in s["rounds"]
        )
        span = f"{s['min']}–{s['max']}" if "min" in s else "–"
        median = f"{s.get('median', '–')}{' (all rounds disturbed)' if s.get('disturbed') else ''}"
        lines.append(f"| {RATIO_TITLES[name]} | {median} | {span} | {s['used']} | {each} |")
    return "\n".join(lines)


def paired_tables(result: dict[str, Any]) -> str:
    """Every step measured in turn, then the ratios over the rounds."""
    return "\n\n".join([paired_steps_table(result["rows"]), paired_ratios_table(result["ratios"])])
