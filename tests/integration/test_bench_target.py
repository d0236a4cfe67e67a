"""`python -m bench target` against a node it did not start, with the node's own API key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local.servers import run_command
from tests.integration.conftest import API_KEY, ROOT, NodeProcess

pytestmark = pytest.mark.integration


def run_target(url: str, key: str, out: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bench.studies.target", url, "--api-key", key, "--out", str(out),
            "--rooms", "2", "--participants", "3", "--rates", "40", "--seconds", "1"]  # fmt: skip
    return run_command(argv, ROOT, 120)


def test_target_measures_a_keyed_deployment(keyed_node: NodeProcess, tmp_path: Path) -> None:
    done = run_target(keyed_node.url, API_KEY, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2  # the light step, then 40 msgs/s
    assert summary["failed_steps"] == 0 and summary["errors"] == 0, summary
    assert summary["light_p50_ms"] is not None and summary["light_p50_ms"] > 0
    assert summary["deliveries_per_s"] > 0
    steps = json.loads((tmp_path / "target.json").read_text())["scenarios"][0]["steps"]
    for step in steps:
        assert step["lost"] == 0 and step["unique"] == step["expected"] > 0, step
        assert step["node_cpu_us_per_delivery"] is None  # the nodes are not ours to measure
    assert (tmp_path / "target.md").read_text().startswith("# roomstate fan-out benchmark")


def test_target_says_why_a_wrong_key_is_refused(keyed_node: NodeProcess, tmp_path: Path) -> None:
    done = run_target(keyed_node.url, "not-the-key-" + "x" * 32, tmp_path)
    assert done.returncode == 2
    assert "unauthorized" in done.stderr
    assert not (tmp_path / "target.json").exists()
