"""The package's import graph, read from the source with ``ast``: no cycles, and one model builder.

Every import counts, at the top of a file or inside a function: a lazy import hides a cycle, it does not
remove it. ``from a import b`` is an edge to the module ``a.b`` when there is one, else to ``a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chimera_jax"
ROUTED_FAMILIES = {"chimera_jax.models.moe", "chimera_jax.models.ssm", "chimera_jax.models.time_indexed"}


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: the modules of the package at root it imports}``, from the source alone."""
    modules = {_module_name(root, p): p for p in root.rglob("*.py")}
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # every node: function bodies too
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from this module's package
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.name` of a non-module: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = import_graph(PACKAGE)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search with an explicit path)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_graph_reader_sees_lazy_and_relative_imports(tmp_path):
    """A cycle closed by an import inside a function and a relative import is still a cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from pkg.b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import a\nfrom .c import VALUE\n")
    (pkg / "c.py").write_text("import pkg.a.f\nVALUE = 1\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a", "pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_package_imports_have_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_builder_imports_the_model_families():
    """Within models/, moe, ssm and time_indexed are assembled by builder.py alone, so none depends on another."""
    importers = {name for name, targets in GRAPH.items()
                 if name.startswith("chimera_jax.models.") and targets & ROUTED_FAMILIES}
    assert importers == {"chimera_jax.models.builder"}
