"""`python -m bench paired`: roomstate, the floor and the peer, up at once and measured in turn."""

from __future__ import annotations

import json
import sys

import pytest

from deploy.local.servers import run_command
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_one_round_measures_the_six_steps_and_gives_the_four_ratios() -> None:
    # Steps long and busy enough for the CPU clock (10 ms ticks) to see every process work: a
    # 0.5 s step of the floor at 27 msgs/s read 0.0 µs per delivery once.
    argv = [sys.executable, "-m", "bench.studies.paired", "--rounds", "1", "--seconds", "1",
            "--knee", "2000", "--peer-knee", "300"]  # fmt: skip
    done = run_command(argv, ROOT, 240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    steps = [(r["system"], r["load"], r["rate"]) for r in result["rows"]]
    assert steps == [("ours", "ref", 1000.0), ("floor", "ref", 90.9), ("peer", "ref", 1000.0),
                     ("ours", "knee", 2000.0), ("floor", "knee", 181.8),
                     ("peer", "knee", 300.0)]  # fmt: skip
    by = {(r["system"], r["load"]): r for r in result["rows"]}
    for r in result["rows"]:
        assert r["lost"] == 0 and r["cpu_us_per_delivery"], r
    for load in ("ref", "knee"):  # the floor ran at ours' deliveries/s, not at its msgs/s
        ours, floor = by["ours", load]["deliveries_per_s"], by["floor", load]["deliveries_per_s"]
        assert 0.75 < floor / ours < 1.25, (load, ours, floor)
    ratios = result["ratios"]
    assert set(ratios) == {"floor_ref", "peer_ref", "floor_knee", "peer_knee"}
    expected = by["ours", "knee"]["cpu_us_per_delivery"] / by["peer", "knee"]["cpu_us_per_delivery"]
    assert abs(ratios["peer_knee"]["rounds"][0]["value"] - expected) < 0.001
    assert "| roomstate / floor, both at our knee's deliveries/s |" in done.stdout


def test_bad_arguments_are_refused_with_the_rule() -> None:
    for args, rule in (
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--seconds", "inf"], "--seconds must be a finite number above 0"),
        (["--knee", "0", "--peer-knee", "100"], "--knee must be a finite number of msgs/s above 0"),
    ):
        argv = [sys.executable, "-m", "bench.studies.paired", *args]
        done = run_command(argv, ROOT, 60)
        assert done.returncode == 2 and rule in done.stderr, (args, done.stderr)


def test_python_m_bench_runs_the_study_by_its_name() -> None:
    done = run_command([sys.executable, "-m", "bench", "paired", "--rounds", "0"], ROOT, 60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: python -m bench paired"), done.stderr
    assert "--rounds must be at least 1" in done.stderr
