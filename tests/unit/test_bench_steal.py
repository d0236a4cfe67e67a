"""A step says how much of the others' CPU was the hypervisor's (steal time)."""

from __future__ import annotations

from typing import Any

from bench.harness.common import machine_steal_s
from bench.harness.report import _step_row
from bench.harness.runner import _one_line, disturbed


def step(other: float, steal: float | None) -> dict[str, Any]:
    lat = {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "p99_9_ms": 4.0, "max_ms": 5.0}
    s = {"label": "x", "tag": "ref", "rate": 1000.0, "deliveries_per_s": 9000, "latency": lat,
         "cross_node": {"p50_ms": 1.1, "p99_ms": 3.1}, "lost": 0, "dups": 0, "errors": 0,
         "closed": 0, "cpu_pct": {"nodes": [20.0, 21.0], "stores": [9.0], "gens": [15.0, 16.0]},
         "node_cpu_us_per_delivery": 45.0, "machine_busy_pct": 80.0, "ok": True,
         "saturated": False, "saturated_procs": [], "disturbed": other > 25,
         "generator_stalled": False, "other_cpu_pct": other}  # fmt: skip
    if steal is not None:
        s["steal_cpu_pct"] = steal
    return s


def test_a_disturbed_step_says_how_much_the_hypervisor_took() -> None:
    row = _step_row(step(88.0, 85.2))[-1]
    assert row == "disturbed (88% others, 85% stolen by the hypervisor)"
    assert "(others 88.0%, steal 85.2%)" in _one_line(step(88.0, 85.2))


def test_no_steal_no_word_of_it() -> None:
    assert _step_row(step(40.0, 0.0))[-1] == "disturbed (40% others)"
    assert "(others 40.0%)" in _one_line(step(40.0, 0.0))
    assert _step_row(step(40.0, None))[-1] == "disturbed (40% others)"  # an older record
    assert "(others 40.0%)" in _one_line(step(40.0, None))


def test_steal_is_read_from_the_machine() -> None:
    a = machine_steal_s()
    assert 0.0 <= a <= machine_steal_s()  # a counter since boot: never negative, never falls


def test_steal_alone_makes_a_step_disturbed() -> None:
    assert disturbed(other_pct=2.5, steal_pct=34.6, external=False, gen_stalled=False)
    assert disturbed(other_pct=0.0, steal_pct=30.0, external=True, gen_stalled=False)
    assert disturbed(other_pct=40.0, steal_pct=0.0, external=False, gen_stalled=False)
    assert not disturbed(other_pct=40.0, steal_pct=0.0, external=True, gen_stalled=False)
    assert not disturbed(other_pct=20.0, steal_pct=20.0, external=False, gen_stalled=False)
    assert disturbed(other_pct=0.0, steal_pct=0.0, external=False, gen_stalled=True)
