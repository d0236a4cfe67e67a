"""Where a node's memory goes: its allocation sites on demand. Off by default.

With ``ROOMSTATE_TRACEMALLOC_DIR`` set, the node traces its Python allocations (tracemalloc:
slower and bigger, for diagnosis only) and each SIGUSR2 appends one dump to
``DIR/tracemalloc-<pid>.txt``: the memory traced, tracemalloc's own, the process's RSS, and the
allocation sites that grew most since the previous dump (the first: since tracing started).
Two signals under load tell what grew in between. The allocators' own figures come with each
dump (the blocks Python's object allocator has handed out; the C library's malloc: bytes in use,
and free but kept): RSS that the traced memory does not account for is theirs (partly used
arenas and pages kept for reuse) or tracemalloc's, not objects the node holds.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

__all__ = ["MemTrace", "start"]

FRAMES = 6  # frames kept per allocation: enough to see whose call allocated
TOP = 25  # sites listed per dump
STACKS = 8  # of them, with their whole stack
_IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def malloc_stats() -> str:
    """The C library's malloc in sum (glibc's mallinfo2)."""
    fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
              "uordblks", "fordblks", "keepcost")  # fmt: skip

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields]

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return "malloc: no mallinfo2"
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    system, used, kept = (m.arena + m.hblkhd) / 1e6, (m.uordblks + m.hblkhd) / 1e6, m.fordblks / 1e6
    return (
        f"malloc: from the system {system:.2f} MB, in use {used:.2f} MB, free, kept {kept:.2f} MB"
    )


class MemTrace:
    """Tracing started; `dump` appends the growth since the last dump to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        self.dumps = 0
        self.last = self._snapshot()
        self.last_traced = tracemalloc.get_traced_memory()[0]
        self.last_rss = rss_bytes()

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(_IGNORED)

    def dump(self) -> None:
        began = time.perf_counter()
        snap = self._snapshot()
        traced, peak = tracemalloc.get_traced_memory()
        rss = rss_bytes()
        self.dumps += 1
        lines = [
            f"== dump {self.dumps} at {time.time():.0f}: traced {traced / 1e6:.2f} MB "
            f"({(traced - self.last_traced) / 1e3:+.1f} KB), peak {peak / 1e6:.2f} MB, "
            f"RSS {rss / 1e6:.2f} MB ({(rss - self.last_rss) / 1e3:+.1f} KB), "
            f"tracemalloc's own {tracemalloc.get_tracemalloc_memory() / 1e6:.2f} MB, "
            f"gc objects {len(gc.get_objects())}",
            f"{malloc_stats()}; Python's allocator: {sys.getallocatedblocks()} blocks in use",
            f"-- the {TOP} sites that grew most since the last dump (size, count)",
        ]
        by_line = snap.compare_to(self.last, "lineno")
        for stat in by_line[:TOP]:
            frame = stat.traceback[0]
            lines.append(
                f"{stat.size_diff / 1e3:+10.1f} KB {stat.count_diff:+8d}  "
                f"{stat.size / 1e3:10.1f} KB {stat.count:8d}  {frame.filename}:{frame.lineno}"
            )
        lines.append(f"-- the {STACKS} stacks that grew most")
        for stat in snap.compare_to(self.last, "traceback")[:STACKS]:
            lines.append(f"{stat.size_diff / 1e3:+10.1f} KB {stat.count_diff:+8d}")
            lines += [f"      {f.filename}:{f.lineno}" for f in reversed(stat.traceback)]
        lines.append(f"-- dump took {time.perf_counter() - began:.2f} s\n")
        with self.path.open("a") as f:
            f.write("\n".join(lines) + "\n")
        self.last, self.last_traced, self.last_rss = snap, traced, rss


def start(directory: str) -> MemTrace:
    """Trace allocations from now on; SIGUSR2 (on the running loop) writes a dump."""
    path = Path(directory) / f"tracemalloc-{os.getpid()}.txt"
    trace = MemTrace(path)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, trace.dump)
    return trace
