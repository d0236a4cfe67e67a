"""Shared by the bench orchestrator and its load generators: the message key, histograms, CPU.

Every benchmark message carries one fixed-width ASCII key in its data, ``{"k": KEY, "p": PAD}``,
so a receiver finds it with one ``bytes.find`` whatever wraps it (a roomstate ``app-message`` or
``participant-updated`` frame, a Socket.IO ``42["msg", ...]`` packet, the floor's raw frame):

    KEY = SCHED(20) OFFSET(8) STEP(2) SENDER(6) SEQ(7) NODE(1)            44 characters

- SCHED: the message's scheduled time, ``time.monotonic_ns()`` (CLOCK_MONOTONIC is shared by all
  processes of one host), so latency = receive time - scheduled time (open loop: a late sender
  counts against the system, nothing hides queueing);
- OFFSET: actual send time - scheduled time, in microseconds (the generator's own lateness), so
  the latency "from the actual send" can be reported too;
- STEP: the run step (a late frame of an earlier step is ignored);
- SENDER: the sender's global rank; SEQ: its message number in the step;
- NODE: the index of the node the sender is connected to (same-node vs cross-node latency).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psutil
from hdrh.histogram import HdrHistogram

KEY_LEN = 44
KEY_MARK = b'"k":"'
HIST_MAX_US = 120_000_000  # 2 minutes: anything later is clamped
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
CDF_POINTS = (
    0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.0, 98.0,
    99.0, 99.5, 99.7, 99.9, 99.95, 99.99, 100.0,
)  # fmt: skip


def make_key(sched_ns: int, offset_us: int, step: int, sender: int, seq: int, node: int) -> str:
    offset_us = min(max(offset_us, 0), 99_999_999)
    return f"{sched_ns:020d}{offset_us:08d}{step:02d}{sender:06d}{seq:07d}{node:01d}"


def pad_for(payload: int) -> str:
    """The filler that makes ``{"k":"KEY","p":"PAD"}`` exactly `payload` bytes of JSON."""
    overhead = len('{"k":"","p":""}') + KEY_LEN
    if payload < overhead:
        raise ValueError(f"payload must be at least {overhead} bytes")
    return "x" * (payload - overhead)


def new_hist() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def dig(obj: dict[str, Any] | None, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a level is missing (a step not run)."""
    cur: Any = obj
    for key in path:
        if cur is None:
            return None
        cur = cur.get(key)
    return cur


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction `q` of `values` lies (nearest rank; `values` not empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hist_from_values(values: Any) -> HdrHistogram:
    h = new_hist()
    record = h.record_value
    for v in values:
        record(min(max(int(v), 1), HIST_MAX_US))
    return h


def encode_hist(h: HdrHistogram) -> str:
    return h.encode().decode()


def decode_hist(text: str | None) -> HdrHistogram:
    h = new_hist()
    if text:
        h.add(HdrHistogram.decode(text.encode()))
    return h


def summarize(h: HdrHistogram) -> dict[str, Any]:
    """p50/p90/p99/p99.9/max in ms (None when empty), and the count."""
    n = h.get_total_count()
    out: dict[str, Any] = {"count": n}
    for p in PERCENTILES:
        key = f"p{p:g}".replace(".", "_") + "_ms"
        out[key] = round(h.get_value_at_percentile(p) / 1000, 3) if n else None
    out["max_ms"] = round(h.get_max_value() / 1000, 3) if n else None
    return out


def cdf(h: HdrHistogram) -> list[tuple[float, float]]:
    """(percentile, latency ms) points for a CDF plot."""
    if not h.get_total_count():
        return []
    return [(p, round(h.get_value_at_percentile(p) / 1000, 4)) for p in CDF_POINTS]


# A step whose CPU was first read this late (ms) into its measured window (a slow /metrics
# scrape before it) is disturbed: the CPU's window would be shorter than the deliveries'.
CPU_LATE_MS = 20.0


def proc_cpu_s(pid: int) -> float:
    """CPU seconds a process has run, to the nanosecond: the sum over its threads of the run
    time the scheduler keeps (/proc/PID/task/TID/schedstat). The user and system times of
    /proc/PID/stat count 10 ms ticks: a floor that runs 120 ms in a 3 s step would be read to
    ±8 %. psutil's user + system where schedstat is missing; 0 if the process is gone."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    except OSError:
        threads = []
    ns, read = 0, False
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                ns += int(f.read().split()[0])
            read = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile (its time is lost: threads here live long)
    if read:
        return ns / 1e9
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return float(times.user + times.system)


def proc_rss_bytes(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def machine_cpu() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all cores (psutil.cpu_times)."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(getattr(t, f) for f in t._fields if f not in ("guest", "guest_nice"))
    return total - idle, total


def machine_steal_s() -> float:
    """Seconds, summed over all cores, that the hypervisor ran something else while this
    virtual machine wanted its CPU (`steal` in /proc/stat; 0 where the kernel does not say).
    `machine_cpu` counts them as busy, so they show among the others' CPU of a step, though not
    exactly: the guest charges some of it to the process it interrupted."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def cpu_stall_s() -> float:
    """Machine-wide seconds some task waited for a CPU (/proc/pressure/cpu), NaN if absent."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return float("nan")


def emit(obj: dict[str, Any]) -> None:
    """One JSON line to the orchestrator (a load generator's stdout)."""
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def serve_commands(
    handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]],
) -> None:
    """A load generator's command loop: one JSON command per stdin line until ``quit`` or the
    end of stdin; what `handle` answers (if anything) is emitted."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            return
        answer = await handle(cmd)
        if answer is not None:
            emit(answer)
