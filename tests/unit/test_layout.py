"""Rules of the code's layout that a reader relies on: one definition of a shared type, and
error trees drawn in full where they are documented."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import roomstate.crdt.errors
import roomstate.errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "node", ROOT / "crdt"]


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in package.rglob("*.py"))


def test_the_json_type_is_defined_once() -> None:
    defined = [
        path.relative_to(ROOT).as_posix()
        for path in _modules()
        for stmt in ast.parse(path.read_text()).body
        if isinstance(stmt, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(target, ast.Name) and target.id == "Json"
            for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
        )
    ]
    assert defined == ["crdt/lww.py"], f"Json is defined in {defined}; import roomstate.crdt.Json"


@pytest.mark.parametrize(
    "module", [roomstate.errors, roomstate.crdt.errors], ids=lambda m: m.__name__
)
def test_the_documented_error_tree_names_every_exception(module: object) -> None:
    tree = inspect.getdoc(module) or ""
    classes = [
        name
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__ == getattr(module, "__name__", "")
    ]
    missing = [name for name in classes if f" {name} " not in f" {tree} ".replace("\n", " ")]
    assert classes and not missing, f"{missing} are missing from the tree in the docstring"


def _class_lengths(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [
        (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]


def test_modules_and_classes_stay_small_enough_to_read() -> None:
    """A module of node/ or crdt/ is read in one sitting: under 500 lines, classes under 350."""
    long_modules = [
        (path.relative_to(ROOT).as_posix(), lines)
        for path in _modules()
        if (lines := len(path.read_text().splitlines())) > 500
    ]
    long_classes = [
        (path.relative_to(ROOT).as_posix(), name, lines)
        for path in _modules()
        for name, lines in _class_lengths(path)
        if lines > 350
    ]
    assert not long_modules, f"split by responsibility: {long_modules}"
    assert not long_classes, f"split by responsibility: {long_classes}"
