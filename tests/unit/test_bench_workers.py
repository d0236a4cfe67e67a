"""bench/studies/workers.py: its summary and table, from steps as the runner records them."""

from __future__ import annotations

from typing import Any

from bench.studies.workers import summary, table


def step(rate: float, delivered: int, ok: bool, nodes: list[float]) -> dict[str, Any]:
    return {
        "rate": rate,
        "deliveries_per_s": delivered,
        "ok": ok,
        "disturbed": False,
        "lost": 0 if ok else 5,
        "latency": {"p50_ms": 1.0, "p99_ms": 4.0 if ok else 80.0},
        "cpu_pct": {"nodes": nodes, "stores": [20.0], "gens": [40.0, 41.0]},
        "machine_busy_pct": 90.0,
    }


def test_the_summary_compares_the_same_rates_and_keeps_the_best_passing_step() -> None:
    steps = {
        "1 worker": [step(1000, 9000, True, [50.0]), step(2000, 15000, False, [99.0])],
        "2 workers": [
            step(1000, 9000, True, [1, 30.0, 31.0]),
            step(2000, 18000, True, [1, 60, 61]),
        ],
    }
    got = summary(steps)
    assert got["1 worker"]["best_ok_deliveries_per_s"] == 9000  # the 15,000 step failed
    assert got["2 workers"]["best_ok_deliveries_per_s"] == 18000
    assert got["2 workers"]["top_nodes_cpu_pct"] == 122.0  # the supervisor and both workers
    assert got["2 workers"]["top_generators_cpu_pct"] == 81.0
    assert got["ratio_2_over_1"] == {"1000": 1.0, "2000": 1.2}
    rows = table(steps).splitlines()
    assert len(rows) == 2 + 4
    assert "| 2 workers | 2,000 | 18,000 |" in rows[-1] and rows[-1].endswith("| yes |")
