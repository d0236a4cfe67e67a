"""The quick/full summary and report carry the machine's wake-up cost (`bench.studies.wake_cost`)
and which interpreter ran, with how fast it runs plain Python."""

from __future__ import annotations

from typing import Any

from bench.harness import report
from bench.harness.machine import machine, python_loop_us
from bench.harness.runner import LIGHT_RATE, REF_RATE
from bench.summary import rooms_target, summarize


def wake(rate: float, p50: float) -> dict[str, Any]:
    return {"socket": "tcp", "rate": rate, "messages": 300,
            "send_us": {"p50": 1.0, "p90": 2.0}, "hop_us": {"p50": p50, "p90": 2 * p50},
            "round_trip_us": {"p50": 9.0, "p90": 9.5}}  # fmt: skip


def results(**extra: Any) -> dict[str, Any]:
    return {"mode": "full", "started": "2026-11-28T16:00:00+00:00", "duration_s": 10.0,
            "command": "python -m bench full --only hops", "quiet_waited_s": 0.0,
            "machine": {"cores": 2, "cpu": "x", "python": "3.11.7", "versions": {}},
            "scenarios": [], **extra}  # fmt: skip


def test_summary_gives_the_hop_at_light_and_reference_rate() -> None:
    summary, _ = summarize(results(machine_wake=[wake(LIGHT_RATE, 61.5), wake(REF_RATE, 14.0)]))
    assert summary["machine_hop_p50_us_light"] == 61.5
    assert summary["machine_hop_p50_us_ref"] == 14.0


def test_a_run_without_it_says_nothing() -> None:
    summary, _ = summarize(results())
    assert summary["machine_hop_p50_us_light"] is None
    assert summary["machine_hop_p50_us_ref"] is None


def test_report_shows_it_and_leaves_out_an_empty_summary() -> None:
    r = results(machine_wake=[wake(LIGHT_RATE, 61.5), wake(REF_RATE, 14.0)])
    r["summary"], r["targets"] = summarize(r)
    text = report.markdown(r, {})
    assert "wake-up cost at 100 msgs/s (`python -m bench wake_cost`): one loopback hop" in text
    assert "p50 61.5 µs, p90 123.0 µs" in text and "at 1000 msgs/s" in text
    assert "## Summary" not in text  # a partial run: nothing else was measured


def test_a_partial_run_with_the_machine_figures_still_has_no_summary() -> None:
    r = results(machine_wake=[wake(LIGHT_RATE, 61.5), wake(REF_RATE, 14.0)])
    r["machine"].update(python_prefix="/usr", python_configure=[], python_loop_us=215.4)
    r["summary"], r["targets"] = summarize(r)
    r["summary"]["max_steal_cpu_pct"] = 3.5  # as if a step had recorded it
    assert r["summary"]["machine_python_loop_us"] == 215.4  # context, not a measurement
    assert "## Summary" not in report.markdown(r, {})


def test_the_machine_record_names_the_interpreter_and_times_it() -> None:
    record = machine()
    assert record["python_prefix"] and isinstance(record["python_configure"], list)
    assert set(record["python_configure"]) <= {"--enable-optimizations", "--with-lto"}
    assert 1.0 < record["python_loop_us"] < 100_000.0  # a thousand loop turns: µs, not s or ns
    assert python_loop_us() > 0


def test_summary_and_report_carry_the_interpreter() -> None:
    r = results()
    r["machine"].update(python_prefix="/usr", python_configure=[], python_loop_us=215.4)
    r["summary"], r["targets"] = summarize(r)
    assert r["summary"]["machine_python_loop_us"] == 215.4
    text = report.markdown(r, {})
    assert "3.11.7 (from /usr; configure arguments list neither --enable-optimizations" in text
    assert "a fixed Python loop takes 215.4 µs" in text


def test_a_run_recorded_before_it_still_reports() -> None:
    r = results()  # its machine record has no python_loop_us
    r["summary"], r["targets"] = summarize(r)
    assert r["summary"]["machine_python_loop_us"] is None
    assert "- machine: 2 cores (x), Python 3.11.7, {}" in report.markdown(r, {})


def test_summary_gives_the_most_steal_of_any_step() -> None:
    steps = [{"steal_cpu_pct": 3.5}, {"steal_cpu_pct": 58.7}, {}]  # {}: recorded before it was
    summary, _ = summarize(results(scenarios=[{"label": "x", "system": "peer", "steps": steps}]))
    assert summary["max_steal_cpu_pct"] == 58.7
    assert summarize(results())[0]["max_steal_cpu_pct"] is None


def ref_step(cpu: float | None, tag: str = "ref", **extra: Any) -> dict[str, Any]:
    return {"tag": tag, "node_cpu_us_per_delivery": cpu, "latency": {"p99_ms": 2.0},
            "gc_pause_ms": [0.0, 0.0], **extra}  # fmt: skip


def test_the_1000_room_row_compares_medians_of_steps_taken_in_turn() -> None:
    big = [ref_step(40.0), ref_step(33.0), ref_step(35.0)]
    small = [ref_step(30.0), ref_step(29.0), ref_step(31.0)]
    row = rooms_target(big, small, earlier=27.0)
    assert (row["big"], row["small"]) == (35.0, 30.0)
    assert row["measured"] == round(35.0 / 30.0, 3) and row["limit"] == 1.3
    assert (
        "against the 10-room step of the topologies, minutes earlier (27.0 µs): 1.296"
        in row["note"]
    )


def test_a_disturbed_step_gives_way_to_its_rerun() -> None:
    big = [ref_step(90.0, tag="ref (disturbed)"), ref_step(36.0)]
    small = [ref_step(30.0), ref_step(15.0, tag="ref (disturbed)")]
    row = rooms_target(big, small, earlier=None)
    assert (row["big"], row["small"]) == (36.0, 30.0)


def test_a_step_with_losses_makes_the_row_inconclusive() -> None:
    big = [ref_step(36.0), ref_step(35.0, lost=3)]
    small = [ref_step(30.0)]
    r = results()
    r["targets_extra"] = [rooms_target(big, small, earlier=30.0)]
    (row,) = [t for t in summarize(r)[1] if t["target"].startswith("node CPU/delivery at 1,000")]
    assert row["note"].startswith("inconclusive: 1 of the steps had errors")
    assert row["met"] is None


def test_the_report_names_the_cpu_rows_read_below_capacity() -> None:
    r = results()
    r["summary"], r["targets"] = summarize(r)
    flagged = [t["target"] for t in r["targets"] if t.get("below_capacity")]
    assert len(flagged) == 3 and all("knee" not in t or "peer's knee load" in t for t in flagged)
    for t in r["targets"]:
        t["measured"] = 1.0  # as if measured
    text = report.markdown(r, {})
    assert "docs/decisions/0006-cpu-targets-at-capacity.md" in text
    assert "reported for information: node CPU/delivery ≤ 2× floor (at the reference load);" in text
    assert "each at its own knee" not in text.split("reported for information:")[1].split("\n")[0]


def test_without_the_topologies_the_note_leaves_out_the_earlier_step() -> None:
    row = rooms_target([ref_step(36.0)], [ref_step(30.0)], earlier=None)
    assert "minutes earlier" not in row["note"] and "None" not in row["note"]


def test_a_rerun_disturbed_too_is_left_out_unless_all_were() -> None:
    big = [ref_step(35.0), ref_step(99.0, disturbed=True), ref_step(38.0)]
    small = [ref_step(30.0, disturbed=True), ref_step(34.0, disturbed=True)]
    row = rooms_target(big, small, earlier=None)
    assert row["big"] == 36.5  # 35 and 38; the disturbed 99 left out
    assert row["small"] == 32.0  # every 10-room step disturbed: all of them, and it says so
    assert row["note"].startswith("every step of one side was disturbed; medians of 2 and 2 steps")
    assert "99.0 µs (p99 2.0 ms, GC [0.0, 0.0] ms, disturbed)" in row["note"]


def test_the_10_room_deployment_beside_the_1000_is_not_drawn_as_a_system() -> None:
    base = {"payload": 256, "kind": "app", "participants": 10, "rooms": 10}
    assert report._is_main({**base, "label": "roomstate 2 nodes + Redis"})
    assert not report._is_main({**base, "label": "x, in turn", "beside": "1000 rooms"})
