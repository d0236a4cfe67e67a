"""`python -m bench quick` (under 3 minutes), `python -m bench full` (~25 minutes), or one study.

Progress goes to stderr; a run's files to bench/out/ (ignored by git); the last stdout line is
the summary JSON. `full --only PART,...` runs a part of the matrix (floors, peer, node-peers,
topologies, participants, rooms, payloads, bystander, propagation, memory, hops, webinar); the CPU
ratios measured in turn (`bench.studies.paired`) run when both peer and topologies do.

`python -m bench STUDY [ARGS]` runs one study or tool, the same as `python -m
bench.studies.STUDY [ARGS]` (`ws_floor`: bench/systems/ws_floor.py); `python -m bench STUDY -h`
says what it measures.
"""

from __future__ import annotations

import argparse
import runpy
import sys

STUDY_NAMES = ("churn", "floor_libs", "gc_thresholds", "hops", "paired", "profile_node",
               "redis_client_cost", "script_cost", "target", "wake_cost", "webinar",
               "workers")  # fmt: skip
STUDIES = {name: f"bench.studies.{name}" for name in STUDY_NAMES}
STUDIES["ws_floor"] = "bench.systems.ws_floor"  # the floor server's own comparison of libraries


def main(argv: list[str]) -> None:
    if argv and argv[0] in STUDIES:
        sys.argv = [f"python -m bench {argv[0]}", *argv[1:]]
        runpy.run_module(STUDIES[argv[0]], run_name="__main__", alter_sys=True)
        return
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("mode", choices=("quick", "full", *STUDIES))
    ap.add_argument("--only", help="full mode: comma-separated parts to run")
    args = ap.parse_args(argv)
    from bench.suite import main as run_suite  # not for a study: it would import every part

    run_suite(args.mode, set(args.only.split(",")) if args.only else None)


if __name__ == "__main__":
    main(sys.argv[1:])
