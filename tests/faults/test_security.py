"""Security and hostile input, rows S3-S9 of reliability.md (S1: tests/integration/test_tokens.py;
S2: test_fuzz.py). One development-mode node process per module; figures are printed."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import zlib
from pathlib import Path

import aiohttp
import orjson
import pytest

from roomstate import auth

from .conftest import (
    API_KEY,
    FAST,
    ORIGIN_OK,
    LatencyProbe,
    NodeProcess,
    RawWebSocket,
    join,
    recv_json,
    rss_mb,
    start_node,
)

pytestmark = pytest.mark.faults


async def pong_within(ws: aiohttp.ClientWebSocketResponse, request_id: str, timeout: float) -> None:
    """The connection is open and answers: a ping gets its pong (other frames skipped)."""
    await ws.send_str(orjson.dumps({"type": "ping", "id": request_id}).decode())
    async with asyncio.timeout(timeout):
        while (await recv_json(ws)).get("id") != request_id:
            pass


# -- S3: Origin allowlist --


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://app.example.evil"])
async def test_s3_a_handshake_from_an_origin_off_the_allowlist_is_403(
    node: NodeProcess, room: str, origin: str
) -> None:
    raw = await RawWebSocket.connect(node.url, f"/v1/rooms/{room}/ws", {"Origin": origin})
    raw.close()
    assert raw.status == 403
    ok = await RawWebSocket.connect(node.url, f"/v1/rooms/{room}/ws", {"Origin": ORIGIN_OK})
    ok.close()
    assert ok.status == 101


# -- S4: oversize requests and frames --


async def test_s4_oversize_requests_get_too_large_and_keep_the_connection(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    ws, _ = await join(http, node.ws_url(room))
    big = "x" * 5000
    requests = {
        "app": {"type": "send-app-message", "data": big},
        "user": {"type": "set-user-data", "data": big},
        "session": {"type": "set-meeting-session-data", "data": {"k": "x" * 110_000}},
    }
    for request_id, frame in requests.items():
        await ws.send_str(orjson.dumps({**frame, "id": request_id}).decode())
        reply = await recv_json(ws)
        assert (reply["type"], reply["id"], reply["code"]) == ("error", request_id, "too-large")
    await pong_within(ws, "still-open", 2)
    other = await http.ws_connect(node.ws_url(room))
    await other.send_str(orjson.dumps({"type": "join", "id": "j", "userData": big}).decode())
    reply = await recv_json(other)
    assert (reply["type"], reply["code"]) == ("error", "too-large")
    await pong_within(other, "still-open", 2)
    await other.close()
    await ws.send_str("x" * (128 * 1024 + 1))
    closed = await ws.receive(timeout=5)
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    print("\nS4: app/user/session/join over their limits: too-large, open; frame 128 KiB+1: 1009")


# -- S5: permessage-deflate bomb --


async def test_s5_deflate_is_not_negotiated_and_a_compressed_bomb_is_closed(
    node: NodeProcess, room: str
) -> None:
    bomb_plain = b'{"type":"ping","pad":"' + b"a" * 20_000_000 + b'"}'
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = squeeze.compress(bomb_plain) + squeeze.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]  # RFC 7692: the trailing 00 00 ff ff is left off
    before = rss_mb(node)
    codes = []
    for _ in range(20):
        raw = await RawWebSocket.connect(
            node.url,
            f"/v1/rooms/{room}/ws",
            {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
        )
        assert raw.status == 101
        assert "sec-websocket-extensions" not in raw.headers, "the node must not offer deflate"
        raw.send_frame(bomb, rsv1=True)
        codes.append(await raw.close_code(5))
        raw.close()
    grown = rss_mb(node) - before
    print(
        f"\nS5: 20 bombs of {len(bomb)} bytes (inflating to {len(bomb_plain) / 1e6:.0f} MB): "
        f"close codes {sorted(set(codes))}, node RSS grew {grown:.1f} MB"
    )
    assert set(codes) == {1002}, codes  # protocol error: RSV1 without a negotiated extension
    assert grown < 10


# -- S6: deep JSON --


async def test_s6_json_nested_100000_deep_is_an_error_and_others_are_unaffected(
    http: aiohttp.ClientSession, tmp_path: Path, room: str
) -> None:
    """The frame limit is raised to 256 KiB here so that a 100,000-deep array fits in it."""
    deep = start_node(tmp_path, {**FAST, "ROOMSTATE_FRAME_BYTES": str(256 * 1024)})
    try:
        bystander, _ = await join(http, deep.ws_url(room))
        attacker, _ = await join(http, deep.ws_url(room))
        nests = {
            "array": "[" * 100_000 + "]" * 100_000,
            "in-user-data": '{"type":"set-user-data","id":1,"data":'
            + "[" * 100_000
            + "]" * 100_000
            + "}",
            "object": '{"a":' * 40_000 + "1" + "}" * 40_000,
        }
        for what, text in nests.items():
            assert len(text) <= 256 * 1024, what
            started = time.perf_counter()
            await attacker.send_str(text)
            reply = await recv_json(attacker)
            elapsed = (time.perf_counter() - started) * 1000
            print(f"\nS6: {what} ({len(text)} bytes): {reply['code']} in {elapsed:.1f} ms")
            assert (reply["type"], reply["code"]) == ("error", "bad-request"), reply
        await pong_within(attacker, "a", 2)
        await pong_within(bystander, "b", 2)
        async with http.post(
            f"{deep.url}/v1/rooms/{room}/session-data", data=nests["array"]
        ) as response:
            assert response.status == 400
        assert deep.proc.poll() is None
    finally:
        deep.stop()


# -- S7: flooding --


async def test_s7_a_flood_is_rate_limited_then_closed_and_others_keep_p99_under_50_ms(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    probe = await LatencyProbe(http, node.ws_url(room)).start()
    flooder, _ = await join(http, node.ws_url(room))
    await asyncio.sleep(0.5)
    probe.reset()
    limited = 0
    close_code = None

    async def read() -> None:
        nonlocal limited, close_code
        async for message in flooder:
            if message.type == aiohttp.WSMsgType.TEXT:
                limited += orjson.loads(message.data).get("code") == "rate-limited"
        close_code = flooder.close_code

    reader = asyncio.create_task(read())
    frame = orjson.dumps({"type": "send-app-message", "data": {"flood": "x" * 100}}).decode()
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 5 and not flooder.closed:  # 1,000 frames/s, 10 per 10 ms
        for _ in range(10):
            try:
                await flooder.send_str(frame)
                sent += 1
            except ConnectionError:
                break
        await asyncio.sleep(0.01)
    closed_after = time.monotonic() - started
    await asyncio.wait_for(reader, 5)
    await asyncio.sleep(1.0)  # the probe keeps measuring after the flood
    await probe.stop()
    print(
        f"\nS7: flood of {sent} frames at ~1000/s: {limited} rate-limited errors, "
        f"closed {close_code} after {closed_after:.2f} s; others' p99 {probe.p99():.1f} ms "
        f"over {len(probe.latencies)} probe messages"
    )
    assert limited > 0
    assert close_code == 1008
    assert len(probe.latencies) >= probe.sent - 2 > 50
    assert probe.p99() < 50


# -- S8: half-open handshakes and header floods --


async def test_s8_half_open_handshakes_and_header_floods_are_cut_off_while_clients_connect(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    """The node here has ROOMSTATE_HANDSHAKE_TIMEOUT_S=2 (default 10)."""
    host, port = node.url.removeprefix("http://").split(":")
    half_open = []
    for _ in range(500):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /v1/rooms/{room}/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: webs".encode())
        half_open.append((reader, writer))
    opened = time.monotonic()
    join_ms = []
    sockets = []
    for _ in range(20):  # real clients join meanwhile
        started = time.perf_counter()
        ws, _ = await join(http, node.ws_url(room))
        join_ms.append((time.perf_counter() - started) * 1000)
        sockets.append(ws)

    flood = "".join(f"X-Flood-{i}: {i}\r\n" for i in range(2000))
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v1/rooms/{room}/ws HTTP/1.1\r\nHost: {host}\r\n{flood}\r\n".encode())
    status = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    writer.close()
    long_line = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Long: {'a' * 10_000}\r\n\r\n"
    reader2, writer2 = await asyncio.open_connection(host, int(port))
    writer2.write(long_line.encode())
    long_status = (await asyncio.wait_for(reader2.readline(), 5)).decode().strip()
    writer2.close()

    async def cut(reader: asyncio.StreamReader) -> float:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        return time.monotonic() - opened

    cut_after = await asyncio.wait_for(asyncio.gather(*(cut(r) for r, _ in half_open)), 10)
    for _, w in half_open:
        w.close()
    for ws in sockets:  # the joined clients were not cut off
        await pong_within(ws, "alive", 2)
        await ws.close()
    print(
        f"\nS8: 500 half-open handshakes cut after {min(cut_after):.1f}-{max(cut_after):.1f} s; "
        f"20 joins meanwhile, slowest {max(join_ms):.0f} ms; 2,000 headers: {status!r}; "
        f"a 10 kB header line: {long_status!r}"
    )
    assert max(cut_after) < 2 + 2
    assert max(join_ms) < 1000
    assert status.split()[1] == "400", status
    assert long_status.split()[1] == "400", long_status


# -- S9: the REST API key --


def test_s9_the_api_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.check_api_key("k" * 32, "Bearer " + "k" * 32)
    assert not auth.check_api_key("k" * 32, "Bearer " + "k" * 31 + "j")
    assert not auth.check_api_key("k" * 32, "Bearer k")
    assert len(calls) == 3, "every comparison goes through hmac.compare_digest"
    assert "==" not in inspect.getsource(auth.check_api_key).split('"""')[-1].replace(
        'scheme.lower() == "bearer"', ""
    )


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", f"Bearer {API_KEY[:-1]}", f"Bearer {API_KEY}x", f"Token {API_KEY}"],
)
async def test_s9_a_wrong_or_missing_key_is_401_and_the_right_one_passes(
    http: aiohttp.ClientSession, keyed: NodeProcess, room: str, authorization: str | None
) -> None:
    """tests/integration/test_tokens.py covers four cases on four routes; this adds near-miss
    keys (a prefix, a suffix) and the session-data POST."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    routes = [
        ("GET", f"/v1/rooms/{room}/presence"),
        ("POST", f"/v1/rooms/{room}/session-data"),
        ("POST", f"/v1/rooms/{room}/send-app-message"),
    ]
    for method, path in routes:
        async with http.request(method, keyed.url + path, headers=headers, json={}) as response:
            assert response.status == 401, (method, path)
    good = {"Authorization": f"Bearer {API_KEY}"}
    async with http.get(f"{keyed.url}/v1/rooms/{room}/presence", headers=good) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> object:
    started = start_node(tmp_path_factory.mktemp("keyed"), {**FAST, "ROOMSTATE_API_KEY": API_KEY})
    yield started
    started.stop()
