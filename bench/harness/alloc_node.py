"""A roomstate node that tells, on SIGUSR2, how its memory splits between live objects and its
allocators' reserves, without tracing allocations (tracemalloc would hide Python's allocator
behind its own and slow the node). Started by the churn study (`--allocators`) as

    python -m bench.harness.alloc_node serve ARGS...

Each SIGUSR2 runs a full collection, then appends to ``$BENCH_ALLOC_DIR/allocators-<pid>.txt``:
RSS; Python's object allocator (pymalloc: arenas held, bytes in allocated blocks, bytes in free
blocks, from `sys._debugmallocstats`); the C library's malloc (glibc's mallinfo2: from the
system, in use, free but kept). Live objects are the allocated blocks and malloc's bytes in use;
what RSS holds beyond them is the allocators' (freed memory kept for reuse, partly used arenas).
"""

from __future__ import annotations

import gc
import os
import re
import signal
import sys
import tempfile
import time
from types import FrameType

from roomstate.memtrace import malloc_stats, rss_bytes

DIR_VARIABLE = "BENCH_ALLOC_DIR"
PYMALLOC = {  # the lines of sys._debugmallocstats() kept: name -> line start
    "arenas": "# arenas allocated current",
    "allocated": "# bytes in allocated blocks",
    "available": "# bytes in available blocks",
}


def pymalloc() -> dict[str, int]:
    """Python's object allocator in sum. `sys._debugmallocstats` writes to the C stderr only:
    it is sent to a file meanwhile."""
    with tempfile.TemporaryFile("w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    found = {}
    for line in text.splitlines():
        for name, start in PYMALLOC.items():
            if line.startswith(start) and name not in found:
                found[name] = int(line.split("=", 1)[1].replace(",", ""))
    return found


def dump(path: str) -> None:
    gc.collect()
    p = pymalloc()
    line = (f"== at {time.time():.0f}: RSS {rss_bytes()} B; pymalloc arenas {p.get('arenas')}, "
            f"allocated {p.get('allocated')} B, available {p.get('available')} B; "
            f"{malloc_stats()}\n")  # fmt: skip
    with open(path, "a") as f:
        f.write(line)


_MB = r"([\d.]+) MB"
_LINE = re.compile(
    r"RSS (\d+) B; pymalloc arenas (\d+), allocated (\d+) B, available (\d+) B; "
    rf"malloc: from the system {_MB}, in use {_MB}, free, kept {_MB}"
)


def parse(text: str) -> list[dict[str, float]]:
    """The dumps in a file `dump` wrote, in MB."""
    out = []
    for m in _LINE.finditer(text):
        rss, arenas, allocated, available = (int(x) for x in m.groups()[:4])
        out.append({
            "rss_mb": round(rss / 1e6, 2), "pymalloc_arenas": arenas,
            "pymalloc_allocated_mb": round(allocated / 1e6, 2),
            "pymalloc_free_mb": round(available / 1e6, 2),
            "malloc_system_mb": float(m.group(5)), "malloc_in_use_mb": float(m.group(6)),
            "malloc_kept_mb": float(m.group(7)),
        })  # fmt: skip
    return out


def main() -> None:
    path = os.path.join(os.environ.pop(DIR_VARIABLE), f"allocators-{os.getpid()}.txt")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        dump(path)

    signal.signal(signal.SIGUSR2, on_signal)  # runs between bytecodes, on the main thread
    from roomstate.cli import main as roomstate

    roomstate(sys.argv[1:])


if __name__ == "__main__":
    main()
