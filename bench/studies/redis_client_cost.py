"""What one Redis call costs the client: redis-py (asyncio, hiredis) CPU per EVALSHA and per
XREAD, sequential, with and without ``socket_timeout``, and pipelined, against the bus's own
pipelining connection (node/bus/redis/resp.py: hiredis's packer and parser on an
asyncio.Protocol) — the evidence behind docs/decisions/0004-redis-hot-path-connection.md.

    python -m bench redis_client_cost [--calls 3000]

Starts its own redis-server (deploy/local/servers.py) and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from deploy.local.servers import RedisServer
from roomstate.bus.redis.resp import RespConnection

# The shape of node/bus/redis/scripts.py PUBLISH for an app message: read, append, persist.
SCRIPT = """
local n = tonumber(redis.call("HGET", KEYS[2], "n") or "0")
local id = redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[2], "*", "e", ARGV[1])
redis.call("PERSIST", KEYS[1])
return id
"""


async def measure(url: str, calls: int) -> dict[str, float]:
    out: dict[str, float] = {}
    payload = "x" * 300
    keys = ["bench:{t}:log", "bench:{t}:state"]
    for label, timeout in (("socket_timeout=2", 2.0), ("socket_timeout=None", None)):
        client = aioredis.Redis.from_url(url, socket_timeout=timeout)
        script = client.register_script(SCRIPT)
        await script(keys=keys, args=[payload, 1000])
        t = time.process_time()
        for _ in range(calls):
            await script(keys=keys, args=[payload, 1000])
        out[f"evalsha sequential, {label}, us"] = (time.process_time() - t) / calls * 1e6
        t = time.process_time()
        for _ in range(calls):
            await client.xread({keys[0]: "0-0"}, count=1)
        out[f"xread sequential, {label}, us"] = (time.process_time() - t) / calls * 1e6
        t = time.process_time()
        for _ in range(calls // 50):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(50):
                    pipe.evalsha(script.sha, 2, *keys, payload, 1000)
                await pipe.execute()
        out[f"evalsha pipelined by 50, {label}, us"] = (time.process_time() - t) / calls * 1e6
        await client.delete(keys[0])
        if timeout is None:
            await measure_resp(url, script.sha, keys, payload, calls, out)
        await client.aclose()
    return {k: round(v, 1) for k, v in out.items()}


async def measure_resp(
    url: str, sha: str, keys: list[str], payload: str, calls: int, out: dict[str, float]
) -> None:
    conn = await RespConnection.open_url(url, timeout=2.0)
    t = time.process_time()
    for _ in range(calls):
        await conn.call("EVALSHA", sha, 2, *keys, payload, 1000, timeout=2.0)
    out["evalsha sequential, node/resp.py, us"] = (time.process_time() - t) / calls * 1e6
    t = time.process_time()
    for _ in range(calls):
        await conn.call("XREAD", "COUNT", 1, "STREAMS", keys[0], "0-0", timeout=2.0)
    out["xread sequential, node/resp.py, us"] = (time.process_time() - t) / calls * 1e6
    t = time.process_time()
    for _ in range(calls // 50):  # 50 publishes issued together go out in one write
        batch = [conn.call("EVALSHA", sha, 2, *keys, payload, 1000, timeout=2.0) for _ in range(50)]
        await asyncio.gather(*batch)
    out["evalsha 50 at once, node/resp.py, us"] = (time.process_time() - t) / calls * 1e6
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench redis_client_cost", description=__doc__)
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    import uvloop

    server = RedisServer.start(Path(tempfile.mkdtemp(prefix="roomstate-redis-cost-")))
    try:
        print(json.dumps(uvloop.run(measure(server.url, args.calls)), indent=1))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
