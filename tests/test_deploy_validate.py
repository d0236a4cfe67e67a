"""deploy/validate passes on the deployment files as committed, and fails on a broken one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def validate(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "deploy" / "validate")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def copy_of_the_repository(tmp_path: Path) -> Path:
    """What deploy/validate reads, copied, to break one file of."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "deploy", copy / "deploy", ignore=shutil.ignore_patterns("local"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "node", copy / "node", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_deployment_files_validate() -> None:
    done = validate(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " 0 failed" in done.stdout


def test_a_broken_haproxy_config_fails_validation(tmp_path: Path) -> None:
    copy = copy_of_the_repository(tmp_path)
    cfg = copy / "deploy" / "haproxy.compose.cfg"
    cfg.write_text(cfg.read_text().replace("backend", "backendd", 1))
    done = validate(copy)
    assert done.returncode == 1, done.stdout[-3000:]


# (file under deploy/, text replaced, replacement, the check that must fail)
BREAKAGES = {
    "a budget allowing no eviction": (
        "k8s/roomstate-pdb.yaml",
        "maxUnavailable: 1",
        "maxUnavailable: 0",
        "FAIL  PodDisruptionBudget: one of the 3 pods may be evicted at a time",
    ),
    "a policy letting in Redis's port": (
        "k8s/roomstate-networkpolicy.yaml",
        "        - port: 8080\n",
        "        - port: 8080\n          protocol: TCP\n        - port: 6379\n",
        "FAIL  NetworkPolicy: ingress to the node port 8080 only",
    ),
    "a policy letting the pods reach anything": (
        "k8s/roomstate-networkpolicy.yaml",
        "  egress:\n",
        "  egress:\n    - {}\n",
        "FAIL  NetworkPolicy: every egress rule names its destinations and ports",
    ),
    "a policy restricting one direction only": (
        "k8s/roomstate-networkpolicy.yaml",
        "policyTypes: [Ingress, Egress]",
        "policyTypes: [Ingress]",
        "FAIL  NetworkPolicy: both directions are restricted",
    ),
    "haproxy's stats published on the host": (
        "compose.yaml",
        '      - "${ROOMSTATE_HTTP_PORT:-8080}:8080"\n',
        '      - "${ROOMSTATE_HTTP_PORT:-8080}:8080"\n      - "8404:8404"\n',
        "FAIL  haproxy: its stats and metrics listen on a port compose does not publish",
    ),
    "an image label of another version": (
        "Dockerfile",
        "ARG ROOMSTATE_VERSION=",
        "ARG ROOMSTATE_VERSION=9",
        "FAIL  ARG ROOMSTATE_VERSION defaults to the package's version",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_deployment_file_fails_the_check_it_breaks(tmp_path: Path, breakage: str) -> None:
    name, old, new, failure = BREAKAGES[breakage]
    copy = copy_of_the_repository(tmp_path)
    path = copy / "deploy" / name
    text = path.read_text()
    assert text.count(old) == 1, f"{name} no longer holds {old!r}"
    path.write_text(text.replace(old, new))
    done = validate(copy)
    assert done.returncode == 1, done.stdout[-3000:]
    assert failure in done.stdout, done.stdout[-3000:]
