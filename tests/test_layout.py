"""The architecture stays visible: layers point down, private names stay private, no import circles.

These read the source with ``ast`` and import nothing, so they run in well under a second.

- ``trainers`` is imported, inside ``hf_lite``, only by the application (``hf_lite/app/``).
- No module imports a private name (``_x``) from another of hf-lite's modules.
- Imports between hf-lite's own modules (lazy ones included) form no cycle.
- No library module grows past ~500 lines (tables of data excepted by name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hf_lite", "trainers")
MAX_LINES = 520
# Modules that are mostly a table of data, allowed to be longer.
DATA_TABLES: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, names imported from it, line)`` for each import of ``path``, lazy ones inside
    functions included, those under ``if TYPE_CHECKING:`` left out (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - (node.level - 1)], *([base] if base else [])])
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def test_only_the_app_imports_trainers():
    offenders = []
    for path in (ROOT / "hf_lite").rglob("*.py"):
        if (ROOT / "hf_lite" / "app") in path.parents:
            continue
        for module, _, line in imports(path):
            if module == "trainers" or module.startswith("trainers."):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offenders == []


def test_no_private_name_imported_across_modules():
    offenders = []
    for path in source_files():
        for module, names, line in imports(path):
            if module.split(".")[0] not in PACKAGES:
                continue
            for name in names:
                # a private *module* is imported by the names it offers (``from pkg._checks import check_x``),
                # never as a module object from another module
                if name.startswith("_") and not name.startswith("__"):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name} from {module}")
    assert offenders == []


def test_no_import_cycle_between_modules():
    own = {module_name(p): p for p in source_files()}
    graph: dict[str, set[str]] = {}
    for name, path in own.items():
        edges = set()
        for module, names, _ in imports(path):
            # `from pkg import sub` imports the submodule pkg.sub when it is one of ours
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in own] or [module]
            edges.update(t for t in targets if t in own and t != name)
        graph[name] = edges

    # a package's __init__ importing its own submodules is how packages re-export: not a cycle
    def real(a: str, b: str) -> bool:
        return not b.startswith(a + ".")

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if not real(node, nxt):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size_and_docstring(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    if module_name(path) not in DATA_TABLES:
        assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by concern"
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if path.name != "__main__.py" and path.stat().st_size > 0:
        assert doc, f"{path.relative_to(ROOT)} has no module docstring saying what it is for"
