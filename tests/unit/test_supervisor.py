"""The supervisor's restart policy (pure) and its hold on the port."""

from __future__ import annotations

import socket

import pytest

from roomstate.supervisor import CRASH_LOOP, QUICK_S, Restarts, reserve_port


def test_a_worker_that_keeps_dying_quickly_waits_longer_each_time_then_is_a_crash_loop() -> None:
    restarts = Restarts(quick_s=10, limit=5, first_s=0.5, max_s=3)
    assert [restarts.died(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, None]


def test_a_worker_that_ran_long_enough_starts_again_soon_and_its_count_resets() -> None:
    restarts = Restarts()
    for _ in range(CRASH_LOOP - 1):
        assert restarts.died(0.1) is not None
    assert restarts.died(QUICK_S) == restarts.first_s
    assert restarts.quick_deaths == 0
    assert restarts.died(0.1) == restarts.first_s  # a new count: no crash loop yet


def test_the_reserved_port_is_shared_with_reuse_port_listeners_only() -> None:
    held, port = reserve_port("127.0.0.1", 0)
    try:
        assert port > 0
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # a node without --reuse-port cannot take it
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
            worker.settimeout(2)
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                accepted, _ = worker.accept()  # the held socket takes no connection
                accepted.close()
    finally:
        held.close()
