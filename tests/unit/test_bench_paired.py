"""`bench.studies.paired`: the CPU ratios from steps measured in turn, and how the full run
reports them."""

from __future__ import annotations

from typing import Any

from bench.harness import report
from bench.studies import paired
from bench.summary import summarize
from tests.unit.test_bench_suite import results as full_results


def row(
    i: int, system: str, load: str, us: float | None, disturbed: bool = False
) -> dict[str, Any]:
    return {"round": i, "system": system, "load": load, "rate": 1000.0,
            "deliveries_per_s": 9000, "cpu_us_per_delivery": us, "p99_ms": 2.0, "lost": 0,
            "disturbed": disturbed}  # fmt: skip


def one_round(i: int, ours: tuple[float, float], floor: tuple[float, float],
              peer: tuple[float, float], disturbed: str = "") -> list[dict[str, Any]]:  # fmt: skip
    """A round's six steps; `disturbed` names one of them ("floor knee", "ours ref", ...)."""
    out = []
    for load, k in (("ref", 0), ("knee", 1)):
        out += [row(i, system, load, us[k], disturbed == f"{system} {load}")
                for system, us in (("ours", ours), ("floor", floor), ("peer", peer))]  # fmt: skip
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


def test_a_disturbed_step_of_roomstate_leaves_its_round_out_of_both_its_ratios() -> None:
    rows = [
        *one_round(1, (30.0, 6.0), (5.0, 3.0), (75.0, 60.0), disturbed="ours ref"),
        *one_round(2, (33.0, 6.6), (5.5, 3.0), (66.0, 55.0)),
    ]
    r = paired.ratios(rows)
    for name in ("floor_ref", "peer_ref"):
        assert [x["disturbed"] for x in r[name]["rounds"]] == [True, False]
        assert r[name]["used"] == 1
    assert (r["floor_ref"]["median"], r["peer_ref"]["median"]) == (6.0, 0.5)
    assert r["floor_knee"]["used"] == 2 and r["peer_knee"]["used"] == 2


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
    assert rates[0] == 1000.0 and rates[3] == 17_415.0 and rates[5] == 2_775.0
    assert abs(rates[1] - 1000.0 * 9 / 99) < 1e-9 and abs(rates[4] - 17_415.0 * 9 / 99) < 1e-9


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
    said = "measured in turn, in the same minutes: median"
    assert notes == {
        **notes,
        "node CPU/delivery ≤ 2× floor (at the reference load)":
            f"{said} 6.0 of 2 rounds (range 6.0–6.0)",
        "node CPU/delivery ≤ 1/5 of the peer's (reference load)":
            f"{said} 0.45 of 2 rounds (range 0.4–0.5)",
        "node CPU/delivery ≤ 2× floor, both at our knee's deliveries/s":
            f"{said} 2.1 of 2 rounds (range 2.0–2.2)",
        "node CPU/delivery ≤ 1/5 of the peer's, each at its own knee":
            f"{said} 0.11 of 2 rounds (range 0.1–0.12)",
    }  # fmt: skip
    assert sum(said in n for n in notes.values()) == 4  # and no other row has one
    text = report.markdown(r, {})
    assert "## CPU ratios measured in turn (`python -m bench paired`)" in text
    assert "| roomstate / floor, both at our knee's deliveries/s | 2.1 | 2.0–2.2 | 2 |" in text


def test_the_steps_measured_in_turn_count_in_disturbed_steps_and_steal() -> None:
    rows = one_round(1, (30.0, 6.0), (5.0, 3.0), (75.0, 60.0), disturbed="peer knee")
    rows[2]["steal_cpu_pct"] = 4.5
    pr = {"knee_msgs_per_s": 17415.0, "peer_knee_msgs_per_s": 2775.0, "ref_msgs_per_s": 1000.0,
          "seconds": 3.0, "rows": rows, "ratios": paired.ratios(rows)}  # fmt: skip
    summary, _ = summarize(full_results(paired=pr))
    assert summary["disturbed_steps"] == 1 and summary["max_steal_cpu_pct"] == 4.5


def test_a_run_without_them_has_no_such_keys_filled_nor_notes() -> None:
    r = full_results()
    r["summary"], r["targets"] = summarize(r)
    assert r["summary"]["paired_floor_ratio_knee"] is None
    assert all("measured in turn" not in t.get("note", "") for t in r["targets"])
    assert "CPU ratios measured in turn" not in report.markdown(r, {})
