"""The C allocator's settings for a node process (glibc's malloc; nothing elsewhere).

A node builds large frames and frees them at once: a `joined` roster of thousands of
participants is hundreds of KB, built in a few steps. glibc gives the free memory at the top of
its heap back to the system as soon as there is more than its trim threshold, and the next
large frame faults every page in again; on a virtual machine the faults cost ten times the
copying (docs/decisions/0019-membership-window-1-ms-and-heap-pad.md). `M_TOP_PAD` keeps that
much free memory at the top of the heap instead: bounded RSS for joins that cost what their
bytes do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["TOP_PAD_BYTES", "keep_heap_top"]

TOP_PAD_BYTES = 8 << 20  # a few `joined` frames of 1 MiB pages, with their copies in flight
_M_TOP_PAD = -2  # glibc's malloc.h


def keep_heap_top(pad: int = TOP_PAD_BYTES) -> bool:
    """Keep `pad` bytes free at the top of the heap (`mallopt(M_TOP_PAD)`). False where the C
    library has no `mallopt` (not glibc) or the operator set `MALLOC_TOP_PAD_` (theirs wins)."""
    if "MALLOC_TOP_PAD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, pad))
