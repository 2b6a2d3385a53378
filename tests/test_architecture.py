"""The package's shape: no import cycles between studyflow's modules, and small modules."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "studyflow"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: not those inside functions or classes'
    methods, nor under `if TYPE_CHECKING:` (its `else:` runs, so it counts)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _module_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found += _module_level_imports(node.body)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The studyflow modules that `node`, run in `module`, imports.

    `import studyflow.pkg` or `from studyflow.pkg import name` imports the package's
    `__init__`; `from studyflow.pkg import _mod` (a module) or `from studyflow.pkg._mod import x`
    imports `_mod` and first its packages, except those `module` is inside of (already being
    imported when it runs: a package's `__init__` importing its own modules is no cycle).
    """
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, `level - 1` packages up
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        named = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    inside = set(_ancestors(module))
    out: set[str] = set()
    for name in named:
        out.update(a for a in _ancestors(name) if a in MODULES and a not in inside)
        if name in MODULES:
            out.add(name)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    """studyflow module -> the studyflow modules it imports when it is imported."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set().union(*(_imported(name, n) for n in _module_level_imports(tree.body)))
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), each as
    the path a -> b -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {component}")


def test_the_cycle_finder_finds_a_cycle_and_ignores_a_package_importing_its_own_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    # studyflow.config imports its _study, which imports from studyflow.config._study: no edge
    # back to the package, which is being imported already
    node = ast.parse("from studyflow.config._workflow import WorkflowConfig").body[0]
    assert _imported("studyflow.config._study", node) == {"studyflow.config._workflow"}
    # from elsewhere, the package's __init__ runs first
    assert _imported("studyflow.cli", node) == {"studyflow.config", "studyflow.config._workflow"}
    node = ast.parse("from studyflow.outputs import _report").body[0]
    assert _imported("studyflow.cli", node) == {"studyflow.outputs", "studyflow.outputs._report"}
    node = ast.parse("from . import _trial").body[0]
    assert _imported("studyflow.worker", node) == {"studyflow.worker._trial"}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import studyflow.cli\n"
                     "def f():\n    import studyflow.driver\n")
    assert _module_level_imports(tree.body)[1:] == []


def test_no_import_cycles_between_studyflow_modules():
    graph = import_graph()
    assert "studyflow.config._study" in graph and graph["studyflow.cli"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_is_at_most_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"
