"""The churn study's figures and report (bench/studies/churn.py): from the run's samples, the
bytes per room and per participant in Redis and in a node, and the growth over the second half.

Per room and per participant: the mean of the second half's samples less the idle deployment's
(before any client), over the rooms, or over the mean number of clients joined in the second
half (a dropped participant stays a resume grace longer than its client counts it: the figure
per participant is an upper bound). Growth: the last churn sample less the first at or after half
time, and the least-squares slope of the second half's samples, per minute.
"""

from __future__ import annotations

from typing import Any


def slope_per_min(ts: list[float], ys: list[float]) -> float | None:
    """The least-squares slope of `ys` over `ts` (seconds), per minute; None under 3 points."""
    n = len(ts)
    if n < 3:
        return None
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return None
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var


def _series(points: list[dict[str, Any]], get: Any) -> dict[str, Any]:
    ts = [p["run_t"] for p in points]
    ys = [float(get(p)) for p in points]
    return {"first": ys[0], "last": ys[-1], "growth_kb": round((ys[-1] - ys[0]) / 1e3, 1),
            "slope_kb_per_min": _round(slope_per_min(ts, ys), 1e3),
            "mean": sum(ys) / len(ys)}  # fmt: skip


def _round(value: float | None, unit: float) -> float | None:
    return None if value is None else round(value / unit, 1)


def _live(d: dict[str, float]) -> float:
    """Live objects (MB): Python's allocated blocks and malloc's bytes in use."""
    return d["pymalloc_allocated_mb"] + d["malloc_in_use_mb"]


def _free(d: dict[str, float]) -> float:
    """Freed memory the allocators keep (MB): free blocks in pymalloc's arenas, malloc's kept."""
    return d["pymalloc_free_mb"] + d["malloc_kept_mb"]


def allocators(results: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per node (`--allocators`), from half time to the end, and from the end to the rooms
    dropped: the change of RSS, of live objects, of freed memory kept, of pymalloc arenas (KB)."""
    per_node = results.get("allocators")
    if not per_node:
        return None
    labels = [d["label"] for d in results.get("dumps") or ()]
    out = []
    for i, dumps in enumerate(per_node):
        at = dict(zip(labels, dumps, strict=False))
        row: dict[str, Any] = {"node": i}
        for name, (a, b) in {
            "second_half": ("half", "end"),
            "rooms_dropped": ("end", "after"),
        }.items():
            if a in at and b in at:
                x, y = at[a], at[b]
                row[name] = {
                    "rss_kb": round((y["rss_mb"] - x["rss_mb"]) * 1e3),
                    "live_kb": round((_live(y) - _live(x)) * 1e3),
                    "kept_free_kb": round((_free(y) - _free(x)) * 1e3),
                    "arenas": y["pymalloc_arenas"] - x["pymalloc_arenas"],
                }
        out.append(row)
    return out


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """The summary: the figures per room, per participant, the growth, the clients' tally."""
    s = results["settings"]
    samples = results["samples"]
    idle = next(p for p in samples if p["phase"] == "idle")
    churn = [p for p in samples if p["phase"] in ("churn", "end")]
    half = [p for p in churn if p["run_t"] >= s["seconds"] / 2]
    after = next((p for p in samples if p["phase"] == "after"), None)
    tally = results.get("tally") or {}
    out: dict[str, Any] = {
        "clients": s["clients"],
        "rooms": s["rooms"],
        "seconds": s["seconds"],
        "tally": {k: v for k, v in tally.items() if k != "error_samples"},
    }
    if len(half) < 2:
        out["ok"] = False
        out["why"] = "fewer than 2 samples in the second half"
        return out
    joined = sum(p["joined"] for p in half) / len(half)
    minutes = s["seconds"] / 60
    out["joins_per_min"] = round(tally.get("joins", 0) / minutes, 1)
    out["writes_per_s"] = round(tally.get("writes", 0) / s["seconds"], 1)
    out["joined_mean"] = round(joined, 1)
    redis = _series(half, lambda p: p["redis_used"])
    extra = redis["mean"] - idle["redis_used"]
    out["redis"] = {
        "idle_mb": round(idle["redis_used"] / 1e6, 2), "mean_mb": round(redis["mean"] / 1e6, 2),
        "per_room_kb": round(extra / s["rooms"] / 1e3, 1),
        "per_participant_kb": round(extra / max(joined, 1) / 1e3, 2),
        "growth_second_half_kb": redis["growth_kb"],
        "slope_kb_per_min": redis["slope_kb_per_min"],
        "after_rooms_dropped_mb": None if after is None else round(after["redis_used"] / 1e6, 2),
        "room_keys": sorted({p["room_keys"] for p in half}),
    }  # fmt: skip
    if "log_bytes" in half[0]:  # the rooms' keys apart: stream (capped) and state hash
        logs = _series(half, lambda p: p["log_bytes"])
        state = _series(half, lambda p: p["state_bytes"])
        fields = _series(half, lambda p: p["state_fields"])
        out["redis"] |= {
            "log_per_room_kb": round(logs["mean"] / s["rooms"] / 1e3, 1),
            "state_per_room_kb": round(state["mean"] / s["rooms"] / 1e3, 1),
            "state_growth_second_half_kb": state["growth_kb"],
            "state_fields_per_room": round(fields["mean"] / s["rooms"]),
            "state_fields_growth_second_half": round(fields["last"] - fields["first"]),
        }
    nodes = []
    for i, rss0 in enumerate(idle["node_rss"]):
        gone = None if after is None else round(after["node_rss"][i] / 1e6, 1)
        series = _series(half, lambda p, i=i: p["node_rss"][i])
        nodes.append({
            "idle_mb": round(rss0 / 1e6, 1), "mean_mb": round(series["mean"] / 1e6, 1),
            "end_mb": round(series["last"] / 1e6, 1),
            "growth_second_half_kb": series["growth_kb"],
            "slope_kb_per_min": series["slope_kb_per_min"],
            "after_rooms_dropped_mb": gone,
        })  # fmt: skip
    out["nodes"] = nodes
    extra_node = sum(n["mean_mb"] - n["idle_mb"] for n in nodes) * 1e6 / len(nodes)
    out["node_per_room_kb"] = round(extra_node / s["rooms"] / 1e3, 1)
    out["node_per_participant_kb"] = round(extra_node / max(joined, 1) / 1e3, 1)
    out["node_growth_second_half_max_kb"] = max(n["growth_second_half_kb"] for n in nodes)
    out["node_allocators"] = allocators(results)
    out["errors"] = tally.get("error_count", 0) + tally.get("join_failures", 0)
    out["ok"] = all(results.get("alive") or [False]) and out["errors"] == 0
    return out


def markdown(results: dict[str, Any]) -> str:
    sm = results["summary"]
    s = results["settings"]
    m = results["machine"]
    lines = [
        f"# Churn: {s['clients']} clients, {s['rooms']} rooms, {s['seconds']:g} s",
        "",
        f"`{results['command']}` at {results['started']}, commit {m.get('commit')}, "
        f"{m.get('cores')} cores ({m.get('cpu')}), Python {m.get('python')}.",
        "",
    ]
    if "redis" not in sm:
        return "\n".join([*lines, f"No figures: {sm.get('why')}", ""])
    t, r = sm["tally"], sm["redis"]
    lines += [
        f"Clients: {t['joins']:,} joins ({sm['joins_per_min']}/min), {t['writes']:,} writes "
        f"({sm['writes_per_s']}/s), {t['leaves']:,} leaves, {t['drops']:,} dropped sockets; "
        f"{sm['joined_mean']} joined on average over the second half. Errors: "
        f"{t['error_count']} errors {t['errors'] or ''}, {t['join_failures']} failed "
        f"joins, {t['unexpected_closes']} unexpected closes.",
        "",
        "| | idle | mean, 2nd half | per room | per participant | growth, 2nd half | slope "
        "| rooms dropped |",
        "|---|---|---|---|---|---|---|---|",
        f"| Redis used_memory | {r['idle_mb']} MB | {r['mean_mb']} MB | {r['per_room_kb']} KB "
        f"| {r['per_participant_kb']} KB | {r['growth_second_half_kb']} KB "
        f"| {r['slope_kb_per_min']} KB/min | {r['after_rooms_dropped_mb']} MB |",
    ]
    for i, n in enumerate(sm["nodes"]):
        lines.append(
            f"| node {i} RSS | {n['idle_mb']} MB | {n['mean_mb']} MB | "
            f"{sm['node_per_room_kb'] if i == 0 else '-'} KB | "
            f"{sm['node_per_participant_kb'] if i == 0 else '-'} KB | "
            f"{n['growth_second_half_kb']} KB | {n['slope_kb_per_min']} KB/min | "
            f"{n['after_rooms_dropped_mb']} MB |"
        )
    if "log_per_room_kb" in r:
        lines += [
            "",
            f"Redis per room, by key (MEMORY USAGE, mean over the second half): stream "
            f"{r['log_per_room_kb']} KB, state hash {r['state_per_room_kb']} KB with "
            f"{r['state_fields_per_room']} fields; the state hashes grew "
            f"{r['state_growth_second_half_kb']} KB and "
            f"{r['state_fields_growth_second_half']} fields over the second half.",
        ]
    if results.get("allocators"):
        lines += ["", *allocator_table(results)]
    lines += [
        "",
        f"Room keys over the second half: {r['room_keys']}. Node per room and per participant: "
        "the mean over the nodes of (mean RSS less idle RSS), over the rooms or the participants "
        "joined (every node hosts every room).",
        "",
        "## Samples",
        "",
        "| t (s) | phase | joined | Redis MB | room keys | streams KB | state KB | state fields "
        "| node RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in results["samples"]:
        rss = " / ".join(f"{x / 1e6:.1f}" for x in p["node_rss"])
        keys = "| - | - | - |"
        if "log_bytes" in p:
            log_kb, state_kb = p["log_bytes"] / 1e3, p["state_bytes"] / 1e3
            keys = f"| {log_kb:.1f} | {state_kb:.1f} | {p['state_fields']} |"
        lines.append(f"| {p['t']} | {p['phase']} | {p['joined']} | {p['redis_used'] / 1e6:.3f} "
                     f"| {p['room_keys']} {keys} {rss} |")  # fmt: skip
    if results.get("tracemalloc_files"):
        lines += ["", "Tracemalloc dumps: " + ", ".join(results["tracemalloc_files"])]
    return "\n".join(lines) + "\n"


def allocator_table(results: dict[str, Any]) -> list[str]:
    """Where each node's memory is at each dump (`--allocators`), in MB."""
    labels = [d["label"] for d in results.get("dumps") or ()]
    lines = [
        "Where each node's memory is (MB; live: Python's allocated blocks + malloc's bytes in "
        "use; kept: freed memory the allocators keep, pymalloc's free blocks + malloc's):",
        "",
        "| node | point | RSS | live | pymalloc arenas | pymalloc free | malloc kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, dumps in enumerate(results["allocators"]):
        for label, d in zip(labels, dumps, strict=False):
            lines.append(
                f"| {i} | {label} | {d['rss_mb']:.2f} | {_live(d):.2f} | {d['pymalloc_arenas']} "
                f"| {d['pymalloc_free_mb']:.2f} | {d['malloc_kept_mb']:.2f} |"
            )
    for row in results["summary"].get("node_allocators") or ():
        for name, text in (("second_half", "over the second half"),
                           ("rooms_dropped", "once the rooms were dropped")):  # fmt: skip
            if name in row:
                c = row[name]
                lines.append(
                    f"\nNode {row['node']} {text}: RSS {c['rss_kb']:+} KB, live objects "
                    f"{c['live_kb']:+} KB, freed memory kept {c['kept_free_kb']:+} KB, "
                    f"{c['arenas']:+} pymalloc arenas."
                )
    return lines


def plot(results: dict[str, Any], path: Any) -> None:
    """Redis's used memory and each node's RSS over the run, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (redis_ax, node_ax) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    redis_ax.plot(minutes, [s["redis_used"] / 1e6 for s in samples], color="tab:red")
    redis_ax.set(title="Redis used_memory", xlabel="minutes", ylabel="MB")
    for i in range(len(samples[0]["node_rss"])):
        node_ax.plot(minutes, [s["node_rss"][i] / 1e6 for s in samples], label=f"node {i}")
    node_ax.set(title="node RSS", xlabel="minutes", ylabel="MB")
    node_ax.legend(loc="lower right")
    settings = results["settings"]
    fig.suptitle(
        f"{settings['clients']} clients churning through {settings['rooms']} rooms that never empty"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
