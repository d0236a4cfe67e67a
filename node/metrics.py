"""Prometheus metrics of one node, in a registry of its own (several nodes can share a process
in tests)."""

from __future__ import annotations

import bisect
import gc
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["GC_PAUSES", "GcPauses", "Metrics", "PlainHistogram"]


class FrameCounts(Collector):
    """A counter by frame type kept as plain integers and turned into a Prometheus counter
    family at scrape time. Counting a frame is then a dict update, not a labelled counter's
    lookup, lock and checks (5 % of a loaded node's CPU when it was done per recipient)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.counts: Tally[str] = Tally()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["type"])
        for kind, count in sorted(self.counts.items()):
            family.add_metric([kind], count)
        yield family


class PlainCounter(Collector):
    """A counter without labels kept as a plain integer (`value`), exported at scrape time: for
    a count made on the hot path, where a `prometheus_client.Counter`'s lock would cost more."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


class PlainHistogram(Collector):
    """A histogram kept as plain integers and turned into a Prometheus histogram family at
    scrape time: observing is a bisection and two additions, without `prometheus_client`'s lock
    per bucket and per sum (an event loop observes from one thread). Series by the values of one
    optional label, each given up front."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: tuple[float, ...],
        label: str | None = None,
        values: tuple[str, ...] = ("",),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        self.label = label
        # per label value: observations per bucket (`le`, not cumulative; the last: over all)
        self.counts = {v: [0] * (len(buckets) + 1) for v in values}
        self.sums = dict.fromkeys(values, 0.0)

    def observe(self, value: float, label_value: str = "") -> None:
        self.counts[label_value][bisect.bisect_left(self.bounds, value)] += 1
        self.sums[label_value] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        labels = [self.label] if self.label is not None else []
        family = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        for value, counts in self.counts.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([value] if labels else [], buckets, self.sums[value])
        yield family


class GcPauses(Collector):
    """How long Python's cyclic garbage collector stopped the process, by generation, as a
    histogram (``roomstate_gc_pause_seconds``). A full (generation 2) collection walks every
    tracked object, so its pause grows with the connections a node holds: the figure to look at
    when a node's p99 latency has spikes. Process-wide (the collector is); counted from
    `gc.callbacks`."""

    BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self) -> None:
        self.histogram = PlainHistogram(
            "roomstate_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, by generation (2: full collection)",
            self.BUCKETS,
            label="generation",
            values=("0", "1", "2"),
        )
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.histogram.observe(time.perf_counter() - self._started, str(info["generation"]))

    def collect(self) -> Iterator[HistogramMetricFamily]:
        return self.histogram.collect()


GC_PAUSES = GcPauses()  # one per process, like the collector it watches


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        GC_PAUSES.install()
        r.register(GC_PAUSES)
        self.connections = Gauge("roomstate_connections", "Open WebSocket connections", registry=r)
        self.rooms = Gauge("roomstate_rooms", "Rooms with participants on this node", registry=r)
        self.frames_in = FrameCounts("roomstate_frames_in", "Client frames received, by type")
        self.frames_out = FrameCounts("roomstate_frames_out", "Frames sent to clients, by type")
        self.client_writes = PlainCounter(
            "roomstate_client_writes",
            "Writes to client sockets of the frames one client got in one event-loop iteration"
            " (frames_out / client_writes: frames per write; frames a slow client had queued"
            " are not counted)",
        )
        r.register(self.frames_in)
        r.register(self.frames_out)
        r.register(self.client_writes)
        self.errors = Counter(
            "roomstate_errors", "Error frames sent to clients, by code", ["code"], registry=r
        )
        self.delivery_latency = PlainHistogram(
            "roomstate_delivery_latency_seconds",
            "From publishing an event on one node to handing it to clients on this one",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        r.register(self.delivery_latency)
        self.clock_drift = Counter(
            "roomstate_stamps_over_drift_bound",
            "Stamps seen in delivered events that were ahead of the local clock by more than"
            " the drift bound (merged anyway: they are already history)",
            registry=r,
        )
        self.loop_lag = PlainHistogram(
            "roomstate_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 100 ms (a busy loop runs it late)",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        r.register(self.loop_lag)
        self.joins_shed = Counter(
            "roomstate_joins_shed",
            "Joins refused for load (a retryable unavailable with retryAfter), by reason:"
            " loop-lag or joins-in-flight",
            ["reason"],
            registry=r,
        )
        self.slow_consumers = Counter(
            "roomstate_slow_consumer_disconnects",
            "Connections closed because their send queue passed the limit",
            registry=r,
        )

    def frame_in(self, kind: str) -> None:
        self.frames_in.counts[kind] += 1

    def frames_sent(self, kind: str, count: int = 1) -> None:
        self.frames_out.counts[kind] += count
