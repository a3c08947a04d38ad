"""Import rules the package keeps (README "Architecture"; issue 16).

``lint-imports`` checks the contracts in ``pyproject.toml`` (layers point one way, no command imports another,
recsys does not import the generator). The graph here is read from the source as well (every ``import`` of a
package module, at module top or inside a function), so a lazy import cannot hide a loop; and package imports
sit at module top."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mmreason"
# Known loops, each closed by one lazy import named here with its reason; none left.
ALLOWED_EDGES: set[tuple[str, str]] = set()
# Package imports inside a function, each with its reason; every other package import sits at module top.
LAZY_IMPORTS = {  # (importer, imported): why
    ("recommend", "serving.explainer"): "only --explain needs the generator: without it the command loads neither "
                                        "lightning nor transformers (import 2.5 s instead of 7.4-9.4 s here)",
    ("recommend", "training.runs"): "the same, for the checkpoint --explain looks for",
}
MAX_LINES = 420  # "about 400": a longer module says why in its docstring ("Longer than ...")


def module_name(path: Path, pkg: Path = PKG) -> str:
    """``datasets/hm.py`` -> ``datasets.hm``; ``model/__init__.py`` -> ``model``."""
    parts = path.relative_to(pkg).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path, mods: set[str]) -> list[tuple[str, bool]]:
    """(module imported, at module top?) for every import of a package module in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmreason":
            base = node.module.split(".", 1)[1] if "." in node.module else ""
            for a in node.names:
                sub = f"{base}.{a.name}".lstrip(".")
                out.append((sub if sub in mods else base, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".", 1)[1], id(node) in top) for a in node.names if a.name.startswith("mmreason.")]
    return [(m, t) for m, t in out if m in mods]


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    files = {module_name(p, pkg): p for p in pkg.rglob("*.py")}
    mods = set(files) - {""}
    return {m: {d for d, _ in package_imports(p, mods)} - {m} for m, p in files.items() if m}


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
    assert {"data", "datasets.hm", "datasets.amazon", "datasets.splits", "decoding.shown", "features.retrieval",
            "retrieval"} <= set(graph)
    for a, b in ALLOWED_EDGES:
        assert b in graph[a], f"{a} no longer imports {b}: drop it from ALLOWED_EDGES"
        graph[a] = graph[a] - {b}
    assert find_cycle(graph) is None, f"import loop: {' -> '.join(find_cycle(graph))}"


def test_package_imports_sit_at_module_top():
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    mods = set(files) - {""}
    inner = [f"{m} imports {d} inside a function" for m, p in files.items() for d, top in package_imports(p, mods)
             if not top and (m, d) not in LAZY_IMPORTS]
    assert not inner, "\n".join(inner)


def test_no_module_over_400_lines_without_a_reason():
    long = []
    for p in PKG.rglob("*.py"):
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if n > MAX_LINES and "Longer than" not in doc:
            long.append(f"{p.relative_to(PKG)}: {n} lines")
    assert not long, "give a reason in the docstring or split: " + ", ".join(long)


def test_import_contracts_hold():
    """The contracts of pyproject.toml's [tool.importlinter] (what CI runs as ``lint-imports``)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports is missing: pip install -e .[dev]"
    r = subprocess.run([exe, "--no-cache"], cwd=PKG.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
