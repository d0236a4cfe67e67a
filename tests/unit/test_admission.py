"""Shedding joins for load (edge/admission.py): the refusal names its limit and carries a
jittered `retryAfter`; the loop's lag is measured from a timer."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from roomstate.bus import MemoryBus
from roomstate.edge.admission import RETRY_MAX_MS, RETRY_MIN_MS, Admission, LoopLag
from roomstate.edge.identity import Identity
from roomstate.errors import RequestError
from roomstate.metrics import Metrics
from roomstate.wire.protocol import encode_error


def admission(**kw: object) -> Admission:
    return Admission(MemoryBus(), Identity("n"), 500, lambda: 0, **kw)  # type: ignore[arg-type]


def test_joins_past_the_bound_in_flight_are_shed_with_a_jittered_retry_after() -> None:
    metrics = Metrics()
    a = admission(max_joins_in_flight=3, metrics=metrics)
    a.joins_in_flight = 2
    a.refuse_if_at_capacity()  # under the bound: taken
    a.joins_in_flight = 3
    delays = set()
    for _ in range(20):
        with pytest.raises(RequestError) as refused:
            a.refuse_if_at_capacity()
        exc = refused.value
        assert exc.code == "unavailable"
        assert "at capacity (3 joins under way; the limit is 3)" in exc.message
        assert exc.retry_after_ms is not None
        assert RETRY_MIN_MS <= exc.retry_after_ms <= 2 * RETRY_MAX_MS
        assert f"retry after {exc.retry_after_ms / 1000:.1f} s" in exc.message
        delays.add(exc.retry_after_ms)
    assert len(delays) > 1, "every refused client is told the same delay"
    assert metrics.joins_shed.labels("joins-in-flight")._value.get() == 20


async def test_a_join_right_after_a_stall_of_the_loop_is_shed() -> None:
    a = admission(max_loop_lag_ms=50)
    a.loop_lag.start()
    try:
        a.refuse_if_at_capacity()
        time.sleep(0.3)  # the loop stands still; the lag timer is overdue
        with pytest.raises(RequestError, match=r"its event loop runs \d+ ms late; the limit"):
            a.refuse_if_at_capacity()
    finally:
        a.loop_lag.stop()


async def test_the_loop_lag_is_measured_and_forgotten_after_its_window() -> None:
    seen: list[float] = []
    lag = LoopLag(seen.append)
    lag.start()
    try:
        await asyncio.sleep(0.25)
        time.sleep(0.3)
        await asyncio.sleep(0.05)
        assert max(seen) >= 0.15  # the timer fell due at most 0.1 s into the stall
        assert lag.lag_s() >= 0.15
        before = lag.turned_at
        await asyncio.sleep(LoopLag.WINDOW_S + 0.3)
        assert lag.lag_s() < 0.15, "a stall is held against the node for longer than its window"
        assert lag.turned_at > before
    finally:
        lag.stop()


def test_an_error_frame_carries_retry_after_only_when_given() -> None:
    assert "retryAfter" not in orjson.loads(encode_error("1", "unavailable", "down"))
    frame = orjson.loads(encode_error("1", "unavailable", "at capacity", 1300))
    assert frame == {
        "type": "error",
        "id": "1",
        "code": "unavailable",
        "message": "at capacity",
        "retryAfter": 1300,
    }
