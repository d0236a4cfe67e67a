"""`python -m bench hops`'s arithmetic: which mark belongs to which message, and where."""

from __future__ import annotations

from bench.harness.common import make_key, percentile
from bench.studies.hop_probe import key_of
from bench.studies.hops import hop_times


def test_key_of_is_the_actual_send_time() -> None:
    key = make_key(sched_ns=5_000_000_000, offset_us=42, step=1, sender=3, seq=9, node=1)
    assert key_of(key) == 5_000_042_000
    assert key_of(key.encode()) == 5_000_042_000


def test_hop_times_follow_each_message_through_sender_and_other_node() -> None:
    k1, k2 = 1_000_000, 9_000_000  # two messages, sent at these ns
    node_a = [  # took k1 from its client, then got k2 as a push
        ("client frame read", 0, k1 + 200_000),  # carries the previous key: no key yet
        ("request handled", k1, k1 + 300_000),
        ("redis write done", k1, k1 + 400_000),
        ("redis reply read", k1, k1 + 600_000),
        ("client writes start", k1, k1 + 700_000),
        ("client writes done", k1, k1 + 750_000),
        ("redis push read", k2, k2 + 500_000),
        ("client writes start", k2, k2 + 650_000),
        ("client writes done", k2, k2 + 700_000),
    ]
    node_b = [  # the other way round
        ("redis push read", k1, k1 + 550_000),
        ("client writes start", k1, k1 + 640_000),
        ("client writes done", k1, k1 + 900_000),
        ("client frame read", k1, k2 + 100_000),
        ("request handled", k2, k2 + 150_000),
        ("redis write done", k2, k2 + 250_000),
        ("redis write done", k2, k2 + 260_000),  # a later write: only the first counts
    ]
    times = hop_times([node_a, node_b])
    assert times["sender"]["client frame read"] == [200.0, 100.0]
    assert times["sender"]["request handled"] == [300.0, 150.0]
    assert times["sender"]["redis write done"] == [400.0, 250.0]
    assert times["sender"]["redis reply read"] == [600.0]
    assert times["other"]["redis push read"] == [550.0, 500.0]
    assert times["other"]["client writes start"] == [640.0, 650.0]
    assert times["other"]["client writes done"] == [900.0, 700.0]
    assert "redis reply read" not in times["other"]


def test_percentile() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) == 6.0
    assert percentile(values, 0.9) == 10.0
    assert percentile([3.0], 0.99) == 3.0


def test_messages_handled_at_once_are_left_out() -> None:
    k1, k2, k3 = 1_000_000, 2_000_000, 9_000_000
    node = [
        ("request handled", k1, k1 + 100_000),
        ("request handled", k2, k2 + 100_000),  # k2 arrives before k1 is done
        ("redis reply read", k1, k1 + 1_500_000),  # (the probe would have noted it as k2)
        ("request handled", k3, k3 + 100_000),
        ("redis write done", k3, k3 + 200_000),
    ]
    times = hop_times([node])
    assert times["sender"]["request handled"] == [100.0]  # k3 only
    assert times["sender"]["redis write done"] == [200.0]
