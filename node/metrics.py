"""Prometheus metrics of one node, in a registry of its own (several nodes can share a process
in tests)."""

from __future__ import annotations

import bisect
import gc
import platform
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from roomstate import __version__

__all__ = ["GC_PAUSES", "BusMetrics", "GcPauses", "Metrics", "PlainHistogram", "WebhookMetrics"]


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


class BusMetrics(Collector):
    """The bus's own health, kept by the bus as plain numbers (its hot path takes no lock) and
    exported at scrape time. The counters a thread of the bus adds to (the lease keeper's) are
    written by that thread only."""

    PUBLISH_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self) -> None:
        self.publish_latency = PlainHistogram(
            "roomstate_bus_publish_latency_seconds",
            "From sending an event to the store to its answer (stored, or refused by the lease"
            " check); writes that got no answer are not counted",
            self.PUBLISH_BUCKETS,
        )
        self.fenced_writes = 0  # writes the store refused: their incarnation had lost the lease
        self.lease_losses = 0  # renewals that found the lease taken or expired: the node fences
        # Connections to the store opened again after one was lost (a sum over the bus's parts).
        self.reconnects: Callable[[], int] = lambda: 0
        # Seconds since the lease was last confirmed held (its oldest copy); None: not held yet.
        self.lease_age: Callable[[], float | None] = lambda: None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield from self.publish_latency.collect()
        yield CounterMetricFamily(
            "roomstate_bus_reconnects",
            "Connections to Redis opened again after one was lost (publishing, reading, lease)",
            value=self.reconnects(),
        )
        yield CounterMetricFamily(
            "roomstate_bus_fenced_writes",
            "Writes Redis refused because this node's incarnation no longer held its lease",
            value=self.fenced_writes,
        )
        yield CounterMetricFamily(
            "roomstate_lease_losses",
            "Lease renewals that found this node's lease taken or expired (the node fences:"
            " closes its clients and comes back as a new incarnation)",
            value=self.lease_losses,
        )
        age = self.lease_age()
        family = GaugeMetricFamily(
            "roomstate_lease_age_seconds",
            "Seconds since this node's lease was last confirmed held (its oldest copy, in a"
            " Cluster); renewed every second, lost after 5 s. Absent while no lease is held",
        )
        if age is not None:
            family.add_metric([], age)
        yield family


class WebhookMetrics(Collector):
    """Webhook delivery (roomstate.webhooks.delivery), kept as plain numbers by the deliverer."""

    def __init__(self) -> None:
        self.delivered = 0  # events every receiver took (2xx)
        self.failures = 0  # requests that failed (not 2xx, refused, timed out)
        self.retries = 0  # events tried again after a failure
        self.dead_letters = 0  # events given up on, kept in the dead letters
        self.backlog = 0  # events recorded and not yet delivered, fleet-wide (when last read)
        self.lag = PlainHistogram(
            "roomstate_webhook_lag_seconds",
            "From recording an event (in the store) to its delivery to every receiver",
            (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
        )
        self.observe_lag = self.lag.observe

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        for name, value, text in (
            ("delivered", self.delivered, "Webhook events every receiver took"),
            ("failures", self.failures, "Webhook requests that failed (not 2xx, or no answer)"),
            ("retries", self.retries, "Webhook events tried again after a failure"),
            ("dead_letters", self.dead_letters, "Webhook events given up on (dead letters)"),
        ):
            yield CounterMetricFamily(f"roomstate_webhook_{name}", text, value=value)
        yield GaugeMetricFamily(
            "roomstate_webhook_backlog",
            "Webhook events recorded and not yet delivered, fleet-wide (read every few seconds)",
            value=self.backlog,
        )
        yield from self.lag.collect()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        GC_PAUSES.install()
        r.register(GC_PAUSES)
        ProcessCollector(registry=r)  # process_*: CPU, memory, open files
        PlatformCollector(registry=r)  # python_info
        Gauge(
            "roomstate_build_info",
            "Always 1; the labels name the roomstate version and the Python running it",
            ["version", "python"],
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        self._bus: BusMetrics | None = None
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

    def watch_bus(self, bus: BusMetrics) -> None:
        """Export `bus`'s metrics too (once: a node's bus does not change)."""
        if self._bus is None:
            self._bus = bus
            self.registry.register(bus)

    def watch_webhooks(self, webhooks: WebhookMetrics) -> None:
        """Export the webhook deliverer's metrics too."""
        self.registry.register(webhooks)

    def frame_in(self, kind: str) -> None:
        self.frames_in.counts[kind] += 1

    def frames_sent(self, kind: str, count: int = 1) -> None:
        self.frames_out.counts[kind] += count
