"""`python -m bench quick` (under 3 minutes) or `python -m bench full` (~20 minutes).

Progress goes to stderr; results to bench/results/; the last stdout line is the summary JSON.
`full --only peer,topologies,...` runs a part of the matrix (floors, peer, topologies,
participants, rooms, payloads, bystander, propagation, memory, hops); the CPU ratios measured in
turn (`bench.paired`) run when both peer and topologies do.
"""

from __future__ import annotations

import argparse

from bench.suite import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("mode", choices=("quick", "full"))
    ap.add_argument("--only", help="full mode: comma-separated parts to run")
    args = ap.parse_args()
    main(args.mode, set(args.only.split(",")) if args.only else None)
