"""The code layout's rules: no import cycle in bench/ or lesa/, between modules or between
bench's packages (run and report never import each other, even through a third), lesa never
imports bench, and no module grows past the size a newcomer can read in one go."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "lesa")
MAX_LINES = 500
# files allowed past MAX_LINES, each with its reason (none today)
LONG_FILES: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (any import, also inside functions)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                root = ".".join(base + ([node.module] if node.module else []))
                targets = [root] + [f"{root}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # importing one's own parent package (its __init__) is how submodules share names
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_bench_or_lesa():
    found = cycles(import_graph(_modules()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def unit(module: str) -> str:
    """A module's package for the package graph: bench.<package> (bench.report.views ->
    bench.report); a module directly under bench or lesa is its own unit."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(unit(module), set()).update(
            unit(t) for t in targets if unit(t) != unit(module))
    for targets in list(out.values()):
        for t in targets:
            out.setdefault(t, set())
    return out


def test_the_package_graph_finds_a_cycle_through_modules_that_have_none():
    graph = {"bench.run.a": {"bench.report.b"}, "bench.report.b": set(),
             "bench.report.c": {"bench.run.d"}, "bench.run.d": set()}
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == [["bench.report", "bench.run"]]


def test_no_import_cycle_between_packages():
    found = cycles(package_graph(import_graph(_modules())))
    assert not found, "package cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_lesa_never_imports_bench():
    graph = import_graph(_modules())
    wrong = {m: sorted(t for t in targets if t.split(".")[0] == "bench")
             for m, targets in graph.items() if m.split(".")[0] == "lesa"}
    assert not {m: t for m, t in wrong.items() if t}


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in _modules().values()))
def test_module_is_readable_in_one_go(path):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_LINES or path in LONG_FILES, f"{path} has {lines} lines"


def test_lesa_exports_and_submodules_load_on_first_use():
    """lesa/__init__ loads lazily (so lesa.names imports without torch): every name in __all__
    and every submodule must still be reachable from a fresh interpreter."""
    import subprocess
    import sys
    code = ("import lesa\n"
            "missing = [n for n in lesa.__all__ if getattr(lesa, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert lesa.kernels.fused_cpu.status()\n"
            "try:\n    lesa.nosuch\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
