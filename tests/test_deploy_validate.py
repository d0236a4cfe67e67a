"""deploy/validate passes on the deployment files as committed, and fails on a broken one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_deployment_files_validate() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "validate")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " 0 failed" in done.stdout


def test_a_broken_haproxy_config_fails_validation(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "deploy", copy / "deploy", ignore=shutil.ignore_patterns("local"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "node", copy / "node", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = copy / "deploy" / "haproxy.compose.cfg"
    cfg.write_text(cfg.read_text().replace("backend", "backendd", 1))
    done = subprocess.run(
        [sys.executable, str(copy / "deploy" / "validate")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:]
