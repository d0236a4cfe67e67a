"""Start a local roomstate deployment on loopback: Redis (standalone or Cluster), N nodes, haproxy.

Run through deploy/local/up, which sets up .venv first. Every process is recorded in
deploy/local/run/pids as `PID STARTTIME NAME` (STARTTIME is field 22 of /proc/PID/stat, so that
deploy/local/down never signals a reused PID); logs, data and the haproxy config are in run/ too.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deploy.local.servers import (  # noqa: E402  (needs ROOT on sys.path)
    Haproxy,
    ManagedProcess,
    MissingBinaryError,
    RedisCluster,
    RedisServer,
    free_port,
    stop_all,
    wait_until,
)

RUN = Path(__file__).resolve().parent / "run"
PIDS = RUN / "pids"
ROOMSTATE = ROOT / ".venv" / "bin" / "roomstate"


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in ticks), or None if PID is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "PID (comm)": field 3 is fields[0]
    return None if fields[0] == "Z" else fields[19]


def live_recorded() -> list[str]:
    """Lines of the pids file whose process is still the one recorded."""
    if not PIDS.exists():
        return []
    live = []
    for line in PIDS.read_text().splitlines():
        pid, started, _name = line.split(maxsplit=2)
        if start_time(int(pid)) == started:
            live.append(line)
    return live


def record(name: str, pid: int) -> None:
    with PIDS.open("a") as out:
        out.write(f"{pid} {start_time(pid)} {name}\n")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy/local/up",
        description="Start Redis, N roomstate nodes and haproxy on 127.0.0.1; "
        "stop them with deploy/local/down.",
    )
    parser.add_argument("--nodes", type=int, default=3, metavar="N", help="nodes (default 3)")
    bus = parser.add_mutually_exclusive_group()
    bus.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    bus.add_argument(
        "--no-redis",
        action="store_true",
        help="no Redis: in-memory nodes, each with its own rooms (to check the launcher)",
    )
    parser.add_argument(
        "--replicas", action="store_true", help="with --cluster: one replica per master"
    )
    parser.add_argument("--port", type=int, default=None, help="haproxy port (default: a free one)")
    args = parser.parse_args(argv)
    if args.replicas and not args.cluster:
        parser.error("--replicas needs --cluster")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    return args


def up(args: argparse.Namespace) -> None:
    """Start everything, recording each PID as it starts; on success detach it all."""
    shutil.rmtree(RUN, ignore_errors=True)
    (RUN / "logs").mkdir(parents=True)
    PIDS.touch()

    # Redis
    bus_args: list[str] = []
    env_lines: list[str] = []
    started: list[RedisCluster | RedisServer | ManagedProcess | Haproxy] = []
    if args.cluster:
        replicas = 1 if args.replicas else 0
        print(f"starting a Redis Cluster of 3 masters, {replicas} replica(s) each", flush=True)
        cluster = RedisCluster.start(RUN / "redis", masters=3, replicas_per_master=replicas)
        started.append(cluster)
        for server in cluster.servers:
            record(f"redis-{server.port}", server.pid)
        bus_args = ["--redis-cluster", cluster.seeds]
        env_lines.append(f"REDIS_CLUSTER={cluster.seeds}")
        redis_desc = f"Redis Cluster {cluster.seeds}"
    elif not args.no_redis:
        redis = RedisServer.start(RUN / "redis")
        started.append(redis)
        record(f"redis-{redis.port}", redis.pid)
        bus_args = ["--redis", redis.url]
        env_lines.append(f"REDIS_URL={redis.url}")
        redis_desc = f"Redis {redis.url}"
    else:
        redis_desc = "no Redis: every node has its own rooms"

    # nodes: start them all, then wait for each to be ready
    nodes: list[tuple[str, int, ManagedProcess]] = []
    for i in range(1, args.nodes + 1):
        name, port = f"node-{i}", free_port()
        argv = [str(ROOMSTATE), "serve", "--host", "127.0.0.1", "--port", str(port), *bus_args]
        env = {**os.environ, "ROOMSTATE_NODE_ID": name}
        proc = ManagedProcess.spawn(name, argv, RUN / "logs" / f"{name}.log", env=env, cwd=ROOT)
        started.append(proc)
        record(name, proc.pid)
        nodes.append((name, port, proc))
    for name, port, proc in nodes:
        wait_until(
            functools.partial(http_ok, f"http://127.0.0.1:{port}/readyz"),
            timeout=30,
            what=f"{name} to be ready",
            process=proc,
        )
        env_lines.append(f"{name.upper().replace('-', '_')}_URL=http://127.0.0.1:{port}")

    # haproxy
    lb = Haproxy.start(RUN, [("127.0.0.1", port) for _, port, _ in nodes], port=args.port)
    started.append(lb)
    record("haproxy", lb.pid)
    lb.wait_for_states(timeout=10)
    env_lines.insert(0, f"HAPROXY_URL={lb.url}")
    (RUN / "env").write_text("\n".join(env_lines) + "\n")

    # everything is up: let it outlive this process
    for thing in started:
        thing.detach()

    rel = RUN.relative_to(ROOT)
    print(f"roomstate: {args.nodes} node(s) behind haproxy; {redis_desc}")
    print(f"  haproxy  {lb.url}")
    print(f"  room     {lb.url}/rooms/demo")
    for name, port, _ in nodes:
        print(f"  {name:<8} http://127.0.0.1:{port}")
    print(f"  logs     {rel}/  (URLs in {rel}/env, PIDs in {rel}/pids)")
    print("  stop     deploy/local/down")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if live := live_recorded():
        sys.exit(f"already running ({len(live)} processes in {PIDS}): run deploy/local/down first")
    if not ROOMSTATE.exists():
        sys.exit(f"{ROOMSTATE} is missing: run ./deploy/dev.sh setup")
    try:
        up(args)
    except BaseException as exc:  # failed or interrupted: stop what was started, by PID
        stop_all()
        PIDS.unlink(missing_ok=True)
        if isinstance(exc, MissingBinaryError | RuntimeError | TimeoutError):
            sys.exit(f"deploy/local/up failed: {exc}")
        raise


if __name__ == "__main__":
    main()
