"""The package's layering (DESIGN §8): no import loops between `spadec` subpackages and
top-level modules, counting imports anywhere in a module (function-level ones too), and
the runtime below decoding below the stages."""

from __future__ import annotations

import ast
from pathlib import Path

import spadec

ROOT = Path(spadec.__file__).parent


def _unit(module: str) -> str | None:
    """The subpackage (e.g. `decoding`) or top-level module (`config`) a dotted name
    belongs to; None for the package root itself."""
    parts = module.split(".")
    if parts[0] != "spadec" or len(parts) == 1:
        return None
    return parts[1]


def _import_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files that import it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        src = _unit(".".join(p for p in rel.parts if p != "__init__"))
        if src is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{path}: relative import (use absolute spadec.* imports)")
            else:
                continue
            for name in names:
                dst = _unit(name)
                if dst is not None and dst != src:
                    graph.setdefault(src, {}).setdefault(dst, set()).add(str(rel))
    return graph


def _cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_loop_between_subpackages_or_modules():
    graph = _import_graph()
    loops = _cycles(graph)
    detail = [
        f"{a} -> {b} in {sorted(graph[a][b])}"
        for loop in loops
        for a in loop
        for b in loop
        if b in graph.get(a, {})
    ]
    assert not loops, f"import loops {loops}: " + "; ".join(detail)


def test_the_runtime_is_the_bottom_layer_and_decoding_sits_on_it_alone():
    graph = _import_graph()
    assert set(graph.get("runtime", {})) <= {"artefacts"}  # no subpackage below it
    assert set(graph.get("decoding", {})) <= {"runtime"}


def test_the_loop_detector_finds_a_loop():
    # the check above is only as good as this: a two-unit cycle and a three-unit one
    graph = {"a": {"b": {"x"}}, "b": {"a": {"y"}}, "c": {"d": {"z"}}, "d": {"e": set()}}
    graph["e"] = {"c": set()}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
