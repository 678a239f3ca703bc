"""The layout keeps its promises: no import cycles, a protocol without I/O, simulators apart.

The import graph is read from the source (``ast``), not by importing.  Every import is an edge,
those inside functions too: an import deferred into a function hides a cycle, it does not remove
it.  Only imports under ``TYPE_CHECKING`` (annotations) are left out.  ``from pkg import name``
is an edge to the submodule ``pkg.name`` when there is one, else to the package ``pkg`` itself.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "hybridkex": ROOT / "hybridkex",
    "hybridkex_sim": ROOT / "plugins" / "sim" / "hybridkex_sim",
    "hybridkex_tls": ROOT / "plugins" / "tls" / "hybridkex_tls",
    "hybridkex_wg": ROOT / "plugins" / "wireguard" / "hybridkex_wg",
    "hybridkex_interop": ROOT / "interop" / "hybridkex_interop",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = [top, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node):
            stack += node.orelse
        else:
            stack += ast.iter_child_nodes(node)


def _edges(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in MODULES}
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in MODULES:
                out.add(sub)
            elif target in MODULES:
                out.add(target)
    out.discard(module)
    return out


GRAPH = {module: _edges(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    """The checker sees real edges (a checker that finds nothing would pass every test below)."""
    assert "hybridkex.protocol._wire" in GRAPH["hybridkex.protocol._handshake"]
    assert "hybridkex.io._pump" in GRAPH["hybridkex.io._transport"]
    assert "hybridkex" in GRAPH["hybridkex_sim._source"]
    assert len(MODULES) > 60


def test_the_checker_finds_a_cycle() -> None:
    saved = GRAPH["hybridkex.protocol._wire"]
    GRAPH["hybridkex.protocol._wire"] = saved | {"hybridkex.protocol._handshake"}
    try:
        assert any("hybridkex.protocol._wire" in c for c in _cycles())
    finally:
        GRAPH["hybridkex.protocol._wire"] = saved


def test_no_import_cycles() -> None:
    assert _cycles() == []


def _imports_of(prefix: str) -> dict[str, set[str]]:
    """Every module under ``prefix`` -> every module name it imports anywhere (functions too)."""
    result: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        result[module] = names
    return result


@pytest.mark.parametrize("banned", ["socket", "asyncio", "ssl", "http", "subprocess", "selectors", "urllib"])
def test_the_protocol_does_no_io(banned: str) -> None:
    for module, names in _imports_of("hybridkex.protocol").items():
        assert not any(n == banned or n.startswith(banned + ".") for n in names), f"{module} imports {banned}"
    for module in MODULES:
        if module.startswith("hybridkex.protocol"):
            assert not GRAPH[module] & {m for m in MODULES if m.startswith(("hybridkex.io", "hybridkex._config",
                                                                               "hybridkex._exchange"))}, module


def test_the_protocol_opens_no_files() -> None:
    for module, path in MODULES.items():
        if module.startswith("hybridkex.protocol"):
            calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name) and n.func.id == "open"]
            assert not calls, f"{module} calls open()"


def test_simulators_stay_out_of_the_library() -> None:
    """numpy and the simulators belong to hybridkex-sim; the library never imports them."""
    for module, names in _imports_of("hybridkex").items():
        assert not any(n.split(".")[0] in {"numpy", "hybridkex_sim"} for n in names), module
    for module, names in _imports_of("hybridkex_tls").items():
        assert "numpy" not in {n.split(".")[0] for n in names}, module


def test_the_top_level_api_is_narrow() -> None:
    import hybridkex

    assert len(hybridkex.__all__) <= 40
    plugin_only = {"connect", "listen", "recv_exact", "send_all", "run_handshake", "atomic_write", "write_key_file",
                   "parse_address", "Initiator", "Responder", "DoSGuard", "get_backend"}
    assert not plugin_only & set(hybridkex.__all__)
    for name in hybridkex.__all__:
        assert hasattr(hybridkex, name), name
