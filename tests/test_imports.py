"""The package's layers, enforced on its import graph (read from the source with ``ast``).

The rule: a module imports only from its own layer or the layers below it, never above; within a layer the
packages import each other without a cycle, and no module takes part in an import cycle. Top to bottom:

    6  cli                                   commands: parse arguments, call the library, print; imported by nothing
    5  bench, study, finetune, analysis      benchmarks, studies, fine-tuning stages, what notebooks and reports draw
    4  bridge, harness, generate, runs       PyTorch / HF; the lm-eval adapter; decoding; a saved run evaluated
    3  train                                 optimizer, step, loop, checkpoints, mesh
    2  eval                                  the scoring core: protocol, windows, perplexity, rolling-cache scoring
    1  models, data                          Equinox modules and losses; corpora, token streams, batches
    0  config, flags, tokenizer, hf, errors, optional, malloc, timing, markdown
                                         settings, names and their parsing; ms per call; Markdown tables

Every import counts, at the top of a file or inside a function: a lazy import hides an arrow, it does not
remove it. ``from a import b`` is an edge to the module ``a.b`` when there is one, else to ``a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chimera_jax"
LAYERS = [
    {"config", "flags", "tokenizer", "hf", "errors", "optional", "malloc", "timing", "markdown"},
    {"models", "data"},
    {"eval"},
    {"train"},
    {"bridge", "harness", "generate", "runs"},
    {"bench", "study", "finetune", "analysis"},
    {"cli"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
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


def part(module: str) -> str:
    """The top-level package or module of ``chimera_jax`` that ``module`` belongs to (``""`` for the root)."""
    return module.split(".")[1] if "." in module else ""


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the package's parts (``models``, ``train``, ...), the root and self-edges left out."""
    parts: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if part(name):
            parts.setdefault(part(name), set()).update(part(t) for t in targets if part(t) not in ("", part(name)))
    return parts


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every ``module -> module`` edge from a layer to one above it."""
    return sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                  if part(name) and part(target) and RANK[part(target)] > RANK[part(name)])


def test_every_part_of_the_package_has_a_layer():
    assert set(part_graph(GRAPH)) <= set(RANK), f"no layer for {sorted(set(part_graph(GRAPH)) - set(RANK))}"


def test_no_layer_imports_one_above_it():
    assert upward_imports(GRAPH) == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: the scoring core reaching up into training, lazily, is caught."""
    pkg = tmp_path / "chimera_jax"
    for folder in ("eval", "train"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "step.py").write_text("from chimera_jax.eval.score import f\n")
    (pkg / "eval" / "score.py").write_text("def f():\n    from chimera_jax.train.step import g\n")
    assert upward_imports(import_graph(pkg)) == ["chimera_jax.eval.score -> chimera_jax.train.step"]


def test_the_parts_of_one_layer_import_each_other_without_a_cycle():
    cycle = find_cycle(part_graph(GRAPH))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_nothing_imports_the_commands():
    importers = sorted(name for name, targets in GRAPH.items()
                       if part(name) != "cli" and any(part(t) == "cli" for t in targets))
    assert importers == []
