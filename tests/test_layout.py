"""Import rules the package keeps (issue 16 states the full set; these are the ones checked so far).

The graph is read from the source (every ``import`` of a package module, at module top or inside a
function), so a lazy import cannot hide a loop."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mmreason"
# Known loops, each closed by one lazy import named here with its reason; removing the reason removes the entry.
# retrieval.py is a library (datastore, neighbours) and a command (``python -m mmreason.retrieval`` compares
# the retrievers with evaluate's test sets and loads a run): its command part imports evaluate and lit.
ALLOWED_EDGES = {("retrieval", "evaluate"), ("retrieval", "lit")}


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    mods = {p.stem for p in pkg.glob("*.py")}
    graph = {}
    for path in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmreason":
                parts = node.module.split(".")
                deps |= {a.name for a in node.names if a.name in mods} if len(parts) == 1 else {parts[1]}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mmreason.")}
        graph[path.stem] = (deps & mods) - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None (iterative three-colour DFS)."""
    state, parent = {}, {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                loop = [child] + [n for n, _ in stack][[n for n, _ in stack].index(child) + 1:] + [child]
                return loop
            elif not state.get(child):
                state[child], parent[child] = 1, node
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_the_cycle_finder_finds_loops():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_loop_in_the_package():
    graph = import_graph()
    assert {"data", "amazon", "splits", "shown", "retrieval"} <= set(graph)
    for a, b in ALLOWED_EDGES:
        assert b in graph[a], f"{a} no longer imports {b}: drop it from ALLOWED_EDGES"
        graph[a] = graph[a] - {b}
    assert find_cycle(graph) is None, f"import loop: {' -> '.join(find_cycle(graph))}"
