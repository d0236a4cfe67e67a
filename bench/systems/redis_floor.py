"""The Redis floor: raw redis-py (asyncio, hiredis) XADD -> XREAD BLOCK one-way latency.

Two processes, so neither's event loop delays the other:

    python -m bench.systems.redis_floor read  URL STREAM COUNT   prints {"ready"}, then the result
    python -m bench.systems.redis_floor write URL STREAM RATE COUNT T0

The writer XADDs COUNT entries open-loop (entry i scheduled at T0 + i/RATE, monotonic ns;
it sleeps until shortly before and spins the rest, so it is not late by a timer tick); each entry
carries its scheduled time and actual send time. The reader holds one XREAD BLOCK on the
stream and records receive - scheduled and receive - sent. Bounded: the reader gives up 10 s
after its last entry.
"""

from __future__ import annotations

import asyncio
import sys
import time
from array import array

import orjson
import redis.asyncio as aioredis

from bench.harness.common import encode_hist, hist_from_values, summarize

mono = time.monotonic_ns


async def read(url: str, stream: str, count: int) -> None:
    client = aioredis.Redis.from_url(url)
    await client.delete(stream)
    sched_us, send_us = array("q"), array("q")
    last = "0-0"
    print(orjson.dumps({"ready": True}).decode(), flush=True)
    idle_deadline = time.monotonic() + 30
    while len(sched_us) < count and time.monotonic() < idle_deadline:
        reply = await client.xread({stream: last}, block=1000, count=1000)
        now = mono()
        for _key, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                sched, sent = int(fields[b"t"]), int(fields[b"s"])
                sched_us.append((now - sched) // 1000)
                send_us.append((now - sent) // 1000)
            idle_deadline = time.monotonic() + 10
    await client.delete(stream)
    await client.aclose()
    h_sched, h_send = hist_from_values(sched_us), hist_from_values(send_us)
    result = {
        "received": len(sched_us),
        "from_sched": summarize(h_sched),
        "from_send": summarize(h_send),
        "hist_sched": encode_hist(h_sched),
        "hist_send": encode_hist(h_send),
    }
    print(orjson.dumps({"result": result}).decode(), flush=True)


async def write(url: str, stream: str, rate: float, count: int, t0: int) -> None:
    client = aioredis.Redis.from_url(url)
    period = 1e9 / rate
    for i in range(count):
        sched = t0 + int(i * period)
        delay = sched - mono()
        if delay > 1_300_000:
            await asyncio.sleep((delay - 1_300_000) / 1e9)
        while mono() < sched:  # bounded: at most ~1.3 ms
            pass
        await client.xadd(stream, {"t": sched, "s": mono()}, maxlen=10000, approximate=True)
    await client.aclose()


if __name__ == "__main__":
    import uvloop

    role, url, stream = sys.argv[1], sys.argv[2], sys.argv[3]
    if role == "read":
        uvloop.run(read(url, stream, int(sys.argv[4])))
    else:
        uvloop.run(write(url, stream, float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])))
