"""`pip install .` installs one import package, `roomstate`, holding every module and file of
node/ and crdt/, and nothing named `node` or `crdt` (decision 0007)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    (path,) = out.glob("roomstate-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_has_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"roomstate"}


def test_every_file_of_node_and_crdt_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    expected = {
        f"roomstate/{path.relative_to(ROOT / 'node').as_posix()}"
        for path in (ROOT / "node").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    } | {
        f"roomstate/crdt/{path.relative_to(ROOT / 'crdt').as_posix()}"
        for path in (ROOT / "crdt").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    missing = sorted(expected - set(wheel.namelist()))
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"
    assert "roomstate/sdk/browser/roomstate.js" in expected


def test_the_version_is_the_packages(wheel: zipfile.ZipFile) -> None:
    import roomstate

    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    assert f"\nVersion: {roomstate.__version__}\n" in wheel.read(metadata).decode()
