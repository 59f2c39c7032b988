"""The package's import graph has no cycle.

Every ``import`` / ``from ... import`` counts, at module level or inside a function (a lazy import
hides a tie, it does not remove it), and so does a string literal naming one of the package's
modules (the CLI and the export verbs import their providers by name with ``importlib``). A
package's ``__init__`` implied by importing one of its submodules does not count. The folders
``triton_kernels/`` and ``fpga/`` are the modules ``matmulfree.triton_kernels`` and
``matmulfree.fpga`` (pyproject's ``package-dir``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Import name -> folder, as pyproject's ``package-dir`` maps them.
PACKAGE_DIRS = {
    "matmulfree": ROOT / "matmulfree",
    "matmulfree.triton_kernels": ROOT / "triton_kernels",
    "matmulfree.fpga": ROOT / "fpga",
    "matmulfree.recipes": ROOT / "recipes",
}


def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the installed package."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if "templates" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` (source ``path``) imports, anywhere in its body."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` depends on the submodule
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            found.add(node.value)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_names(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_sees_lazy_and_named_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    modules = package_modules()
    # a function-level import and an importlib name are both edges
    assert "matmulfree.triton_kernels" in import_graph()["matmulfree.layers"]
    assert "matmulfree.commands.train" in imported_names("matmulfree.cli", modules["matmulfree.cli"], modules)


def test_package_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 50  # every folder of the package was found
    found = cycles(graph)
    assert not found, "import cycles (each line one strongly connected set of modules):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_models_know_nothing_about_files():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("matmulfree.models"):
            assert "matmulfree.checkpoint" not in deps, f"{name} imports matmulfree.checkpoint"
