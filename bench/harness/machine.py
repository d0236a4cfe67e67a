"""The machine a run measured: its CPU, cores, interpreter and library versions, the commit of
the code, and how fast this interpreter runs plain Python here (`python_loop_us`). Every run
records it beside its figures: they differ between machines of one kind and from one moment of
a machine to the next (docs/performance.md).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import sysconfig
import time
import timeit
from importlib import metadata
from typing import Any

from bench.harness.deploy import ROOT
from bench.harness.peers import node_peer_versions

PYTHON_DISTS = ("aiohttp", "uvloop", "orjson", "redis", "hiredis", "python-socketio",
                "python-engineio")  # fmt: skip


def machine() -> dict[str, Any]:
    """The record of this machine, interpreter and code (`python_loop_us` takes about 0.3 s)."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in PYTHON_DISTS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    configure = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "python_prefix": sys.base_prefix,
            "python_configure": [f for f in ("--enable-optimizations", "--with-lto")
                                 if f in configure],
            "python_loop_us": python_loop_us(), "versions": versions,
            "node_peer_versions": node_peer_versions(), "commit": commit()}  # fmt: skip


def commit() -> str | None:
    """The commit the bench runs from, short, with "+changes" when tracked files outside the
    bench's output differ from it (None outside a git work tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _fixed_python_work() -> int:
    """A fixed piece of plain Python work (calls, small dicts, f-strings, lists), the kind a
    node does per message."""
    total = 0
    for i in range(1000):
        d = {"id": i, "name": f"p{i}", "tags": [i, i + 1]}
        total += len(d["name"]) + d["tags"][1] % 7
    return total


def python_loop_us() -> float:
    """How long this interpreter on this machine takes for `_fixed_python_work`, in µs: the best
    of 300 runs, in three batches 0.1 s apart (a slow moment of the machine can last tens of
    ms). Interpreter builds differ here: pyenv's default build takes about 1.7× as long as
    Debian's, which is built with PGO and LTO (docs/performance.md); and so does one machine from
    one moment to the next. Every run reports it, as it reports the wake-up cost. Debian's build,
    like some others, does not list its optimizations in `CONFIG_ARGS`: this is measured, not
    read."""
    best = math.inf
    for batch in range(3):
        if batch:
            time.sleep(0.1)
        best = min(best, *timeit.repeat(_fixed_python_work, number=1, repeat=100))
    return round(best * 1e6, 1)
