"""`crdt/` is pure: it imports no I/O, clock, randomness or concurrency module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "select",
    "ssl",
    "subprocess",
    "threading",
    "multiprocessing",
    "os",
    "time",
    "datetime",
    "random",
    "secrets",
    "uuid",
    "redis",
    "aiohttp",
    "websockets",
    "io",
    "pathlib",
    "shutil",
    "signal",
}
CRDT = Path(__file__).resolve().parents[2] / "crdt"


@pytest.mark.parametrize("path", sorted(CRDT.glob("*.py")), ids=lambda p: p.name)
def test_crdt_module_imports_nothing_forbidden(path: Path) -> None:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"


def test_importing_crdt_loads_no_forbidden_module() -> None:
    """Also catches a module pulled in indirectly.

    orjson itself loads datetime and uuid (to be able to encode such values), so the baseline is
    taken after importing orjson: what is checked is what crdt adds.
    """
    probe = (
        "import sys, orjson; before = set(sys.modules); import roomstate.crdt; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    top = {name.split(".")[0] for name in loaded}
    assert not top & FORBIDDEN, f"importing crdt loads {sorted(top & FORBIDDEN)}"
