"""The garbage-collector pause histogram (node/metrics.py)."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, generate_latest

from node.metrics import GcPauses


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
    assert sum(pauses.counts[2]) == 1
    assert sum(pauses.counts[0]) >= 1  # and any automatic ones meanwhile
    assert pauses.sums[2] > 0

    registry = CollectorRegistry()
    registry.register(pauses)
    text = generate_latest(registry).decode()
    assert 'roomstate_gc_pause_seconds_count{generation="2"} 1.0' in text
    # Buckets are cumulative: the +Inf bucket holds every collection of the generation.
    assert 'roomstate_gc_pause_seconds_bucket{generation="2",le="+Inf"} 1.0' in text
