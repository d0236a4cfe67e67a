"""Browser fixtures: Debian's headless Chromium driven by Playwright (no browser download), and the
deployments the demo page runs on.

- `browser`: one Chromium for the module; each test opens its own contexts (a context is a fresh
  profile: its own cookies and storage, like a separate person).
- `single`: one node on the in-memory bus.
- `multi`: three nodes sharing a standalone Redis, with haproxy in front of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from deploy.local.servers import Haproxy, find_binary

from ..integration.conftest import NodeProcess
from ..integration.deployments import Deployment, start_deployment

CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A dropped socket must be able to resume well after the SDK's first reconnect attempt.
NODE_ENV = {"ROOMSTATE_RESUME_GRACE_S": "10"}


@dataclass
class Site:
    """Where the browsers open the demo: `entries[i % len]` is the base URL of the i-th person."""

    name: str
    entries: list[str]
    nodes: list[NodeProcess]

    def base(self, index: int) -> str:
        return self.entries[index % len(self.entries)]


EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")


def ensure_emoji_font() -> None:
    """Best effort: without a colour emoji font the reactions render as empty boxes in the
    screenshot (the tests do not depend on it)."""
    apt = shutil.which("apt-get")
    if EMOJI_FONT.exists() or apt is None or os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = [apt, "install", "-y", "-qq", "fonts-noto-color-emoji"]
    subprocess.run(command, env=env, capture_output=True, check=False, timeout=300)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_binary("chromium", "chromium")
    ensure_emoji_font()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = start_deployment("memory", tmp_path_factory.mktemp("single"), NODE_ENV)
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def multi(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployment, Haproxy]]:
    tmp = tmp_path_factory.mktemp("multi")
    deployment = start_deployment("3-nodes-redis", tmp, NODE_ENV)
    backends = [("127.0.0.1", int(node.url.rsplit(":", 1)[1])) for node in deployment.nodes]
    try:
        haproxy = Haproxy.start(tmp, backends)
        haproxy.wait_for_states()
    except BaseException:
        deployment.stop()
        raise
    yield deployment, haproxy
    haproxy.stop()
    deployment.stop()


@pytest.fixture(params=["single-node", "3-nodes-haproxy", "3-nodes-direct"])
def site(request: pytest.FixtureRequest) -> Site:
    """Where the demo is opened: one node; haproxy before 3 nodes; each person on another node."""
    if request.param == "single-node":
        deployment = request.getfixturevalue("single")
        return Site(request.param, [deployment.url], deployment.nodes)
    deployment, haproxy = request.getfixturevalue("multi")
    if request.param == "3-nodes-haproxy":
        return Site(request.param, [haproxy.url], deployment.nodes)
    return Site(request.param, [node.url for node in deployment.nodes], deployment.nodes)
