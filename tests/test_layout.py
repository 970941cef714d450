"""The packages' shape: no import cycle, modules and classes small enough to read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "resolver")
MAX_MODULE_LINES = 330
MAX_CLASS_LINES = 165


def _modules() -> dict[str, Path]:
    """Every module of the packages, subpackages included (``worker.ops.status``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts)] = path
    return modules


def _absolute(name: str, node: ast.ImportFrom) -> list[str]:
    """The modules a ``from ... import`` in module ``name`` can mean, made absolute."""
    base = ".".join(name.split(".")[: -node.level]) if node.level else ""
    module = node.module or ""
    if not base:
        return [module]
    if module:
        return [f"{base}.{module}", *(f"{base}.{module}.{a.name}" for a in node.names)]
    return [f"{base}.{alias.name}" for alias in node.names]


def _runtime_imports(name: str, tree: ast.Module) -> set[str]:
    """Modules of ours that ``name`` imports when it runs (``if TYPE_CHECKING:`` left out)."""
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            found.update(_absolute(name, node))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    modules = _modules()
    # importing a package runs its __init__
    return {m if m in modules else f"{m}.__init__" for m in found} & set(modules)


def _graph() -> dict[str, set[str]]:
    return {
        name: _runtime_imports(name, ast.parse(path.read_text())) - {name}
        for name, path in _modules().items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path, or [] (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_packages_import_no_cycle() -> None:
    """No module of worker/ or resolver/ imports, at run time, one that imports it back."""
    assert _cycle(_graph()) == []


def test_a_cycle_would_be_found() -> None:
    """The search itself finds a planted cycle (so the test above can fail)."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert "worker.pipeline" in _graph()["worker.worker"]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_and_classes_stay_small(name: str) -> None:
    """Each module reads in one sitting (about 300 lines) and each class in one screenful
    or two (about 150)."""
    source = _modules()[name].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, (node.name, size)
