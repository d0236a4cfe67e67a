"""The arithmetic of `python -m bench floor_libs` (its runs are in tests/integration)."""

from __future__ import annotations

from typing import Any

from bench.studies.floor_libs import medians, row, table


def step(p50: float, cpu: float | None, disturbed: bool = False) -> dict[str, Any]:
    return {"latency": {"p50_ms": p50, "p99_ms": 2 * p50}, "node_cpu_us_per_delivery": cpu,
            "expected": 90, "unique": 90, "lost": 0, "dups": 0, "disturbed": disturbed}  # fmt: skip


def test_medians_leave_out_disturbed_rounds() -> None:
    rows = [
        {"round": 1, **row("picows", "ref", step(0.4, 10.0))},
        {"round": 2, **row("picows", "ref", step(9.0, 90.0, disturbed=True))},
        {"round": 3, **row("picows", "ref", step(0.2, 12.0))},
    ]
    (only,) = medians(rows)
    assert only == {"server": "picows", "load": "ref", "rounds": 2,  # and not flagged disturbed
                    "p50_ms": 0.3, "p99_ms": 0.6, "cpu_us_per_delivery": 11.0}  # fmt: skip


def test_medians_use_every_round_when_all_are_disturbed() -> None:
    rows = [
        {"round": i, **row("aiohttp", "light", step(p, 20.0, True))} for i, p in ((1, 1), (2, 3))
    ]
    (only,) = medians(rows)
    assert only["rounds"] == 2 and only["p50_ms"] == 2.0 and only["disturbed"] is True


def test_a_missing_figure_stays_missing() -> None:
    (only,) = medians([{"round": 1, **row("aiohttp", "ref", step(0.5, None))}])
    assert only["cpu_us_per_delivery"] is None and only["p50_ms"] == 0.5


def test_table_flags_disturbed_rows() -> None:
    text = table([{"round": 1, **row("picows", "light", step(0.4, 20.0, True))}], "round")
    assert text.splitlines()[2] == "| 1 | picows | light | 0.4 | 0.8 | 20.0 (disturbed) |"
