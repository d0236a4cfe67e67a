"""`bench.harness.record`: the run of record's compact JSON keeps what the report reads, and
the record is made in its own folder from a run's files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import report
from bench.harness.record import compact, record
from bench.summary import summarize
from tests.unit.test_bench_suite import results as run_results

LAT = {"count": 100, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "p99_9_ms": 4.0, "max_ms": 5.0}
CDF = [[50.0, 1.0], [99.0, 3.0], [100.0, 5.0]]


def step(tag: str, rate: float, knee: bool = False) -> dict[str, Any]:
    s = {"label": "roomstate 2 nodes + Redis", "tag": tag, "rate": rate, "step": 1,
         "deliveries_per_s": int(9 * rate), "latency": LAT, "cross_node": LAT, "same_node": LAT,
         "from_send": LAT, "cdf": CDF, "lost": 0, "dups": 0, "errors": 0, "closed": 0,
         "cpu_pct": {"nodes": [20.0, 21.0], "stores": [9.0], "gens": [15.0, 16.0]},
         "node_cpu_us_per_delivery": 30.0, "store_cpu_us_per_delivery": 2.0,
         "machine_busy_pct": 80.0, "ok": True, "saturated": False, "saturated_procs": [],
         "disturbed": False, "generator_stalled": False, "other_cpu_pct": 1.0,
         "redis_calls": {"evalsha": 2000}, "redis_calls_per_message": {"evalsha": 1.0}}  # fmt: skip
    if knee:
        s["knee"] = True
    return s


def a_run() -> dict[str, Any]:
    steps = [step("light", 100.0), step("ref", 1000.0), step("ramp", 500.0),
             step("ramp", 650.0, knee=True)]  # fmt: skip
    ours = {"label": "roomstate 2 nodes + Redis", "system": "2-nodes-redis", "participants": 10,
            "rooms": 10, "payload": 256, "kind": "app", "steps": steps, "knee": steps[-1],
            "ramped": True}  # fmt: skip
    r = run_results(scenarios=[ours])
    r["summary"], r["targets"] = summarize(r)
    return r


def test_compact_keeps_what_the_report_reads_and_drops_the_rest() -> None:
    run = a_run()
    small = compact(run)
    assert report.markdown(small, {}) == report.markdown(run, {})
    light, ref, ramp, knee = small["scenarios"][0]["steps"]
    assert light["cdf"] == CDF and ref["cdf"] == CDF  # the CDF plot draws these two
    assert "cdf" not in ramp and "cdf" not in knee
    for s in (light, ref, ramp, knee, small["scenarios"][0]["knee"]):
        assert not {"same_node", "from_send", "redis_calls"} & set(s)
    assert "redis_calls_per_message" in knee and "redis_calls_per_message" not in ramp
    assert run["scenarios"][0]["steps"][2]["cdf"] == CDF  # the run itself is left as it was


def test_the_record_is_written_from_a_run_with_its_plots(tmp_path: Path) -> None:
    out, rec = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    (out / "quick.json").write_text(json.dumps(a_run(), indent=1))
    (out / "quick-latency-cdf.png").write_bytes(b"png")  # the other plot was not drawn
    paths = record(out / "quick.json", "quick-abc1234", rec)
    assert sorted(p.name for p in rec.iterdir()) == [
        "quick-abc1234-latency-cdf.png", "quick-abc1234.json", "quick-abc1234.md",
    ]  # fmt: skip
    text = (rec / "quick-abc1234.json").read_text()
    assert "\n" not in text.strip() and '"same_node"' not in text  # compact
    md = (rec / "quick-abc1234.md").read_text()
    assert "![latency CDF per system](quick-abc1234-latency-cdf.png)" in md
    assert md == report.markdown(
        json.loads(text), {"latency CDF per system": paths["latency CDF per system"]}
    )
