"""The webinar study's summary and report (bench/studies/webinar.py): JSON and markdown into the
run's output directory, as every bench run writes (bench/out/, ignored by git).

The summary gives, per group of shapes (webinar, all present), each shape's join storm figures,
whether every phase's views came right without trouble, and the growth exponent of node CPU per
phase as N doubles (`webinar_view.growth_exponent`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness.webinar_view import growth_exponent

PHASES = ("join", "hands", "broadcast", "session", "leave")


def _phase(shape: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((p for p in shape["phases"] if p["phase"] == name), None)


def exponents(group: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per phase: k in node CPU ~ N^k over the group's shapes that ran the phase."""
    out: dict[str, float | None] = {}
    for name in PHASES:
        sizes, cpu = [], []
        for shape in group:
            p = _phase(shape, name)
            if p is not None:
                sizes.append(shape["shape"]["total"])
                cpu.append(p["node_cpu_s"])
        out[name] = growth_exponent(sizes, cpu)
    return out


def shape_summary(shape: dict[str, Any]) -> dict[str, Any]:
    join = _phase(shape, "join") or {}
    ran = shape["phases"]
    return {
        "label": shape["label"],
        "total": shape["shape"]["total"],
        "ok": bool(ran)
        and not shape.get("failed")
        and all(p["all_converged"] and not p["trouble"] for p in ran)
        and all(shape.get("nodes_alive", [])),
        "failed": shape.get("failed"),
        "join_converge_s": join.get("converge_s"),
        "join_scheduled_s": join.get("scheduled_s"),
        "join_node_cpu_s": join.get("node_cpu_s"),
        "join_p99_ms": (join.get("latency") or {}).get("p99_ms"),
        "unavailable": sum(p["totals"]["unavailable"] for p in ran),
        "trouble": sum(p["trouble"] for p in ran),
        "broadcast_p99_ms": ((_phase(shape, "broadcast") or {}).get("latency") or {}).get("p99_ms"),
        "session_converge_s": (_phase(shape, "session") or {}).get("converge_s"),
        "gens_saturated": [p["phase"] for p in ran if p["gens_saturated"]],
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": results["mode"], "duration_s": results["duration_s"]}
    for name, group in results["groups"].items():
        if not group:
            continue
        out[name] = {
            "shapes": [shape_summary(s) for s in group],
            "node_cpu_growth_exponent": exponents(group) if len(group) > 1 else None,
        }
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(_fmt(c) for c in cells) + " |"


HEADERS = ["phase", "actions", "rate/s", "scheduled s", "views right", "converged in s",
           "node CPU s", "redis CPU s", "gens CPU s", "p50 ms", "p99 ms", "unavailable",
           "errors", "closes", "leaks+dups", "notes"]  # fmt: skip


def _phase_row(p: dict[str, Any]) -> str:
    t = p["totals"]
    notes = []
    if p["gens_saturated"]:
        notes.append("a generator used a whole core: the clients were a limit")
    if t["join_failures"]:
        notes.append(f"{t['join_failures']} never got in")
    errors = {k: v for k, v in t["errors"].items() if k != "unavailable"}
    cpu = p["cpu_s"]
    return _row([
        p["phase"], p["actions"], p["rate"], p["scheduled_s"], f"{p['converged']}/{p['views']}",
        p["converge_s"], " + ".join(f"{c:.2f}" for c in cpu["nodes"]), sum(cpu["redis"]),
        sum(cpu["gens"]), p["latency"]["p50_ms"], p["latency"]["p99_ms"], t["unavailable"],
        json.dumps(errors) if errors else 0, json.dumps(t["closes"]) if t["closes"] else 0,
        t["leaks"] + t["dups"], "; ".join(notes),
    ])  # fmt: skip


def markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# roomstate large rooms — {results['mode']} run",
        "",
        f"- started {results['started']}, took {results['duration_s']:.0f} s; command "
        f"`{results['command']}`",
        f"- machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}; the load generators "
        "ran on the same cores as the nodes and Redis (their CPU is in the tables)",
        "- one room over 2 nodes + Redis; a phase is timed from its first scheduled action until "
        "every client's view (counts, present roster, session data; hands for owners; every "
        "broadcast) is right; CPU is over that window; latency: join → `joined`, hand → owners, "
        "broadcast and session data → each client, leave → its ack",
        "- *unavailable*: retryable refusals (retried after retryAfter); *errors* and *closes* "
        "(4002 fencing, 1008 …) count everything else a healthy run never shows",
        "",
    ]
    for name, group in results["groups"].items():
        if not group:
            continue
        lines += [f"## {name.replace('_', ' ')}", ""]
        for shape in group:
            s = shape["shape"]
            lines += [f"### {shape['label']}: {s['present']:,} present + {s['hidden']:,} hidden, "
                      f"joins at {s['join_rate']:g}/s", ""]  # fmt: skip
            if shape.get("failed"):
                lines += [f"**failed**: `{shape['failed'][:500]}`", ""]
            if shape["phases"]:
                lines += [_row(HEADERS), "|" + "---|" * len(HEADERS)]
                lines += [_phase_row(p) for p in shape["phases"]]
                lines += ["", "frames received per phase: "
                          + "; ".join(f"{p['phase']} {json.dumps(p['totals']['frames'])}"
                                      for p in shape["phases"]), ""]  # fmt: skip
        growth = (summary.get(name) or {}).get("node_cpu_growth_exponent")
        if growth:
            lines += [
                "Growth exponent of node CPU per phase (k in CPU ~ N^k; 1 linear, 2 "
                "quadratic): " + ", ".join(f"{k} {_fmt(v)}" for k, v in growth.items()),
                "",
            ]
    lines += ["## Summary", "", "```json", json.dumps(summary, indent=1), "```", ""]
    return "\n".join(lines)


def write(
    results: dict[str, Any], out_dir: Path, stem: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Write `stem`.json and `stem`.md into `out_dir`; returns (summary, paths)."""
    summary = summarize(results)
    results["summary"] = summary
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown(results, summary))
    return summary, {"json": str(out_dir / f"{stem}.json"), "md": str(out_dir / f"{stem}.md")}
