"""The browser SDK as an npm package: `npm pack` of node/sdk/browser, installed from the tarball
into a scratch project (offline: it has no dependencies), imported by its package name in
Chromium, joining a real node. Every node serves the same files at /sdk/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

import roomstate

from ..integration.deployments import Deployment

pytestmark = pytest.mark.browser

PACKAGE = Path(__file__).resolve().parents[2] / "node" / "sdk" / "browser"
NAME = "@roomstate/client"


def manifest() -> dict[str, Any]:
    return dict(json.loads((PACKAGE / "package.json").read_text()))


def test_the_package_version_is_roomstates() -> None:
    assert manifest()["version"] == roomstate.__version__
    source = (PACKAGE / "roomstate.js").read_text()
    match = re.search(r'^export const VERSION = "([^"]+)";$', source, re.M)
    assert match is not None and match[1] == roomstate.__version__


def test_the_manifest_declares_esm_exports_and_types() -> None:
    meta = manifest()
    assert meta["name"] == NAME and meta["type"] == "module"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", meta["version"])
    entry = meta["exports"]["."]
    assert (PACKAGE / entry["import"]).is_file() and (PACKAGE / entry["types"]).is_file()
    assert meta["types"] == entry["types"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project with the packed tarball installed, as an app would have it."""
    npm = shutil.which("npm")
    if npm is None:  # a failure, not a skip: the package is what this checks
        pytest.fail("npm is not installed: install the Debian/Ubuntu package 'npm'")
    tmp = tmp_path_factory.mktemp("npm")
    packed = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(tmp), str(PACKAGE)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (info,) = json.loads(packed.stdout)
    assert info["name"] == NAME and info["version"] == roomstate.__version__
    assert {f["path"] for f in info["files"]} == {"package.json", "roomstate.js", "roomstate.d.ts"}
    app = tmp / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "scratch-app", "private": True}))
    subprocess.run(
        [npm, "install", "--offline", "--no-audit", "--no-fund", str(tmp / info["filename"])],
        cwd=app, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return app


@pytest.fixture
def static(project: Path) -> Iterator[str]:
    """A tiny static server for the scratch project (its page and node_modules)."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(project))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def page_html(project: Path) -> str:
    """The app's page: the package imported by its name, resolved as a bundler would, from the
    installed package.json's `exports`."""
    installed = project / "node_modules" / "@roomstate" / "client"
    entry = json.loads((installed / "package.json").read_text())["exports"]["."]["import"]
    target = f"/node_modules/{NAME}/{entry.removeprefix('./')}"
    imports = json.dumps({"imports": {NAME: target}})
    return f'<!doctype html><script type="importmap">{imports}</script><p>app</p>'


JOIN = """async (url) => {
    const sdk = await import("@roomstate/client");
    const { default: Daily, createCallObject, Daily: named, VERSION } = sdk;
    const a = Daily.createCallObject(), b = createCallObject();
    const out = { sameFactory: named === Daily, version: Daily.version(), VERSION };
    const got = new Promise((resolve) => b.once("app-message", resolve));
    await a.join({ url, userName: "ada" });
    await b.join({ url, userName: "bob" });
    a.sendAppMessage({ hi: "bob" }, b.sessionId);
    const message = await got;
    const fromA = message.fromId === a.sessionId;
    out.message = { action: message.action, data: message.data, fromId: fromA };
    out.state = a.meetingState();
    out.others = Object.keys(a.participants()).length;
    await a.destroy();
    await b.leave();
    out.destroyed = [a.isDestroyed(), a.meetingState()];
    return out;
}"""


def test_the_installed_package_joins_a_node_in_chromium(
    project: Path, static: str, single: Deployment, browser: Browser
) -> None:
    (project / "index.html").write_text(page_html(project))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{static}/index.html")
        out = page.evaluate(JOIN, f"{single.url}/rooms/npm-{uuid.uuid4().hex[:8]}")
    finally:
        context.close()
    assert out["sameFactory"] is True
    assert out["version"] == out["VERSION"] == roomstate.__version__
    assert out["message"] == {"action": "app-message", "data": {"hi": "bob"}, "fromId": True}
    assert out["state"] == "joined-meeting" and out["others"] == 2
    assert out["destroyed"] == [True, "left-meeting"]


def test_every_node_serves_the_packaged_files(project: Path, single: Deployment) -> None:
    installed = project / "node_modules" / "@roomstate" / "client"
    for name in ("roomstate.js", "roomstate.d.ts"):
        with urllib.request.urlopen(f"{single.url}/sdk/{name}", timeout=5) as answer:
            assert answer.status == 200
            assert answer.read() == (installed / name).read_bytes(), name
