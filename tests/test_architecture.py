"""The shape of the package (docs and ARCHITECTURE): no import cycles, small modules, no
reaching into another package's private modules, data flowing one way.

The import graph is read from the source with :mod:`ast`: imports at module level and
inside functions (a lazy import is still a dependency), ``TYPE_CHECKING`` blocks excluded
(they never run). A rule a module breaks today is listed below with its reason, so the
list can only shrink; the line limit has no exceptions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "otel_audit"
MAX_LINES = 500

#: Import cycles (as sorted module sets) still present, with why.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

#: (importer, private module of another package) still present, with why.
PRIVATE_IMPORTS: dict[tuple[str, str], str] = {}

#: (importer, imported) breaking the one-way flow, with why.
FLOW_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("otel_audit.trail", "otel_audit.store.writer"):
        "the trail builds its StoreWriter; goes when the exporters of the pipeline "
        "redesign take the store",
    ("otel_audit.trail", "otel_audit.store.reader"):
        "AuditTrail.query reads the trail's own store (a reader, not the write path)",
    ("otel_audit.compat", "otel_audit.store.reader"):
        "the seed-compatible service's query methods read the store",
}

#: Packages and modules of each room of the data flow (ARCHITECTURE.md).
CAPTURE = ("otel_audit.integrations", "otel_audit.trail", "otel_audit.action",
           "otel_audit.record_builder", "otel_audit.compat")
STORE = ("otel_audit.store",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports_in(child))
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    elif isinstance(node, ast.If) and _is_type_checking(node):
        for child in node.orelse:
            yield from _imports_in(child)
    else:
        yield from _imports(node)


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom,
             known: dict[str, Path]) -> Iterator[str]:
    """The otel_audit modules one import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    for name in names:
        if name in known:
            yield name


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = graph.setdefault(module, set())
        for node in _imports(tree):
            edges.update(t for t in _targets(module, path, node, known) if t != module)
    return graph


GRAPH = _graph()


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan). An edge from a
    module to its own package's ``__init__`` (loaded first in any case) is left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0

    def edges(node: str) -> set[str]:
        return graph[node] - _ancestors(node)

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _in(module: str, room: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in room)


def test_the_graph_sees_lazy_imports() -> None:
    # the walker must find function-level imports, or a lazy cycle would pass unseen
    assert "otel_audit.trail" in GRAPH["otel_audit"]
    assert GRAPH["otel_audit.cli.integrity"], "the CLI imports its commands' modules"


def test_no_import_cycles() -> None:
    found = set(_cycles(GRAPH))
    cycles = found - set(KNOWN_CYCLES)
    assert not cycles, [sorted(cycle) for cycle in cycles]
    assert set(KNOWN_CYCLES) <= found  # an exception no longer needed is taken off


def test_no_module_over_the_line_limit() -> None:
    # every module, no exceptions: split by job rather than grow
    long = {module: len(path.read_text(encoding="utf-8").splitlines())
            for module, path in _modules().items()}
    assert not {m: n for m, n in long.items() if n > MAX_LINES}


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def test_no_private_module_of_another_package() -> None:
    known = _modules()
    found = set()
    for module, targets in GRAPH.items():
        mine = _package_of(module, known[module])
        for target in targets:
            package, _, leaf = target.rpartition(".")
            # the top-level package's own private modules (_accel, _internal...) are
            # shared by design; a subpackage's are its own
            if leaf.startswith("_") and package != "otel_audit" and package != mine \
                    and not mine.startswith(package + "."):
                found.add((module, target))
    assert found <= set(PRIVATE_IMPORTS), sorted(found - set(PRIVATE_IMPORTS))
    assert set(PRIVATE_IMPORTS) <= found  # an exception no longer needed is taken off


@pytest.mark.parametrize(("importer", "imported", "rule"), [
    (STORE, CAPTURE, "the store never imports capture"),
    (CAPTURE, STORE, "capture never imports the store directly"),
])
def test_data_flows_one_way(importer: tuple[str, ...], imported: tuple[str, ...],
                            rule: str) -> None:
    found = {(module, target) for module, targets in GRAPH.items() if _in(module, importer)
             for target in targets if _in(target, imported)}
    assert found <= set(FLOW_EXCEPTIONS), (rule, sorted(found - set(FLOW_EXCEPTIONS)))


def test_every_flow_exception_is_still_needed() -> None:
    assert all(imported in GRAPH[importer] for importer, imported in FLOW_EXCEPTIONS)
