"""`python -m bench webinar` end to end on a tiny room: 20 present + 40 hidden over a real
2-node deployment with Redis; its accounting must add up (a smoke run of the study, no timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deploy.local.servers import run_command
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_a_tiny_webinar_converges_and_its_accounting_adds_up(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "webinar", "--sizes", "60", "--present", "20",
            "--rate", "100", "--out", str(tmp_path)]  # fmt: skip
    done = run_command(argv, ROOT, 120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["webinar"]["shapes"][0]["ok"], done.stderr[-3000:]
    results = json.loads((tmp_path / "webinar-custom.json").read_text())
    run = results["groups"]["webinar"][0]
    assert run["nodes_alive"] == [True, True]
    phases = {p["phase"]: p for p in run["phases"]}
    assert list(phases) == ["join", "hands", "broadcast", "session", "leave"]
    for p in phases.values():
        assert p["all_converged"] and p["trouble"] == 0, p
        assert p["totals"]["errors"] == {} and p["totals"]["closes"] == {}, p
    join = phases["join"]
    assert join["views"] == 60 and join["totals"]["frames"]["joined"] == 60
    assert join["expect"]["roster_n"] == 20 and join["expect"]["counts"] == [40, 20]
    assert join["totals"]["frames"].get("participant-counts-updated", 0) > 0
    hands = phases["hands"]  # 10 % of the 40 hidden; both owners saw each (a latency each)
    assert hands["expect"]["hands"] == 4 and hands["latency"]["count"] == 8
    bcast = phases["broadcast"]  # 10 messages, each to the 59 others
    assert bcast["latency"]["count"] == 10 * 59 and bcast["totals"]["acks"] == 10
    leave = phases["leave"]
    assert leave["views"] == 2 and leave["expect"]["counts"] == [0, 2]
    assert leave["totals"]["acks"] == 58
    md = (tmp_path / "webinar-custom.md").read_text()
    assert md.startswith("# roomstate large rooms") and "| hands | 4 |" in md
