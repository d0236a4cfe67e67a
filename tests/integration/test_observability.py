"""What an operator reads of a node: its version everywhere it is shown, its metrics (and the
dashboard built on them), its JSON log lines. One node on a real redis-server, logging JSON at
DEBUG, serves the module."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import roomstate
from deploy.local.servers import RedisServer, redis_command, track
from roomstate.sdk.client import CallClient

from .conftest import FAST, ROOT

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "deploy" / "grafana" / "roomstate.json"
LOG_KEYS = {"time", "level", "logger", "message"}


@dataclass
class JsonNode:
    proc: subprocess.Popen[str]
    url: str
    stdout: list[str]  # the lines it printed on stdout before it listened
    stderr: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        assert self.proc.stdout is not None
        self.stdout += self.proc.stdout.read().splitlines()
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[JsonNode]:
    """`roomstate serve --log-format json --log-level DEBUG` on the Redis bus."""
    stderr = tmp_path_factory.mktemp("node") / "stderr.log"
    env = {**os.environ, **FAST, "PYTHONPATH": str(ROOT)}
    argv = ["serve", "--port", "0", "--redis", redis.url, "--log-format", "json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomstate", *argv, "--log-level", "DEBUG"],
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        env=env,
        cwd=ROOT,
    )
    track(proc)
    assert proc.stdout is not None
    printed: list[str] = []
    deadline = time.monotonic() + 20
    url = ""
    while not url and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        printed.append(line.rstrip("\n"))
        found = re.search(r"listening on (http://[0-9.:]+)", line)
        url = found.group(1) if found else ""
    if not url:
        proc.kill()
        raise RuntimeError(f"node did not start: {stderr.read_text()[-2000:]}")
    started = JsonNode(proc, url, printed, stderr)
    yield started
    started.stop()


async def metrics_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as reply:
        assert reply.status == 200
        return await reply.text()


async def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics, by its name and labels as the text shows them."""
    samples = {}
    for family in text_string_to_metric_families(await metrics_text(url)):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


SERIES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_names(text: str) -> set[str]:
    """The names a query can select from this /metrics text: the series of every family it
    declares, including a labelled one with no series yet (an error code never sent)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SERIES.get(family.type, ("",))}
    return names


# -- the version --


async def test_every_place_shows_the_one_version(node: JsonNode) -> None:
    version = roomstate.__version__
    cli = subprocess.run(
        [sys.executable, "-m", "roomstate", "--version"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=True,
    )  # fmt: skip
    assert cli.stdout.strip() == f"roomstate {version}"
    assert importlib.metadata.version("roomstate") == version
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.findall(r"^ARG ROOMSTATE_VERSION=(\S+)$", dockerfile, re.M) == [version]
    assert 'org.opencontainers.image.version="${ROOMSTATE_VERSION}"' in dockerfile
    deployment = (ROOT / "deploy" / "k8s" / "roomstate-deployment.yaml").read_text()
    assert re.findall(r"image: \S+:(\S+)", deployment) == [version]
    assert f"## [{version}] - " in (ROOT / "CHANGELOG.md").read_text()
    samples = await scrape(node.url)
    built = [name for name in samples if name.startswith("roomstate_build_info{")]
    assert len(built) == 1 and f'version="{version}"' in built[0], built
    assert samples[built[0]] == 1


def test_the_license_is_the_apache_license_pyproject_declares() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


# -- metrics and the dashboard --

# PromQL words that are not metric names; the functions are recognised by the "(" after them.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, legends)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for found in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word, after = found.group(), expr[found.end() :].lstrip()[:1]
        if after != "(" and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every panel target's expression, and the metric of each label_values() variable."""
    queries = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        queries += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        found = re.fullmatch(r"label_values\(\s*([^,]+),\s*\w+\s*\)", text)
        if found:
            queries.append(found.group(1))
    return queries


def test_the_query_reader_finds_metric_names() -> None:
    """The reader the dashboard test relies on: it must see every name, and nothing else."""
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$i", x="y(z)"}'
        "[$__rate_interval]))) / on (job) group_left b_total - count(c) > bool 2"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


async def test_every_metric_the_dashboard_queries_is_exported(node: JsonNode) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 15
    names = set().union(*map(metric_names, queries))
    exported = exported_names(await metrics_text(node.url))
    missing = sorted(names - exported)
    assert not missing, f"the dashboard queries metrics /metrics lacks: {missing}"
    # what operators look at first is on it
    for wanted in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "roomstate_event_loop_lag_seconds_bucket",
        "roomstate_bus_publish_latency_seconds_bucket",
        "roomstate_lease_age_seconds",
        "roomstate_bus_reconnects_total",
        "roomstate_lease_losses_total",
        "roomstate_bus_fenced_writes_total",
    ):
        assert wanted in names, f"the dashboard does not show {wanted}"


async def test_the_bus_metrics_follow_the_bus(node: JsonNode, redis: RedisServer) -> None:
    """Publishes are timed, the lease's age stays under a renewal period or two, and a
    connection Redis closed is counted when it is opened again."""
    before = await scrape(node.url)
    async with CallClient() as client:
        await client.join(f"{node.url}/rooms/metrics-room")
        await client.set_meeting_session_data({"k": 1})
    after = await scrape(node.url)
    published = "roomstate_bus_publish_latency_seconds_count"
    assert after[published] >= before[published] + 2  # the join and the write, at least
    assert 0 <= after["roomstate_lease_age_seconds"] < 2.5
    assert after["roomstate_bus_reconnects_total"] == before["roomstate_bus_reconnects_total"]

    redis_command(redis.port, "CLIENT", "KILL", "TYPE", "normal")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        now = await scrape(node.url)
        if now["roomstate_bus_reconnects_total"] > before["roomstate_bus_reconnects_total"]:
            break
    else:
        pytest.fail("no reconnect counted after Redis closed the node's connections")
    assert now["roomstate_lease_losses_total"] == 0
    assert now["roomstate_bus_fenced_writes_total"] == 0


# -- JSON logs --


def json_lines(lines: list[str], where: str) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{where} line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict), f"{where} line {number} is not an object: {line!r}"
        assert entry.keys() >= LOG_KEYS, f"{where} line {number} lacks {LOG_KEYS - entry.keys()}"
        entries.append(entry)
    return entries


async def test_json_logs_are_one_object_per_line_with_node_room_and_session(
    node: JsonNode,
) -> None:
    room = "json-log-room"
    async with CallClient() as client:
        await client.join(f"{node.url}/rooms/{room}")
        session = client.session_id
        await client.set_meeting_session_data({"k": 2})
    await asyncio.sleep(0.2)  # the leave's lines
    out = json_lines(node.stdout, "stdout")
    assert any("listening on" in entry["message"] for entry in out)
    err = json_lines(node.stderr.read_text().splitlines(), "stderr")
    assert any(entry["logger"].startswith("roomstate.") for entry in err)
    joins = [e for e in err if e.get("session") == session and "joined" in e["message"]]
    assert len(joins) == 1, err[-20:]
    (join,) = joins
    assert join["room"] == room and join["level"] == "DEBUG"
    assert join["node"].startswith("node-")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", join["time"])


def test_an_unknown_log_format_stops_the_node_naming_the_setting() -> None:
    env = {**os.environ, "ROOMSTATE_LOG_FORMAT": "yaml", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "roomstate", "serve", "--port", "0"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ROOMSTATE_LOG_FORMAT='yaml' is not one of text, json" in done.stderr


def test_a_bad_setting_in_json_mode_is_a_json_line() -> None:
    env = {**os.environ, "ROOMSTATE_GC_THRESHOLDS": "1,two,3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "roomstate", "serve", "--port", "0", "--log-format", "json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    (entry,) = json_lines(done.stderr.splitlines(), "stderr")
    assert entry["level"] == "CRITICAL"
    assert "ROOMSTATE_GC_THRESHOLDS='1,two,3'" in entry["message"]
