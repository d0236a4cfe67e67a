"""Histograms kept as plain integers, and the garbage-collector pauses (node/metrics.py)."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, generate_latest

from roomstate.metrics import GcPauses, PlainHistogram


def test_gc_pauses_counts_each_collection_by_generation() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # idempotent: one callback
    try:
        assert gc.callbacks.count(pauses._on_gc) == 1
        gc.collect()
        gc.collect(0)
    finally:
        gc.callbacks.remove(pauses._on_gc)
    counts, sums = pauses.histogram.counts, pauses.histogram.sums
    assert sum(counts["2"]) == 1
    assert sum(counts["0"]) >= 1  # and any automatic ones meanwhile
    assert sums["2"] > 0

    registry = CollectorRegistry()
    registry.register(pauses)
    text = generate_latest(registry).decode()
    assert 'roomstate_gc_pause_seconds_count{generation="2"} 1.0' in text
    # Buckets are cumulative: the +Inf bucket holds every collection of the generation.
    assert 'roomstate_gc_pause_seconds_bucket{generation="2",le="+Inf"} 1.0' in text


def test_plain_histogram_buckets_are_le_and_cumulative_as_prometheus_has_them() -> None:
    latency = PlainHistogram("x_seconds", "x", (0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 0.5):  # 0.001 falls in le="0.001": bounds include
        latency.observe(value)
    registry = CollectorRegistry()
    registry.register(latency)
    text = generate_latest(registry).decode()
    assert 'x_seconds_bucket{le="0.001"} 2.0' in text
    assert 'x_seconds_bucket{le="0.01"} 3.0' in text
    assert 'x_seconds_bucket{le="+Inf"} 4.0' in text
    assert "x_seconds_count 4.0" in text
    assert "x_seconds_sum 0.5035" in text
