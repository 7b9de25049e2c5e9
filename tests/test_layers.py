"""The import structure of the core: no cycle among factory/ modules, and lower layers never import higher ones.

Both checks read factory/**/*.py with `ast` and count every import: at module top, inside functions, relative
ones and `importlib.import_module("factory....")` with a literal name.  An import moved into a function to
dodge a cycle is still a cycle here.  A new module must be given a layer in LAYERS (the test says so).
"""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "factory"

# Low to high. A module may import modules of its own layer or of lower ones, never of a higher one.
# Names are relative to factory/ and cover their submodules ("engine" is engine and engine.*);
# "__init__" is the package itself (factory/__init__.py: the public API, re-exports of the engine).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base: pure helpers, no ledger", ("__init__", "errors", "config", "pii", "croissant", "release_report",
                                       "datasets", "embeddings", "disputes", "task_rows", "text_checks", "engine",
                                       "engine.span_routing",
                                       "progress")),
    ("domain: task types, spec, quality rules, labelers", ("tasks", "spec", "quality", "guarantee", "loop", "span_loop",
                                                           "labelers", "set_labelers", "span_labelers", "pair_labelers",
                                                           "routing_policy")),
    ("storage: migrations policy", ("storage", "storage.db")),
    ("storage: the ledger", ("storage.ledger",)),
    ("storage: side tables and readers of the chain", ("storage.tables", "signing", "provenance", "users",
                                                       "storage.migrations")),
    ("root: the Factory object (folders, ledger, specs)", ("root",)),
    ("services: intake and people", ("compliance", "ingest", "workforce")),
    ("services: people processes", ("guidelines", "gate", "labelstudio", "simulate")),
    ("pipeline: the Factory root and the batch steps", ("pipeline",)),
    ("release: packaging, anchoring, delivery", ("release", "anchoring", "delivery")),
    ("interfaces: CLI and web", ("cli", "cli_common", "cli_ops", "cli_people", "cli_release", "cli_web", "web")),
]


def modules(pkg: Path) -> dict[str, Path]:
    """Module name relative to the package ("__init__" for the package itself) -> file."""
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = p.relative_to(pkg).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _absolute(rel: str) -> str:
    return "" if rel == "__init__" else rel


def imports(rel: str, path: Path, mods: dict[str, Path], pkg_name: str) -> dict[str, int]:
    """The package modules `rel` imports (relative names) -> first line, at any depth of the file."""
    by_abs = {_absolute(m): m for m in mods}
    me = _absolute(rel)
    found: dict[str, int] = {}

    def add(dotted: str, line: int) -> None:
        if dotted != pkg_name and not dotted.startswith(pkg_name + "."):
            return
        target = dotted[len(pkg_name) + 1:]
        # the longest package module the name points into (`factory.engine.aggregate.x` -> engine.aggregate)
        while target and target not in by_abs:
            target = target.rpartition(".")[0]
        if target in by_abs and target != me and not me.startswith(target + ".") and not (target == "" and me):
            found.setdefault(by_abs[target], line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = [pkg_name] + (me.split(".") if me else [])
                if path.name != "__init__.py":
                    here = here[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for a in node.names:  # `from factory.storage import ledger` imports the module factory.storage.ledger
                add(f"{base}.{a.name}", node.lineno)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            add(node.args[0].value, node.lineno)
    return found


def import_graph(pkg: Path) -> dict[str, dict[str, int]]:
    mods = modules(pkg)
    return {m: imports(m, p, mods, pkg.name) for m, p in mods.items()}


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter({m: set(deps) for m, deps in graph.items()}).prepare()
    except graphlib.CycleError as e:
        return list(reversed(e.args[1]))  # graphlib lists predecessors first; read "a -> b" as "a imports b"
    return None


def layer_of(module: str, layers=LAYERS) -> int | None:
    best = None
    for i, (_, names) in enumerate(layers):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (i, n)
    return best[0] if best else None


def layer_violations(graph: dict[str, dict[str, int]], pkg: Path, layers=LAYERS) -> list[str]:
    mods = modules(pkg)
    out = []
    for m, deps in sorted(graph.items()):
        lm = layer_of(m, layers)
        for d, line in sorted(deps.items()):
            ld = layer_of(d, layers)
            if lm is not None and ld is not None and ld > lm:
                out.append(f"{mods[m].relative_to(pkg.parent)}:{line}: {m} ({layers[lm][0]}) imports {d} "
                           f"({layers[ld][0]}), a higher layer")
    return out


# ----------------------------------------------------------------------------- the real package
def test_factory_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, f"import cycle in factory/: {' -> '.join(cycle)} (function-level imports count too)"


def test_every_factory_module_has_a_layer():
    missing = sorted(m for m in modules(PACKAGE) if layer_of(m) is None)
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {missing}"


def test_lower_layers_never_import_higher_ones():
    bad = layer_violations(import_graph(PACKAGE), PACKAGE)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_layers_name_each_module_once():
    names = [n for _, ns in LAYERS for n in ns]
    assert len(names) == len(set(names))
    assert all(n == "__init__" or n in modules(PACKAGE) for n in names), "a layer names a module that is gone"


def test_the_core_imports_no_dagster():
    graph_files = modules(PACKAGE).values()
    hits = [f"{p.relative_to(PACKAGE.parent)}:{n.lineno}" for p in graph_files
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if (isinstance(n, ast.Import) and any(a.name.split(".")[0].startswith("dagster") for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0].startswith("dagster"))]
    assert not hits, f"Dagster imported in the core: {hits}"


# ----------------------------------------------------------------------------- the checks can fail
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "factory"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


@pytest.mark.parametrize("upward", [
    "def f():\n    from factory.high import x\n",  # hidden in a function
    "from . import high\n",  # relative
    "import factory.high\n",
    "import importlib\nhigh = importlib.import_module('factory.high')\n",
])
def test_a_function_level_or_relative_upward_import_is_a_cycle_and_a_violation(tmp_path, upward):
    pkg = _package(tmp_path, {"low.py": upward, "high.py": "from factory.low import y\n"})
    graph = import_graph(pkg)
    assert graph["low"] == {"high": graph["low"]["high"]} and graph["high"] == {"low": 1}
    assert set(find_cycle(graph)) == {"low", "high"}
    layers = [("low", ("low", "__init__")), ("high", ("high",))]
    assert layer_violations(graph, pkg, layers) == [
        f"factory/low.py:{graph['low']['high']}: low (low) imports high (high), a higher layer"]


def test_imports_into_subpackages_resolve_to_the_module(tmp_path):
    pkg = _package(tmp_path, {"engine/__init__.py": "from .agg import run\n", "engine/agg.py": "",
                              "a.py": "from factory.engine.agg import run\nfrom factory import engine\n"})
    graph = import_graph(pkg)
    assert graph["a"] == {"engine.agg": 1, "engine": 2} and graph["engine"] == {"engine.agg": 1}
    assert find_cycle(graph) is None
