"""No import cycle anywhere in ``gateway/``: the layers of ARCHITECTURE.md point one way.

The graph is built from the source, not by importing it: every ``import`` counts, also
those inside functions and under ``TYPE_CHECKING`` (a cycle hidden there is a cycle held
together by convention). A module inside a package does not depend on its own package's
``__init__`` by importing a sibling; a module outside it does.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(name: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        candidates = bases
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
        return found
    for cand in candidates:
        if cand in modules:
            found.add(cand)
    # Importing a.b.c runs a and a.b first: an edge to each package outside our own.
    for mod in list(found):
        parts = mod.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in modules and not name.startswith(parent + ".") and parent != name:
                found.add(parent)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            edges |= _targets(name, path, node, modules)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports_it_must():
    graph = import_graph()
    assert "gateway.imap.framing" in graph["gateway.imap.commands"]
    assert "gateway.proxy.values" in graph["gateway.proxy.session"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_gateway():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_protocol_core_imports_nothing_outside_itself():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("gateway.imap"):
            outside = {e for e in edges if not e.startswith("gateway.imap")}
            assert not outside, (name, outside)


def test_values_import_no_shell_module():
    graph = import_graph()
    assert not {e for e in graph["gateway.proxy.values"] if e.startswith("gateway.proxy")}
