"""The peers beside roomstate: the Node.js peer's figures in the summary and the report (measured
warm, its cold step kept), and when its packages count as installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.harness import peers, report
from bench.summary import NODE_PEER_LABELS, PEER_LABEL, TOPOLOGY_LABELS, summarize
from tests.unit.test_bench_record import step
from tests.unit.test_bench_suite import results as run_results


def scenario(
    label: str, system: str, knee_rate: float, cost: float, warm: bool = False
) -> dict[str, Any]:
    steps = []
    if warm:
        steps += [{**step("ref (cold)", 1000.0), "node_cpu_us_per_delivery": 2 * cost},
                  step("warm-up", 2000.0), step("warm-up", 4000.0),
                  {**step("warm-up", 8000.0), "ok": False}]  # fmt: skip
    knee = {**step("ramp", knee_rate, knee=True), "node_cpu_us_per_delivery": cost / 4}
    steps += [step("light", 100.0), {**step("ref", 1000.0), "node_cpu_us_per_delivery": cost},
              step("ramp", 500.0), knee]  # fmt: skip
    for s in steps:
        s["label"] = label
    return {"label": label, "system": system, "participants": 10, "rooms": 10, "payload": 256,
            "kind": "app", "steps": steps, "knee": knee, "ramped": True}  # fmt: skip


def a_run(with_node: bool = True) -> dict[str, Any]:
    scs = [scenario(TOPOLOGY_LABELS["2-nodes-redis"], "2-nodes-redis", 20000.0, 30.0),
           scenario(PEER_LABEL, "peer", 2000.0, 80.0)]  # fmt: skip
    if with_node:
        label = NODE_PEER_LABELS["node-peer-streams"]
        scs.append(scenario(label, "node-peer-streams", 5000.0, 40.0, warm=True))
    r = run_results(scenarios=scs)
    r["summary"], r["targets"] = summarize(r)
    return r


def test_the_summary_gives_the_node_peer_at_its_knee_warm_and_cold() -> None:
    s = a_run()["summary"]
    assert s["node_peer_streams_deliveries_per_s"] == 45000
    assert s["node_peer_streams_node_cpu_us_per_delivery_at_knee"] == 10.0
    assert s["node_peer_streams_node_cpu_us_per_delivery"] == 40.0  # warm: after the warm-up
    assert s["node_peer_streams_cold_node_cpu_us_per_delivery"] == 80.0
    assert s["node_peer_pubsub_deliveries_per_s"] is None  # not measured in this run
    assert s["peer_deliveries_per_s"] == 18000  # issue 5's peer is still python-socketio


def test_the_report_sets_roomstate_beside_every_peer_and_says_how_warm() -> None:
    text = report.markdown(a_run(), {})
    assert "## roomstate and the peers, each at its knee" in text
    assert f"| {NODE_PEER_LABELS['node-peer-streams']} | 45,000 | 4.00 | 10.00 | 0.75 |" in text
    assert f"| {PEER_LABEL} | 18,000 | 10.00 | 20.00 | 0.38 |" in text
    assert "| 40.00 | 80.00 |" in text  # warm, then cold, at the reference load
    assert (
        "measured warm" in text
        and "(80.00 µs per delivery); then warm-up steps at 2,000, 4,000, 8,000 msgs/s" in text
    )


def test_a_run_without_a_node_peer_reports_as_before() -> None:
    assert "roomstate and the peers" not in report.markdown(a_run(with_node=False), {})


def test_the_node_peer_counts_as_installed_only_at_its_locked_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "NODE_PEER_DIR", tmp_path)
    lock = {"packages": {"": {"name": "x"}, "node_modules/socket.io": {"version": "4.8.4"}}}
    (tmp_path / "package-lock.json").write_text(json.dumps(lock))
    assert not peers.node_peer_installed()  # no node_modules
    (tmp_path / "node_modules").mkdir()
    have = {"packages": {"node_modules/socket.io": {"version": "4.8.3"}}}
    (tmp_path / "node_modules" / ".package-lock.json").write_text(json.dumps(have))
    assert not peers.node_peer_installed()  # another version
    have["packages"]["node_modules/socket.io"]["version"] = "4.8.4"
    (tmp_path / "node_modules" / ".package-lock.json").write_text(json.dumps(have))
    assert peers.node_peer_installed()
