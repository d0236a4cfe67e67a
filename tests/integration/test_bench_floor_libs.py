"""`python -m bench floor_libs`: the three bare servers in roomstate's shape deliver every frame."""

from __future__ import annotations

import json
import sys

import pytest

from deploy.local.servers import run_command
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_each_bare_server_delivers_every_frame_once() -> None:
    argv = [sys.executable, "-m", "bench.studies.floor_libs", "--rounds", "1", "--seconds", "0.5"]
    done = run_command(argv, ROOT, 240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    servers = {(r["server"], r["load"]) for r in result["rows"]}
    assert servers == {(s, load) for s in ("aiohttp", "aiohttp, direct writes", "picows")
                       for load in ("light", "ref", "high")}  # fmt: skip
    started = {r["server"]: r["deployment"] for r in result["rows"]}
    assert started == {"aiohttp": "python-floor-rooms",
                       "aiohttp, direct writes": "python-floor-rooms-direct",
                       "picows": "python-floor-rooms-picows"}  # fmt: skip
    for r in result["rows"]:
        assert r["expected"] > 0 and r["unique"] == r["expected"], r
        assert r["lost"] == 0 and r["dups"] == 0, r
        assert r["p50_ms"] > 0 and r["cpu_us_per_delivery"] is not None, r
    assert len(result["medians"]) == 9


def test_bad_arguments_are_refused_with_the_rule() -> None:
    argv = [sys.executable, "-m", "bench.studies.floor_libs", "--rounds", "0"]
    done = run_command(argv, ROOT, 60)
    assert done.returncode == 2 and "--rounds must be at least 1" in done.stderr
    argv = [sys.executable, "-m", "bench.studies.floor_libs", "--seconds", "nan"]
    done = run_command(argv, ROOT, 60)
    assert done.returncode == 2 and "--seconds must be a finite number above 0" in done.stderr
