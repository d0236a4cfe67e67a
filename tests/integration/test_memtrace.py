"""A node started with ROOMSTATE_TRACEMALLOC_DIR writes, on each SIGUSR2, the allocation sites
that grew since its last dump; without it, SIGUSR2 has no handler and tracing is off."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from roomstate.sdk.client import CallClient

from .conftest import FAST, start_node

pytestmark = pytest.mark.integration


def dumps_in(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The dumps in `path` once there are `count` of them (or what there is at `timeout`)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.count("-- dump took") >= count:
            break
        time.sleep(0.1)
    return [d for d in text.split("== dump ") if d.strip()]


async def test_sigusr2_dumps_the_sites_that_grew_since_the_last_dump(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    node = start_node(tmp_path, {**FAST, "ROOMSTATE_TRACEMALLOC_DIR": str(traces)})
    try:
        path = traces / f"tracemalloc-{node.proc.pid}.txt"
        node.proc.send_signal(signal.SIGUSR2)
        assert len(dumps_in(path, 1)) == 1
        async with CallClient() as ann:  # something for the second dump to find
            await ann.join(node.room_url("traced"), user_name="ann")
            await ann.set_user_data({"x": "y" * 1000})
            await asyncio.sleep(0.2)
            node.proc.send_signal(signal.SIGUSR2)
            dumps = dumps_in(path, 2)
        assert len(dumps) == 2, dumps
        second = dumps[1]
        assert second.startswith("2 at ")
        assert "traced" in second and "RSS" in second and "tracemalloc's own" in second
        assert "blocks in use" in second  # Python's allocator, summed up
        assert "/roomstate/" in second or "/node/" in second  # the node's own sites are named
        assert node.proc.poll() is None  # the dumps did not stop it
    finally:
        node.stop()


def test_without_the_setting_nothing_is_traced_or_written(tmp_path: Path) -> None:
    node = start_node(tmp_path, FAST)
    try:
        node.proc.send_signal(signal.SIGUSR2)  # no handler: the default action ends the process
        node.proc.wait(10)
        assert node.proc.returncode == -signal.SIGUSR2
        assert not list(tmp_path.glob("**/tracemalloc-*.txt"))
    finally:
        node.stop()
