"""`python -m bench churn` end to end, tiny: 6 clients in 2 rooms on 3 nodes + Redis for a few
seconds, the nodes telling where their memory is; its accounting must add up (a smoke run of the
study, no figures checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deploy.local.servers import run_command
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_a_tiny_churn_keeps_its_rooms_and_reports_each_nodes_memory(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "churn", "--clients", "6", "--rooms", "2",
            "--seconds", "8", "--sample-s", "1", "--after-s", "0", "--allocators",
            "--out", str(tmp_path)]  # fmt: skip
    done = run_command(argv, ROOT, 120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"], done.stderr[-3000:]
    tally = summary["tally"]
    assert tally["joins"] > 2  # the anchors, and churning clients that came back
    assert tally["leaves"] + tally["drops"] > 0
    assert tally["writes"] > 0 and tally["acks"] > 0
    assert summary["redis"]["room_keys"] == [4]  # a stream and a state hash per room
    results = json.loads((tmp_path / "churn-allocators.json").read_text())
    labels = [d["label"] for d in results["dumps"]]
    assert labels == ["idle", "quarter", "half", "end"]
    assert len(results["allocators"]) == 3
    for dumps in results["allocators"]:  # every node wrote every dump, and it was read
        assert len(dumps) == len(labels)
        assert all(d["rss_mb"] > 0 and d["pymalloc_allocated_mb"] > 0 for d in dumps)
    assert [row["node"] for row in summary["node_allocators"]] == [0, 1, 2]
    assert "Where each node's memory is" in (tmp_path / "churn-allocators.md").read_text()
