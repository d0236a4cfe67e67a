"""Import rules between the parts (docs/architecture.md, "The map").

- The pure parts — `roomstate.crdt`, the wire protocol, the room logic, the Redis bus's feed and key
  layout, the SDK's call state — import no I/O, clock, concurrency or network module.
- Only `roomstate.bus.redis` imports redis or hiredis.
- The edge node imports neither aiohttp nor the server.
- The SDK imports, of roomstate, only the wire types, the errors and the `Json` type.

Checked on the source (every import statement, including those inside functions), and for
`roomstate.crdt` also by importing it in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# I/O, clock, randomness and concurrency: what a sans-I/O part must not import.
IMPURE = {
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
    "hiredis",
    "aiohttp",
    "websockets",
    "io",
    "pathlib",
    "shutil",
    "signal",
}


def _module_name(path: Path) -> str:
    """The import name of a file under node/ or crdt/ (node/ is `roomstate`)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = "roomstate" if parts[0] == "node" else "roomstate.crdt"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(path): path
    for folder in ("node", "crdt")
    for path in sorted((ROOT / folder).rglob("*.py"))
}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, by its full name (relative imports resolved)."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = (package or _module_name(path)).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _under(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _selected(*prefixes: str) -> list[str]:
    return sorted(name for name in MODULES if _under(name, *prefixes))


PURE = _selected(
    "roomstate.crdt",
    "roomstate.wire",
    "roomstate.room",
    "roomstate.bus.redis.feed",
    "roomstate.bus.redis.keys",
    "roomstate.bus.redis.state_hash",
    "roomstate.sdk.state",
    "roomstate.sdk.writes",
    "roomstate.webhooks.events",
)


def test_the_rules_select_the_parts_they_name() -> None:
    """A rule over a module that was renamed would check nothing."""
    for name in ("roomstate.crdt.lww", "roomstate.wire.protocol", "roomstate.room"):
        assert name in PURE
    assert _selected("roomstate.edge") and _selected("roomstate.sdk")
    assert _selected("roomstate.bus.redis.feed"), "the Redis bus's feed is a module of its own"
    assert _selected("roomstate.sdk.state"), "the SDK's call state is a module of its own"


@pytest.mark.parametrize("name", PURE)
def test_pure_parts_import_no_io(name: str) -> None:
    top = {imported.split(".")[0] for imported in _imports(MODULES[name])}
    assert not top & IMPURE, f"{name} imports {sorted(top & IMPURE)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_redis_bus_imports_redis(name: str) -> None:
    if _under(name, "roomstate.bus.redis"):
        return
    found = sorted(i for i in _imports(MODULES[name]) if _under(i, "redis", "hiredis"))
    assert not found, f"{name} imports {found}: only roomstate.bus.redis may"


@pytest.mark.parametrize("name", _selected("roomstate.edge"))
def test_the_edge_node_imports_no_web_server(name: str) -> None:
    found = sorted(i for i in _imports(MODULES[name]) if _under(i, "aiohttp", "roomstate.server"))
    assert not found, f"{name} imports {found}"


@pytest.mark.parametrize("name", _selected("roomstate.sdk"))
def test_the_sdk_imports_only_wire_types_and_errors(name: str) -> None:
    allowed = ("roomstate.sdk", "roomstate.wire", "roomstate.errors", "roomstate.crdt")
    found = sorted(
        i
        for i in _imports(MODULES[name])
        if _under(i, "roomstate") and not _under(i, *allowed) and i != "roomstate"
    )
    assert not found, f"{name} imports {found}"
    crdt = sorted(
        i for i in _imports(MODULES[name]) if _under(i, "roomstate.crdt") and i != "roomstate.crdt"
    )
    assert crdt in ([], ["roomstate.crdt.Json"]), f"{name} uses {crdt} of the CRDTs"


def test_importing_crdt_loads_no_impure_module() -> None:
    """Also catches a module pulled in indirectly.

    orjson itself loads datetime and uuid (to be able to encode such values), so the baseline is
    taken after importing orjson: what is checked is what roomstate.crdt adds.
    """
    probe = (
        "import sys, orjson; before = set(sys.modules); import roomstate.crdt; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    top = {name.split(".")[0] for name in loaded}
    assert not top & IMPURE, f"importing roomstate.crdt loads {sorted(top & IMPURE)}"
