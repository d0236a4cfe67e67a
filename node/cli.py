"""The `roomstate` command: run a node, make a meeting token, or show the CRDT demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time

from roomstate.allocator import keep_heap_top
from roomstate.settings import Settings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

SERVE_HELP = """\
Every option can also be set with an environment variable (the option wins):
  ROOMSTATE_HOST, ROOMSTATE_PORT, ROOMSTATE_API_KEY, ROOMSTATE_REDIS, ROOMSTATE_REDIS_CLUSTER,
  redis access: ROOMSTATE_REDIS_USERNAME, ROOMSTATE_REDIS_PASSWORD, ROOMSTATE_REDIS_TLS (false),
  ROOMSTATE_REDIS_SENTINEL_USERNAME, ROOMSTATE_REDIS_SENTINEL_PASSWORD, and one per option,
  any setting from a file: ROOMSTATE_<NAME>_FILE (e.g. ROOMSTATE_REDIS_PASSWORD_FILE),
  ROOMSTATE_NODE_ID, ROOMSTATE_ALLOWED_ORIGINS (comma-separated),
  limits: ROOMSTATE_APP_MESSAGE_BYTES (4096), ROOMSTATE_USER_DATA_BYTES (4096),
  ROOMSTATE_SESSION_DATA_BYTES (102400), ROOMSTATE_FRAME_BYTES (131072), ROOMSTATE_MAX_DEPTH (32),
  ROOMSTATE_SEND_QUEUE_BYTES (1048576), ROOMSTATE_RATE_PER_S (100), ROOMSTATE_RATE_BURST (200),
  ROOMSTATE_MAX_HEADERS (100), ROOMSTATE_HANDSHAKE_TIMEOUT_S (10),
  timeouts: ROOMSTATE_USER_DATA_INTERVAL_MS (100), ROOMSTATE_SESSION_DATA_INTERVAL_MS (1000),
  ROOMSTATE_ROOM_GRACE_S (30), ROOMSTATE_RESUME_GRACE_S (15), ROOMSTATE_HEARTBEAT_S (20),
  ROOMSTATE_MAX_DRIFT_MS (500), ROOMSTATE_COUNTS_INTERVAL_MS (1000),
  ROOMSTATE_TOMBSTONE_KEEP_S (120; removals are forgotten after it),
  participants: ROOMSTATE_DEFAULT_HAS_PRESENCE (true; false: tokenless joins are hidden),
  load: ROOMSTATE_MAX_LOOP_LAG_MS (500), ROOMSTATE_MAX_JOINS_IN_FLIGHT (200) (over them new
  joins are shed, retryable), ROOMSTATE_LOOP_STUCK_S (30; a silent loop lets the lease go),
  process: ROOMSTATE_WORKERS (1; auto: one per core), ROOMSTATE_GC_THRESHOLDS (10000,10,10;
  python: Python's own), ROOMSTATE_LOG_LEVEL (INFO),
  ROOMSTATE_LOG_FORMAT (text; json: one JSON object per line), ROOMSTATE_TRACEMALLOC_DIR (off;
  a directory: allocations are traced, each SIGUSR2 writes the sites that grew; slow),
  tests only: ROOMSTATE_CLOCK_OFFSET_MS (0; added to the node's clock).
Without an API key the node runs in development mode: anonymous joins, open REST, loopback only.
"""


def main(argv: list[str] | None = None) -> None:
    from roomstate import __version__

    parser = argparse.ArgumentParser(prog="roomstate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"roomstate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run an edge node",
        epilog=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to listen on (ROOMSTATE_HOST; 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="TCP port, 0 for any free one (ROOMSTATE_PORT; 8080)"
    )
    serve.add_argument("--api-key", help="REST key and token signing key (ROOMSTATE_API_KEY)")
    serve.add_argument(
        "--redis",
        help="redis[s]://[USER:PASSWORD@]HOST:PORT/DB of a standalone Redis (ROOMSTATE_REDIS)",
    )
    serve.add_argument(
        "--redis-cluster", help="HOST:PORT[,HOST:PORT...] Cluster seeds (ROOMSTATE_REDIS_CLUSTER)"
    )
    serve.add_argument(
        "--redis-sentinel",
        help="HOST:PORT[,HOST:PORT...] Sentinels naming the master (ROOMSTATE_REDIS_SENTINEL)",
    )
    serve.add_argument(
        "--redis-sentinel-master",
        help="the master's name at the Sentinels (ROOMSTATE_REDIS_SENTINEL_MASTER)",
    )
    serve.add_argument(
        "--redis-tls-ca", help="PEM file of the CA of Redis's certificate (ROOMSTATE_REDIS_TLS_CA)"
    )
    serve.add_argument(
        "--redis-tls-cert", help="PEM client certificate, mutual TLS (ROOMSTATE_REDIS_TLS_CERT)"
    )
    serve.add_argument(
        "--redis-tls-key", help="PEM key of that certificate (ROOMSTATE_REDIS_TLS_KEY)"
    )
    serve.add_argument("--node-id", help="this node's id (ROOMSTATE_NODE_ID; random)")
    serve.add_argument(
        "--default-has-presence",
        choices=("true", "false"),
        help="false: tokenless (development) joins are hidden (ROOMSTATE_DEFAULT_HAS_PRESENCE)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="node processes on the port, each a node of its own, or auto: one per core"
        " (ROOMSTATE_WORKERS; 1); more than 1 needs Redis",
    )
    # Set by the supervisor of --workers on its workers: listen with SO_REUSEPORT.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument(
        "--log-level",
        default=os.environ.get("ROOMSTATE_LOG_LEVEL") or "INFO",  # (empty: unset, as for all)
        help=f"{', '.join(LOG_LEVELS)} (ROOMSTATE_LOG_LEVEL; INFO)",
    )
    serve.add_argument(
        "--log-format",
        default=os.environ.get("ROOMSTATE_LOG_FORMAT") or "text",
        help="text, or json: one JSON object per line (ROOMSTATE_LOG_FORMAT; text)",
    )

    token = commands.add_parser("token", help="print a meeting token (JWT) for a room")
    token.add_argument("--room", required=True)
    token.add_argument("--user-name")
    token.add_argument("--user-id")
    token.add_argument("--owner", action="store_true")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (3600)")
    token.add_argument("--api-key", help="signing key (ROOMSTATE_API_KEY)")

    commands.add_parser("demo", help="show two CRDT replicas of a room converging")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)

    if args.command == "serve":
        _serve(args, raw[raw.index("serve") + 1 :])
    elif args.command == "token":
        from roomstate.auth import make_token

        try:  # the key as serve reads it: ROOMSTATE_API_KEY or ROOMSTATE_API_KEY_FILE
            key = args.api_key or Settings.from_env(os.environ).api_key
        except ValueError as exc:
            parser.error(str(exc))
        if not key:
            parser.error("token needs --api-key, ROOMSTATE_API_KEY or ROOMSTATE_API_KEY_FILE")
        exp = int(time.time()) + args.ttl
        try:
            signed = make_token(
                key,
                args.room,
                user_name=args.user_name,
                user_id=args.user_id,
                owner=args.owner,
                exp=exp,
            )
        except ValueError as exc:
            parser.error(str(exc))
        print(signed)
    else:
        from roomstate.demo import main as demo

        demo()


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of processes or auto"
        ) from None


def _serve(args: argparse.Namespace, serve_args: list[str]) -> None:
    from roomstate import logs
    from roomstate.server.app import serve

    level = args.log_level.upper()
    if level not in LOG_LEVELS:
        levels = ", ".join(LOG_LEVELS)
        sys.exit(f"roomstate: ROOMSTATE_LOG_LEVEL={args.log_level!r} is not one of {levels}")
    json_logs = args.log_format.lower() == "json"
    try:
        logs.configure(level, args.log_format.lower())
    except ValueError as exc:
        sys.exit(f"roomstate: {exc}")
    try:
        settings = Settings.from_env(
            os.environ,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            redis=args.redis,
            redis_cluster=args.redis_cluster,
            redis_sentinel=args.redis_sentinel,
            redis_sentinel_master=args.redis_sentinel_master,
            redis_tls_ca=args.redis_tls_ca,
            redis_tls_cert=args.redis_tls_cert,
            redis_tls_key=args.redis_tls_key,
            node_id=args.node_id,
            workers=args.workers,
            default_has_presence=(
                None if args.default_has_presence is None else args.default_has_presence == "true"
            ),
        )
    except ValueError as exc:
        if json_logs:
            logging.getLogger("roomstate").critical("%s", exc)
            sys.exit(1)
        sys.exit(f"roomstate: {exc}")
    if settings.workers > 1:
        from roomstate.supervisor import supervise

        # the workers parse the same options; the supervisor appends what differs per worker
        sys.exit(supervise(settings, serve_args, json_logs))
    keep_heap_top()
    thresholds = settings.gc_threshold_values()
    if thresholds is not None:
        gc.set_threshold(*thresholds)

    def started(url: str) -> None:
        # What is alive now (modules, the app, the bus) lives as long as the process: out of
        # every later collection, so a full one walks the connections' objects only.
        gc.collect()
        gc.freeze()
        for line in (f"roomstate node listening on {url}", f"demo room: {url}/rooms/demo"):
            print(logs.json_line(line) if json_logs else line, flush=True)

    # one worker of a supervisor (--workers): beside the others on the port
    node = (
        serve(settings, started, reuse_port=True) if args.reuse_port else serve(settings, started)
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(node)
    else:
        uvloop.run(node)
