"""`python -m bench wake_cost`: the ping-pong of two processes, measured both ways."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploy.local.servers import run_command
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bench.studies.wake_cost", *args]
    return run_command(argv, ROOT, 60)


def test_every_rate_and_socket_kind_is_measured() -> None:
    done = run("--rates", "500,2000", "--messages", "20")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r["socket"], r["rate"]) for r in results] == [
        ("tcp", 500.0), ("unix", 500.0), ("tcp", 2000.0), ("unix", 2000.0)
    ]  # fmt: skip
    for r in results:
        assert r["messages"] == 20
        # the peer has the bytes after the send began and before the reply is back: a hop is
        # shorter than its round trip (a stale or misread reply would break this)
        assert 0 < r["hop_us"]["p50"] <= r["round_trip_us"]["p50"], r
        assert 0 < r["send_us"]["p50"] <= r["round_trip_us"]["p50"], r


def test_bad_arguments_are_refused_with_the_rule() -> None:
    done = run("--rates", "fast")
    assert done.returncode == 2 and "--rates must be comma-separated numbers" in done.stderr
    done = run("--rates", "100,nan")
    assert done.returncode == 2 and "--rates must be finite numbers above 0" in done.stderr
    done = run("--messages", "3")
    assert done.returncode == 2 and "--messages must be at least 10" in done.stderr
