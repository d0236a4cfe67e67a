"""The quick/full summary and report carry the machine's wake-up cost (`bench.wake_cost`)."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.suite import LIGHT_RATE, REF_RATE, summarize


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
    assert "wake-up cost at 100 msgs/s (`python -m bench.wake_cost`): one loopback hop" in text
    assert "p50 61.5 µs, p90 123.0 µs" in text and "at 1000 msgs/s" in text
    assert "## Summary" not in text  # a partial run: nothing else was measured
