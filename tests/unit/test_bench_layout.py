"""bench/'s import graph: no cycle, and imports go one way (bench/__init__.py): suite and summary
above the studies, the studies above the harness; the systems import only the harness's common
module, and the harness starts them by path, never imports them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(BENCH.rglob("*.py")) if "node_modules" not in p.parts}


def bench_imports(path: Path, known: set[str]) -> set[str]:
    """The bench modules a module imports, at its top or inside a function (`from bench.x import
    y` counts as bench.x.y when that is a module, else as bench.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "bench":
                continue
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # a package's __init__ is imported with any of its modules; it imports nothing itself here
    return {name: bench_imports(path, known) - {name} for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_check_finds_a_cycle_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_bench_import_graph_has_no_cycle() -> None:
    edges = graph()
    assert "bench.harness.runner" in edges and "bench.suite" in edges  # the walk found them
    assert find_cycle(edges) is None


def layer(name: str) -> int:
    if name.startswith("bench.harness") or name.startswith("bench.systems"):
        return 0
    if name.startswith("bench.studies"):
        return 1
    return 2  # bench, bench.__main__, bench.suite, bench.summary


def test_imports_go_one_way() -> None:
    wrong = []
    for name, imported in graph().items():
        for other in imported:
            if layer(other) > layer(name):
                wrong.append(f"{name} imports {other}")
            if name.startswith("bench.harness") and other.startswith("bench.systems"):
                wrong.append(f"{name} imports {other} (the harness starts systems by path)")
            if name.startswith("bench.systems") and other not in {"bench.harness.common"}:
                wrong.append(f"{name} imports {other} (a system imports only harness.common)")
    assert wrong == []


def test_every_bench_module_imports_alone_in_a_fresh_interpreter() -> None:
    # Each module is imported with no bench module loaded, so each is the first of its graph to
    # load: a cycle through module-level imports fails one of them on a partly run module.
    names = sorted(modules())
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'bench' or m.startswith('bench.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
