"""What the publish scripts cost Redis: the time per call Redis itself reports (``INFO
commandstats``, `usec_per_call` of EVALSHA) for PUBLISH_MESSAGE (an app message) and PUBLISH (a
userData write), the working tree's scripts against those of a git revision, in turn.

    python -m bench script_cost [--rev HEAD] [--rounds 5] [--calls 20000]

Each round runs `--calls` calls of each of the four (old/new × message/state write) on one room
with 3 participants present, pipelined 500 at a time, resetting the statistics before each;
it prints the median over the rounds and every round. Starts its own redis-server
(deploy/local/servers.py) and stops it by PID. The revision's scripts are read with ``git show``, so
run it from the repository. Scripts of either layout are driven: before the lease check
(fencing, 3 keys) and with it (4 keys, the incarnation as ARGV[4]).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import redis

import roomstate.bus.redis.scripts as current
from deploy.local.servers import RedisServer

ROOM = "cost"
KEYS = [f"rs:{{rs1}}:log:{ROOM}", f"rs:{{rs1}}:state:{ROOM}", f"rs:{{rs1}}:ch:{ROOM}"]
LEASE, INCARNATION = "rs:lease:n1", "inc"
WEBHOOKS = "rs:{rs1}:wh"
EVENT = "x" * 300  # about an encoded 256 B app message
USERDATA_OP = ["u", "s1", "0001", '{"a":1}']


# Where the scripts were, newest first: node/bus/redis/scripts.py since the layout of b848918
SCRIPT_PATHS = ("node/bus/redis/scripts.py", "node/redis_scripts.py")


def scripts_at(rev: str) -> tuple[str, str]:
    """PUBLISH_MESSAGE and PUBLISH as the scripts' module has them at `rev` (CalledProcessError
    if no path of `SCRIPT_PATHS` has them there)."""
    for i, path in enumerate(SCRIPT_PATHS):
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        if shown.returncode == 0:
            break
        if i == len(SCRIPT_PATHS) - 1:
            shown.check_returncode()
    names: dict[str, object] = {}
    exec(compile(shown.stdout, f"{rev}:{path}", "exec"), names)
    return str(names["PUBLISH_MESSAGE"]), str(names["PUBLISH"])


def arguments(script: str, ops: list[str]) -> tuple[int, list[str | int]]:
    """numkeys and the keys and arguments for `script`, by whether it checks the lease."""
    if "KEYS[5]" in script:  # with webhooks: their stream, and ARGV[5] "" (off)
        return 5, [*KEYS, LEASE, WEBHOOKS, EVENT, 1000, 60_000, INCARNATION, "", *ops]
    if "KEYS[4]" in script:  # with the lease check
        return 4, [*KEYS, LEASE, EVENT, 1000, 60_000, INCARNATION, *ops]
    return 3, [*KEYS, EVENT, 1000, 60_000, *ops]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench script_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rev", default="HEAD", help="the revision to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20_000)
    args = ap.parse_args()
    old_message, old_state = scripts_at(args.rev)
    cases = {
        f"{args.rev} PUBLISH_MESSAGE": (old_message, []),
        "working tree PUBLISH_MESSAGE": (current.PUBLISH_MESSAGE, []),
        f"{args.rev} PUBLISH (userData)": (old_state, USERDATA_OP),
        "working tree PUBLISH (userData)": (current.PUBLISH, USERDATA_OP),
    }
    server = RedisServer.start(Path(tempfile.mkdtemp(prefix="roomstate-script-cost-")))
    client = redis.Redis(port=server.port)
    try:
        client.set(LEASE, INCARNATION)
        client.hset(KEYS[1], mapping={"n": 3, "l": "0-0"})
        shas = {name: client.script_load(script) for name, (script, _) in cases.items()}
        per_call: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (script, ops) in cases.items():
                numkeys, keys_and_args = arguments(script, ops)
                client.config_resetstat()
                pipe = client.pipeline(transaction=False)
                for i in range(args.calls):
                    pipe.evalsha(shas[name], numkeys, *keys_and_args)
                    if i % 500 == 499:
                        pipe.execute()
                pipe.execute()
                stats = client.info("commandstats")["cmdstat_evalsha"]
                per_call[name].append(float(stats["usec_per_call"]))
        print(f"Redis µs per call (usec_per_call), median of {args.rounds} rounds of {args.calls}")
        for name, values in per_call.items():
            print(f"{name:34} {statistics.median(values):6.2f}   rounds {values}")
    finally:
        client.close()
        server.stop()


if __name__ == "__main__":
    main()
