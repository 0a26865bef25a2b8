"""edgeq's structure, measured from its source: the module graph, its circles, its floors, the largest pieces.

    python benchmarks/structure.py [--json]

Every `import edgeq…` / `from edgeq… import …` is an arrow, at module level or inside a function (both count: a
deferred import is still a dependency). A circle is a strongly connected set of modules; an arrow back up is an
arrow inside one (in a graph without circles every arrow points down). A module's floor is 1 + the longest chain
of arrows below it. Also counted: imports of edgeq's own modules inside functions, the five largest modules and
functions (lines), and README.md's lines. tests/test_structure.py asserts what must stay true.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgeq"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.AST, here: str, modules: set[str]) -> list[str]:
    """The edgeq modules an import statement reaches (`from edgeq import report` reaches edgeq.report)."""
    out = []
    if isinstance(node, ast.Import):
        out = [a.name for a in node.names if a.name.startswith("edgeq")]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeq") and node.level == 0:
        for a in node.names:
            sub = f"{node.module}.{a.name}"
            out.append(sub if sub in modules else node.module)
    return [m for m in out if m in modules and m != here and m != "edgeq"]


def graph() -> dict:
    files = sorted(p for p in PACKAGE.rglob("*.py") if "assets" not in p.parts)
    modules = {module_name(p) for p in files}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    inner, functions, sizes = [], [], {}
    for path in files:
        here = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        sizes[here] = len(path.read_text().splitlines())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{here}.{node.name}"))
                for sub in ast.walk(node):
                    for t in _targets(sub, here, modules):
                        inner.append((here, t, sub.lineno))
            for t in _targets(node, here, modules):
                edges[here].add(t)
    edges.pop("edgeq", None)
    for m in edges.values():
        m.discard("edgeq")
    return {"edges": edges, "inner": inner, "functions": sorted(functions, reverse=True), "sizes": sizes}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def floors(edges: dict[str, set[str]], comps: list[list[str]]) -> dict[str, int]:
    """1 + the longest chain below each module, circles counted as one room."""
    room = {m: m for m in edges}
    for comp in comps:
        for m in comp:
            room[m] = comp[0]
    below: dict[str, set[str]] = {}
    for a, bs in edges.items():
        below.setdefault(room[a], set()).update(room[b] for b in bs if room[b] != room[a])
    memo: dict[str, int] = {}

    def floor(r):
        if r not in memo:
            memo[r] = 1 + max((floor(b) for b in below.get(r, ())), default=0)
        return memo[r]

    return {m: floor(room[m]) for m in edges}


def measure() -> dict:
    g = graph()
    comps = circles(g["edges"])
    in_circle = {m: i for i, c in enumerate(comps) for m in c}
    back = sorted(
        (a, b) for a, bs in g["edges"].items() for b in bs if a in in_circle and in_circle.get(b) == in_circle[a]
    )
    fl = floors(g["edges"], comps)
    module_level = sum(len(bs) for bs in g["edges"].values())
    return {
        "modules": len(g["edges"]),
        "edges": module_level,
        "floors": max(fl.values()),
        "circles": comps,
        "arrows_back_up": back,
        "function_level_imports": len(g["inner"]),
        "largest_modules": sorted(((n, m) for m, n in g["sizes"].items()), reverse=True)[:5],
        "largest_functions": g["functions"][:5],
        "readme_lines": len((ROOT / "README.md").read_text().splitlines()),
        "floor_of": dict(sorted(fl.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    m = measure()
    if args.json:
        print(json.dumps(m, indent=2))
        return
    print(f"{m['modules']} modules on {m['floors']} floors, {m['edges']} arrows")
    print(f"circles: {len(m['circles'])} {m['circles']}")
    print(f"arrows back up: {len(m['arrows_back_up'])} {m['arrows_back_up']}")
    print(f"imports of edgeq's own modules inside functions: {m['function_level_imports']}")
    print("largest modules:", ", ".join(f"{name} {n}" for n, name in m["largest_modules"]))
    print("largest functions:", ", ".join(f"{name} {n}" for n, name in m["largest_functions"]))
    print(f"README.md: {m['readme_lines']} lines")


if __name__ == "__main__":
    main()
