"""Prometheus metrics of one node, in a registry of its own (several nodes can share a process
in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("roomstate_connections", "Open WebSocket connections", registry=r)
        self.rooms = Gauge("roomstate_rooms", "Rooms with participants on this node", registry=r)
        self.frames_in = Counter(
            "roomstate_frames_in", "Client frames received, by type", ["type"], registry=r
        )
        self.frames_out = Counter(
            "roomstate_frames_out", "Frames sent to clients, by type", ["type"], registry=r
        )
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
        # Label children bound once: `labels()` per frame was 5 % of a loaded node's CPU.
        self._in: dict[str, Counter] = {}
        self._out: dict[str, Counter] = {}

    def frame_in(self, kind: str) -> None:
        child = self._in.get(kind)
        if child is None:
            child = self._in[kind] = self.frames_in.labels(kind)
        child.inc()

    def frames_sent(self, kind: str, count: int = 1) -> None:
        child = self._out.get(kind)
        if child is None:
            child = self._out[kind] = self.frames_out.labels(kind)
        child.inc(count)
