"""`keep_heap_top`: large frames built and freed one after another stop faulting their pages in
again. Each case runs in a fresh interpreter (the allocator's settings are process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Build and free a 420 KB frame the way a `joined` is built (a join of parts, then wrapped),
# 200 times; print the minor page faults that took.
PROGRAM = """
import resource, sys
from roomstate.allocator import keep_heap_top
kept = keep_heap_top() if sys.argv[1] == "pad" else None
parts = [b"x" * 210] * 2000
b"{" + b",".join(parts) + b"}"  # once: the heap and the dynamic mmap threshold settle
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    frame = b"{" + b",".join(parts) + b"}"
    del frame
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only"
)


def run(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], env=environ, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    kept, faults = out.stdout.split()
    return kept, int(faults)


def test_a_kept_heap_top_stops_large_frames_faulting_their_pages_in_again() -> None:
    _, without = run("none")
    kept, faults = run("pad")
    assert kept == "True"
    # without the pad each frame faults pages in again (tens of 4 KB pages per frame)
    assert without > 200 * 10, f"the case does not show the faults ({without})"
    assert faults < 200, f"{faults} page faults with the heap top kept (none: {without})"


def test_the_operators_malloc_top_pad_wins() -> None:
    kept, _ = run("pad", MALLOC_TOP_PAD_="131072")
    assert kept == "False"
