"""The layering in docs/architecture.md, checked: no import cycles, and no layer imports one above it.

Imports under `if TYPE_CHECKING:` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "adapters", "store", "admin_ui")
VOCABULARY = {
    "pipeline.types",
    "pipeline.errors",
    "pipeline.modes",
    "pipeline.objective",
    "pipeline.model_ids",
    "pipeline.output_format",
    "pipeline.output_schema",
}
# The shared services and the per-tenant chains, assembled from the layers below; the edge and the admin
# API are handed them. Above them only the composition root, which builds and mounts everything.
ASSEMBLY = {
    "pipeline.services",
    "pipeline.housekeeping",
    "pipeline.registry",
    "pipeline.tenants",
    "pipeline.worker_metrics",
}
ROOT_MODULES = {
    "pipeline.app",
    "pipeline.cli",
    "pipeline.cli_config",
    "pipeline.__main__",
    "pipeline.backup_cli",
    "pipeline.completion",
    "pipeline.supervisor",
    "pipeline.worker_process",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {
        name: {dep for dep in _runtime_imports(ast.parse(path.read_text())) if dep in files and dep != name}
        for name, path in files.items()
    }


GRAPH = _graph()


def _layer(module: str) -> int:
    """Lower number = lower layer; a module may import only from its own layer or below (docs/architecture.md)."""
    if module in VOCABULARY:
        return 0
    if module in ASSEMBLY:
        return 4
    if module in ROOT_MODULES or module.startswith("pipeline.admin_cli"):
        return 7
    if module == "pipeline.web" or module.startswith("pipeline.edge"):
        return 5
    return {"pipeline": 1, "adapters": 2, "store": 2, "stages": 3, "admin_ui": 6}[module.split(".")[0]]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
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

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    upward = sorted(dep for dep in GRAPH[module] if _layer(dep) > _layer(module))
    assert upward == [], f"{module} (layer {_layer(module)}) imports {upward}"


def test_every_package_ships_in_the_distribution() -> None:
    """A subpackage missing from pyproject's package list works in the editable install and breaks a wheel."""
    import tomllib

    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(ROOT), include=include))
    on_disk = {_module_name(init) for package in PACKAGES for init in (ROOT / package).rglob("__init__.py")}
    assert on_disk <= found
