"""`bench.paired`: the CPU ratios from steps measured in turn, and how the full run reports them."""

from __future__ import annotations

from typing import Any

from bench import paired, report
from bench.suite import summarize


def row(
    i: int, system: str, load: str, us: float | None, disturbed: bool = False
) -> dict[str, Any]:
    return {"round": i, "system": system, "load": load, "rate": 1000.0,
            "deliveries_per_s": 9000, "cpu_us_per_delivery": us, "p99_ms": 2.0, "lost": 0,
            "disturbed": disturbed}  # fmt: skip


def one_round(i: int, ours: tuple[float, float], floor: tuple[float, float],
              peer: tuple[float, float], disturbed: str = "") -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for load, k in (("ref", 0), ("knee", 1)):
        out += [row(i, "ours", load, ours[k]),
                row(i, "floor", load, floor[k], disturbed == f"floor {load}"),
                row(i, "peer", load, peer[k])]  # fmt: skip
    return out


def test_each_round_gives_the_four_ratios_and_the_median_is_of_the_quiet_rounds() -> None:
    rows = [
        *one_round(1, (30.0, 6.0), (5.0, 3.0), (75.0, 60.0)),
        *one_round(2, (33.0, 6.6), (5.5, 3.0), (66.0, 55.0)),
        *one_round(3, (40.0, 9.0), (4.0, 3.0), (80.0, 50.0), disturbed="floor knee"),
    ]
    r = paired.ratios(rows)
    assert [x["value"] for x in r["floor_ref"]["rounds"]] == [6.0, 6.0, 10.0]
    assert r["floor_ref"]["median"] == 6.0 and r["floor_ref"]["used"] == 3
    assert [x["value"] for x in r["peer_ref"]["rounds"]] == [0.4, 0.5, 0.5]
    # round 3's floor step at the knee was disturbed: that ratio leaves it out, the others not
    assert [x["disturbed"] for x in r["floor_knee"]["rounds"]] == [False, False, True]
    assert r["floor_knee"]["used"] == 2
    assert (r["floor_knee"]["median"], r["floor_knee"]["min"], r["floor_knee"]["max"]) == (
        2.1, 2.0, 2.2,
    )  # fmt: skip
    assert r["peer_knee"]["median"] == 0.12 and "disturbed" not in r["peer_knee"]


def test_with_every_round_disturbed_the_median_is_of_all_and_flagged() -> None:
    rows = one_round(1, (30.0, 6.0), (5.0, 3.0), (75.0, 60.0), disturbed="floor ref")
    r = paired.ratios(rows)
    assert r["floor_ref"]["median"] == 6.0 and r["floor_ref"]["disturbed"] is True
    assert "disturbed" not in r["peer_ref"]


def test_a_step_without_a_cpu_figure_gives_no_ratio_for_its_round() -> None:
    rows = one_round(1, (30.0, 6.0), (5.0, 3.0), (75.0, 60.0))
    rows[1]["cpu_us_per_delivery"] = None  # the floor's reference step measured nothing
    r = paired.ratios(rows)
    assert r["floor_ref"] == {"rounds": [], "used": 0}
    assert r["peer_ref"]["median"] == 0.4


def test_the_plan_puts_the_floor_at_the_deliveries_of_the_step_before_it() -> None:
    steps = paired.plan(knee=17_415.0, peer_knee=2_775.0, ref_rate=1000.0, receivers=99)
    assert [(s, load) for s, load, _ in steps] == [
        ("ours", "ref"), ("floor", "ref"), ("peer", "ref"),
        ("ours", "knee"), ("floor", "knee"), ("peer", "knee"),
    ]  # fmt: skip
    rates = [rate for _, _, rate in steps]
    assert rates[1] * 99 == rates[0] * 9 and rates[4] * 99 == rates[3] * 9
    assert rates[5] == 2_775.0


def full_results(**extra: Any) -> dict[str, Any]:
    return {"mode": "full", "started": "2026-11-29T01:00:00+00:00", "duration_s": 10.0,
            "command": "python -m bench full", "quiet_waited_s": 0.0,
            "machine": {"cores": 2, "cpu": "x", "python": "3.11.7", "versions": {}},
            "scenarios": [], **extra}  # fmt: skip


def test_the_full_run_reports_them_in_its_summary_targets_and_report() -> None:
    rows = [*one_round(1, (30.0, 6.0), (5.0, 3.0), (75.0, 60.0)),
            *one_round(2, (33.0, 6.6), (5.5, 3.0), (66.0, 55.0))]  # fmt: skip
    pr = {"knee_msgs_per_s": 17415.0, "peer_knee_msgs_per_s": 2775.0, "ref_msgs_per_s": 1000.0,
          "seconds": 3.0, "rows": rows, "ratios": paired.ratios(rows)}  # fmt: skip
    r = full_results(paired=pr)
    r["summary"], r["targets"] = summarize(r)
    assert r["summary"]["paired_floor_ratio_ref"] == 6.0
    assert r["summary"]["paired_peer_ratio_ref"] == 0.45
    assert r["summary"]["paired_floor_ratio_knee"] == 2.1
    assert r["summary"]["paired_peer_ratio_knee"] == 0.11
    notes = {t["target"]: t.get("note", "") for t in r["targets"]}
    knee_row = "node CPU/delivery ≤ 2× floor, both at our knee's deliveries/s"
    assert notes[knee_row] == (
        "measured in turn, in the same minutes: median 2.1 of 2 rounds (range 2.0–2.2)"
    )
    text = report.markdown(r, {})
    assert "## CPU ratios measured in turn (`python -m bench.paired`)" in text
    assert "| roomstate / floor, both at our knee's deliveries/s | 2.1 | 2.0–2.2 | 2 |" in text


def test_a_run_without_them_has_no_such_keys_filled_nor_notes() -> None:
    r = full_results()
    r["summary"], r["targets"] = summarize(r)
    assert r["summary"]["paired_floor_ratio_knee"] is None
    assert all("measured in turn" not in t.get("note", "") for t in r["targets"])
    assert "CPU ratios measured in turn" not in report.markdown(r, {})
