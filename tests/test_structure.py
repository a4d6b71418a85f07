"""The package's shape: no import circle among llmtasks' modules.

Each module is parsed (not imported) and its imports of other llmtasks modules are sorted
by when they run: at import time (module level, class bodies, ``try``/``if`` at the top),
later (inside a function: often to load something heavy only when needed, sometimes to
dodge a circle) or never (under ``if TYPE_CHECKING:``). A circle through import-time edges
can break on import order; a circle closed only by a function-level import is one dodged,
not removed. The package has none of either, nor one through type hints.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llmtasks"

When = Literal["import", "function", "type_checking"]
Edge = tuple[str, str, When]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, when: When) -> Iterator[tuple[ast.Import | ast.ImportFrom, When]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, when
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), "type_checking")
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), when)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _imports(node, "function" if when == "import" else when)
        else:
            yield from _imports(node, when)


def _targets(
    node: ast.Import | ast.ImportFrom, here: str, is_package: bool, modules: dict[str, Path]
) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = here if is_package else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    # ``from llmtasks import _cmd_submit`` imports a submodule (its package's __init__ runs
    # first, as for any submodule: not an edge); ``from llmtasks._x import y`` imports from
    # a module.
    submodules = [f"{base}.{alias.name}" for alias in node.names]
    return submodules + ([base] if any(m not in modules for m in submodules) else [])


def import_graph() -> list[Edge]:
    modules = all_modules()
    edges: set[Edge] = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, when in _imports(tree, "import"):
            for target in _targets(node, name, path.name == "__init__.py", modules):
                if target in modules and target != name:
                    edges.add((name, target, when))
    return sorted(edges)


def cycles(edges: list[Edge], kinds: set[When]) -> set[tuple[str, ...]]:
    """Every strongly connected group of more than one module over edges of ``kinds``, as
    a sorted tuple (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b, when in edges:
        if when in kinds:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.add(tuple(sorted(group)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_cli(module: str) -> bool:
    short = module.rpartition(".")[2]
    return short.startswith(("_cli", "_cmd_")) or short in (
        "_dry_run",
        "_submit_run",
        "_fanout",
        "__main__",
    )


def test_the_graph_sees_imports_at_every_level() -> None:
    edges = import_graph()
    # Module level, from-import of a submodule, inside a function, under TYPE_CHECKING.
    assert ("llmtasks._cmd_submit", "llmtasks._cli_options", "import") in edges
    assert ("llmtasks._cli", "llmtasks._cmd_collect", "import") in edges
    assert ("llmtasks._cmd_submit", "llmtasks._fanout", "import") in edges
    assert ("llmtasks._cmd_status", "llmtasks._status", "function") in edges
    assert ("llmtasks._submit_run", "llmtasks._submit", "type_checking") in edges
    assert ("llmtasks.__main__", "llmtasks._cli", "import") in edges


def test_cycles_finds_a_circle_and_only_a_circle() -> None:
    edges: list[Edge] = [("a", "b", "import"), ("b", "c", "function"), ("c", "a", "import")]
    edges += [("c", "d", "import"), ("d", "e", "import")]
    assert cycles(edges, {"import"}) == set()
    assert cycles(edges, {"import", "function"}) == {("a", "b", "c")}


def test_no_import_circle_at_import_time() -> None:
    found = cycles(import_graph(), {"import"})
    assert found == set(), f"modules importing each other at import time: {sorted(found)}"


def test_no_circle_dodged_by_a_function_level_import() -> None:
    found = cycles(import_graph(), {"import", "function"})
    assert found == set(), (
        f"import circles closed by an import inside a function: {sorted(found)}; "
        "move what both sides need into a module of its own"
    )


def test_no_circle_even_through_type_hints() -> None:
    found = cycles(import_graph(), {"import", "function", "type_checking"})
    assert found == set(), f"import circles through TYPE_CHECKING imports: {sorted(found)}"


@pytest.mark.parametrize("module", sorted(m for m in all_modules() if _is_cli(m)))
def test_each_cli_module_reads_in_one_sitting(module: str) -> None:
    lines = all_modules()[module].read_text(encoding="utf-8").count("\n")
    assert lines <= 400, f"{module}: {lines} lines"


def test_every_module_is_on_the_architecture_page() -> None:
    """docs/architecture.md lists each module by its job: a module added without a line
    there (or a line left for a module removed) fails here."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    on_disk = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    named = set(re.findall(r"`(_[a-z_]+\.py)`", page))
    assert on_disk - named == set(), "modules missing from docs/architecture.md"
    assert named - on_disk == set(), "docs/architecture.md names modules that do not exist"
