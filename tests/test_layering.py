"""The package's layering, read from the source: no import cycle, and no import up a layer.

The import graph counts module-level and function-level imports alike (a function-level import is still a
dependency, only a later one); imports under ``if TYPE_CHECKING:`` are left out. The layers, top down:

    pure helpers (top-level modules) -> verify, data -> models, generation
        -> stages (toy, annotate, sft, grpo, eval, compare) -> pipeline -> cli

A module may import from its own group (``cft_rl.sft.*`` from ``cft_rl.sft.*``), from any lower layer, and
from another group of its own layer except in the stages layer: one stage reaches another only through
the layers below. The violations known today are listed below, each with its reason; each is an xfail
that passes (and so fails, being strict) once the phase that removes it lands: then drop it from the list.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cft_rl"

LAYERS: list[set[str]] = [
    {"cft_rl", "answers", "config_types", "cpu", "outputs", "reports", "stats", "token_classes"},
    {"verify", "data"},
    {"models", "generation", "resume"},
    {"toy", "annotate", "sft", "grpo", "eval", "compare"},
    {"pipeline"},
    {"cli"},
]
STAGES = LAYERS[3]
MAX_TOP_LEVEL_MODULES = 12
MIN_STAGE_PACKAGES = 5

# (importer, imported): why it is there, and where the later phase of issue 16 moves the concept.
KNOWN_EDGES: dict[tuple[str, str], str] = {}
# Each known cycle, as its set of modules (see the "Three import cycles").
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name imported anywhere in ``tree`` (``from a import b`` gives ``a`` and ``a.b``)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def build_graph(root: Path = PACKAGE, packages: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; with ``packages``, also the packages on the way
    (importing ``cft_rl.sft.trainer`` runs ``cft_rl/sft/__init__.py``) unless the importer is inside them."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        names = imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")
        targets = set()
        for name in names:
            if name in files:
                targets.add(name)
                parts = name.split(".") if packages else []
                for i in range(2, len(parts)):  # the packages on the way, unless the importer is inside them
                    parent = ".".join(parts[:i])
                    if not module.startswith(parent + ".") and module != parent:
                        targets.add(parent)
        targets.discard(module)
        targets.discard("cft_rl")  # the root package is every module's parent: not a dependency
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (first module repeated at the end) per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_path(graph, component) for component in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest way from the component's first module back to itself, through the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ()) & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not a cycle")


def group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer(module: str) -> int:
    name = group(module)
    for i, members in enumerate(LAYERS):
        if name in members:
            return i
    raise AssertionError(f"{module} is in no layer: add its group {name!r} to LAYERS in {__file__}")


def layer_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for module, targets in graph.items():
        for target in targets:
            same_group = group(module) == group(target)
            down = layer(target) < layer(module)
            sideways = layer(target) == layer(module) and group(module) not in STAGES
            if not (same_group or down or sideways):
                bad.add((module, target))
    return bad


GRAPH = build_graph()  # for cycles: a package's __init__ runs before its modules
LAYER_GRAPH = build_graph(packages=False)  # for the layers: the imports as written


def _fmt(edges) -> str:
    return "\n".join(f"  {a} -> {b}" for a, b in sorted(edges))


def test_no_new_cycle():
    new = [c for c in cycles(GRAPH) if not any(set(c) <= known for known in KNOWN_CYCLES)]
    assert not new, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in new)


@pytest.mark.parametrize(
    "cycle",
    [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=why)) for c, why in KNOWN_CYCLES.items()],
    ids=lambda c: "+".join(sorted(m.removeprefix("cft_rl.") for m in c)),
)
def test_known_cycle_is_gone(cycle):
    assert not [c for c in cycles(GRAPH) if set(c) <= cycle]


def test_no_new_import_goes_up_a_layer_or_across_stages():
    new = layer_violations(LAYER_GRAPH) - set(KNOWN_EDGES)
    assert not new, "imports against the layer order (see this file's docstring):\n" + _fmt(new)


@pytest.mark.parametrize(
    "edge",
    [pytest.param(e, marks=pytest.mark.xfail(strict=True, reason=why)) for e, why in KNOWN_EDGES.items()],
    ids=lambda e: f"{e[0].removeprefix('cft_rl.')}->{e[1].removeprefix('cft_rl.')}",
)
def test_known_layer_violation_is_gone(edge):
    assert edge not in layer_violations(LAYER_GRAPH)


def test_house_shape():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} top-level modules: {top}"
    stages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name in STAGES)
    assert len(stages) >= MIN_STAGE_PACKAGES, f"stage subpackages: {stages}"


LAZY_PACKAGES = ("cft_rl.verify", "cft_rl.data", "cft_rl.toy")


def test_public_names_are_imported_on_first_use():
    """``import cft_rl.verify`` imports none of its modules: the guard's workers start as
    ``python -m cft_rl.verify.guard``, which imports the package first."""
    imported = "sorted(m for m in sys.modules if m.startswith('cft_rl.') and m.count('.') > 1)"
    code = f"import sys; import {', '.join(LAZY_PACKAGES)}; print({imported})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_public_names_resolve(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert value is getattr(importlib.import_module(module._EXPORTS[name]), name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_graph_reader_on_a_made_up_package(tmp_path):
    """Function-level and relative imports count; TYPE_CHECKING ones do not; cycles come with their path."""
    pkg = tmp_path / "cft_rl"
    (pkg / "sft").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sft" / "__init__.py").write_text("")
    (pkg / "answers.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cft_rl.cli import main\n"
    )
    (pkg / "sft" / "loss.py").write_text("def f():\n    from cft_rl import cli\n")
    (pkg / "sft" / "trainer.py").write_text("from .loss import f\nfrom cft_rl.answers import x\n")
    (pkg / "cli.py").write_text("import cft_rl.sft.trainer\n")
    graph = build_graph(pkg)
    assert graph["cft_rl.answers"] == set()
    assert graph["cft_rl.sft.trainer"] == {"cft_rl.sft.loss", "cft_rl.answers"}
    assert graph["cft_rl.cli"] == {"cft_rl.sft", "cft_rl.sft.trainer"}
    assert cycles(graph) == [["cft_rl.cli", "cft_rl.sft.trainer", "cft_rl.sft.loss", "cft_rl.cli"]]
    assert build_graph(pkg, packages=False)["cft_rl.cli"] == {"cft_rl.sft.trainer"}
    assert layer_violations(graph) == {("cft_rl.sft.loss", "cft_rl.cli")}


def test_the_cli_parser_imports_no_heavy_dependency():
    """``cft-rl --help`` stays fast: the function-level imports kept for it must keep these out."""
    heavy = ("torch", "transformers", "datasets", "matplotlib", "trl")
    code = (
        "import contextlib, io, sys; from cft_rl import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): cli.main(['--help'])\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
