"""Operations: health, readiness, metrics, graceful shutdown and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import jwt
import pytest

from roomstate.sdk.client import CallClient, RateLimited

from .conftest import API_KEY, FAST, ROOT, NodeProcess, start_node

pytestmark = pytest.mark.integration


async def test_health_readiness_and_metrics(
    node: NodeProcess, room: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{node.url}/healthz") as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})
    async with http.get(f"{node.url}/readyz") as r:
        assert (r.status, await r.json()) == (200, {"ready": True})
    async with CallClient() as a, CallClient() as b:
        await a.join(node.room_url(room))
        await b.join(node.room_url(room))
        await a.send_app_message("counted")
        await b.next_event("app-message")
        async with http.get(f"{node.url}/metrics") as r:
            text = await r.text()
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line[:1] != "#"
    }
    assert lines['roomstate_frames_in_total{type="send-app-message"}'] >= 1
    assert lines['roomstate_frames_out_total{type="app-message"}'] >= 1
    assert lines["roomstate_connections"] >= 2
    assert lines["roomstate_rooms"] >= 1
    assert "roomstate_delivery_latency_seconds_bucket" in text
    # The node's full collection at startup (before it freezes what startup made) is counted.
    assert lines['roomstate_gc_pause_seconds_count{generation="2"}'] >= 1


async def test_frames_one_client_gets_in_one_loop_iteration_share_one_write(
    tmp_path: Path, room: str, http: aiohttp.ClientSession
) -> None:
    """A burst of messages read from one client at once is handled in one go; each receiver
    gets its frames of that burst in one socket write (roomstate_client_writes), in order. A
    request over the rate limit fails at once: its error carries its id."""

    async def counts() -> tuple[float, float]:
        async with http.get(f"{node.url}/metrics") as r:
            text = await r.text()
        lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
        return (
            float(lines.get('roomstate_frames_out_total{type="app-message"}', 0)),
            float(lines["roomstate_client_writes_total"]),
        )

    node = start_node(tmp_path, FAST)
    try:
        async with CallClient() as a, CallClient() as b:
            await a.join(node.room_url(room))
            await b.join(node.room_url(room))
            frames0, writes0 = await counts()
            # 220 at once: past the burst of 200 (the join took a token; a few come back
            # while the burst goes out), so some are refused.
            sent = await asyncio.gather(
                *(a.send_app_message(i) for i in range(220)), return_exceptions=True
            )
            accepted = [i for i, result in enumerate(sent) if not isinstance(result, Exception)]
            for i in accepted:
                assert (await b.next_event("app-message"))["data"] == i
            frames1, writes1 = await counts()
    finally:
        node.stop()
    refused = [result for result in sent if isinstance(result, Exception)]
    assert len(accepted) >= 199 and refused  # the burst (one token went to the join)
    # Each refused request failed at once with its own error, not after the client's timeout.
    assert all(isinstance(result, RateLimited) for result in refused), refused
    frames, writes = frames1 - frames0, writes1 - writes0
    assert frames == len(accepted)
    # The acks to `a`, the errors and the scrapes are writes too; the messages in one write
    # each would make writes ≥ 2 × frames.
    assert writes < frames, (frames, writes)


async def test_sigterm_makes_participants_leave_and_closes_clients_with_1012(
    tmp_path: Path, room: str
) -> None:
    own = start_node(tmp_path)
    try:
        async with CallClient() as a:
            await a.join(own.room_url(room))
            b = CallClient()
            await b.join(own.room_url(room))
            own.proc.terminate()
            for client in (a, b):
                left = await client.next_event("left-meeting", timeout=5)
                assert left["closeCode"] == 1012, left
            # The first to be disconnected is seen leaving by the other.
            seen = a.events("participant-left") + b.events("participant-left")
            assert [e["reason"] for e in seen] == ["node-shutdown"], seen
            await b.close()
        assert own.proc.wait(10) == 0
    finally:
        own.stop()
    assert "shutting down" in own.log.read_text()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomstate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
        check=False,
    )


def test_cli_token_makes_a_token_the_node_accepts() -> None:
    result = run_cli("token", "--room", "r1", "--user-name", "Ann", "--owner", "--api-key", API_KEY)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), API_KEY, algorithms=["HS256"])
    assert (claims["r"], claims["u"], claims["o"]) == ("r1", "Ann", True)
    assert claims["exp"] > 0


def test_serve_help_lists_every_environment_variable() -> None:
    text = run_cli("serve", "--help").stdout
    for name in [
        "ROOMSTATE_API_KEY",
        "ROOMSTATE_REDIS",
        "ROOMSTATE_SESSION_DATA_INTERVAL_MS",
        "ROOMSTATE_FRAME_BYTES",
        "ROOMSTATE_ROOM_GRACE_S",
        "ROOMSTATE_GC_THRESHOLDS",
    ]:
        assert name in text


def test_development_mode_refuses_a_public_address() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode != 0
    assert "without an API key" in result.stderr


def test_a_bad_setting_stops_the_node_naming_it() -> None:
    env = {**os.environ, "ROOMSTATE_GC_THRESHOLDS": "10000,ten,2"}
    result = run_cli("serve", "--port", "0", env=env)
    assert result.returncode != 0
    assert "ROOMSTATE_GC_THRESHOLDS='10000,ten,2' is not three positive integers" in result.stderr
