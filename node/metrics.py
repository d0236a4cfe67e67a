"""Prometheus metrics of one node, in a registry of its own (several nodes can share a process
in tests)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]


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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("roomstate_connections", "Open WebSocket connections", registry=r)
        self.rooms = Gauge("roomstate_rooms", "Rooms with participants on this node", registry=r)
        self.frames_in = FrameCounts("roomstate_frames_in", "Client frames received, by type")
        self.frames_out = FrameCounts("roomstate_frames_out", "Frames sent to clients, by type")
        r.register(self.frames_in)
        r.register(self.frames_out)
        self.errors = Counter(
            "roomstate_errors", "Error frames sent to clients, by code", ["code"], registry=r
        )
        self.delivery_latency = Histogram(
            "roomstate_delivery_latency_seconds",
            "From publishing an event on one node to handing it to clients on this one",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.clock_drift = Counter(
            "roomstate_stamps_over_drift_bound",
            "Stamps seen in delivered events that were ahead of the local clock by more than"
            " the drift bound (merged anyway: they are already history)",
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
