"""R9: a client that stops reading while its room gets 50 x 1 KB app messages/s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from .conftest import FAST, NodeProcess, RawWebSocket, full_only, join, p99, rss_mb, start_node

pytestmark = pytest.mark.faults


@pytest.fixture
def quiet_node(tmp_path: Path) -> Iterator[NodeProcess]:
    """Heartbeat 300 s: a client that stops reading must be caught by its send queue, not by
    the heartbeat (20 s + 10 s by default, which cuts such a client off first)."""
    started = start_node(tmp_path, {**FAST, "ROOMSTATE_HEARTBEAT_S": "300"})
    yield started
    started.stop()


@full_only  # ~80 s: the kernel takes ~2.8 MB of socket buffers before the 1 MB queue fills
async def test_r9_a_client_that_stops_reading_is_cut_off_and_no_one_else_slows_down(
    http: aiohttp.ClientSession, quiet_node: NodeProcess, room: str
) -> None:
    node = quiet_node
    slow = await RawWebSocket.connect(node.url, f"/v1/rooms/{room}/ws", rcvbuf=4096)
    slow.send_text({"type": "join", "id": "slow", "userName": "slow"})
    sid = None
    while sid is None:
        _, payload = await slow.read_frame()
        sid = orjson.loads(payload).get("sessionId")
    # from here on `slow` never reads again
    sender, _ = await join(http, node.ws_url(room), userName="sender")
    watchers = [(await join(http, node.ws_url(room)))[0] for _ in range(3)]
    latencies: list[float] = []
    cut_off = asyncio.Event()

    async def watch(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            frame = orjson.loads(message.data)
            if frame["type"] == "app-message":
                latencies.append((time.perf_counter() - frame["data"]["t"]) * 1000)
            elif frame["type"] == "participant-left" and frame["participant"]["session_id"] == sid:
                cut_off.set()

    async def cut_count() -> float:
        async with http.get(f"{node.url}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("roomstate_slow_consumer_disconnects_total "):
                    return float(line.split()[1])
        return 0.0

    readers = [asyncio.create_task(watch(ws)) for ws in watchers]
    before = rss_mb(node)
    started = time.monotonic()
    sent = 0
    peak = before
    queue_cut_at = None
    while time.monotonic() - started < 200:  # 50 x 1 KB per second
        if queue_cut_at is None and sent % 50 == 0 and await cut_count() >= 1:
            queue_cut_at = time.monotonic()
        if queue_cut_at is not None and (cut_off.is_set() or time.monotonic() > queue_cut_at + 5):
            break
        frame = {"type": "send-app-message", "data": {"t": time.perf_counter(), "pad": "x" * 1000}}
        await sender.send_str(orjson.dumps(frame).decode())
        sent += 1
        if sent % 50 == 0:
            peak = max(peak, rss_mb(node))
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    async with http.get(f"{node.url}/metrics") as response:
        metrics = await response.text()
    slow_cuts = [
        line for line in metrics.splitlines() if line.startswith("roomstate_slow_consumer")
    ]
    for task in readers:
        task.cancel()
    for ws in [sender, *watchers]:
        await ws.close()
    slow.close()
    print(
        f"\nR9: queue cut-off after {(queue_cut_at or time.monotonic()) - started:.1f} s, "
        f"participant left: {cut_off.is_set()}; run {elapsed:.1f} s ({sent} messages, "
        f"~{sent / 1000:.1f} MB sent to it); node RSS peak growth {peak - before:.1f} MB; "
        f"others' p99 "
        f"{p99(latencies):.1f} ms over {len(latencies)} deliveries; {slow_cuts}"
    )
    assert queue_cut_at is not None, "the send-queue limit never cut the slow consumer off"
    assert cut_off.is_set(), "cut off, but its participant did not leave within 5 s"
    assert peak - before < 50
    assert p99(latencies) < 100
    assert len(latencies) >= 3 * (sent - 5)
