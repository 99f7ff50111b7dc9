#!/usr/bin/env python3
"""The shape of the code base, measured: largest modules, functions over a length, product
modules that import the test harness, and import cycles between medtrt's modules.

    python tools/structure.py [--root DIR] [--limit 80] [--json]

Python functions are measured with ast (decorators excluded, docstrings included); C++
functions by brace matching from a line that ends a signature with `{` (lambdas inside a
function count toward it). Imports are every `import medtrt...` / `from medtrt... import`, at
module level or inside functions (a cycle hidden in a function-level import is still a cycle).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

SIGNATURE = re.compile(r"^(\s{0,2})(?!(?:if|for|while|switch|else|do|try|catch|namespace|"
                       r"struct|class|enum|union|return)\b)[^;{}#/]*\)\s*(?:const\s*)?"
                       r"(?:noexcept\s*)?(?:override\s*)?(?:->\s*[\w:<>]+\s*)?\{\s*$")
MACRO_BLOCK = re.compile(r"^(PYBIND11_MODULE|TEST)\s*\(.*\{\s*$")


def python_modules(pkg: Path) -> dict[str, Path]:
    root = pkg.parent
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(pkg.rglob("*.py"))}


def python_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                long.append((node.name, n))
    return long


def cpp_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines()
    long, i = [], 0
    while i < len(lines):
        line = lines[i]
        if SIGNATURE.match(line) or MACRO_BLOCK.match(line):
            depth, j = 0, i
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                if depth <= 0 and j > i or (depth == 0 and j == i and "}" in line):
                    break
                j += 1
            n = j - i + 1
            if n > limit:  # the name: the last identifier before "(" in the signature
                k = i
                while k > 0 and not re.search(r"[\w:~]+\s*\(", lines[k]):
                    k -= 1
                name = re.findall(r"([\w:~]+)\s*\(", lines[k])
                long.append((name[0] if name else line.strip()[:40], n))
            i = j + 1
            continue
        i += 1
    return long


def imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "medtrt"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "medtrt":
                found.add(name)
                found |= {f"{name}.{a.name}" for a in node.names}
    return found


def function_level_imports(path: Path, module: str) -> list[str]:
    """medtrt's own imports inside functions ("module:line name"): they hide the import graph
    (and cycles) from a reader. The compiled core (medtrt._C) is exempt: it is optional and
    imported on first use so that `import medtrt` works without it."""
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                names = ["medtrt.<relative>"] if isinstance(node, ast.ImportFrom) else []
            found += [f"{module}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] == "medtrt" and n != "medtrt._C"]
    return sorted(set(found))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def measure(root: Path, limit: int) -> dict:
    pkg = root / "python" / "medtrt"
    mods = python_modules(pkg)
    sizes = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    cpp = sorted(p for p in (root / "csrc").rglob("*") if p.suffix in (".cpp", ".cu", ".h"))
    sizes_cpp = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in cpp}
    graph = {}
    for m, p in mods.items():
        # An import of a package's name also runs its __init__; "medtrt" itself is left out
        # (every module is under it, and __init__ re-exports).
        deps = {d for d in imports(p, m) if d in mods}
        # importing a.b.c runs the __init__ of a.b as well
        deps |= {".".join(d.split(".")[:k]) for d in deps for k in range(2, d.count(".") + 1)}
        deps -= {m, "medtrt"}
        graph[m] = {d for d in deps if not m.startswith(d + ".")}  # a parent package is not a cycle
    harness = sorted(m for m, p in mods.items() if m != "medtrt.testing"
                     and any(d == "medtrt.testing" or d.startswith("medtrt.testing.")
                             for d in imports(p, m)))
    py_long = {m: f for m, p in mods.items() if (f := python_functions(p, limit))}
    cpp_long = {str(p.relative_to(root)): f for p in cpp if (f := cpp_functions(p, limit))}
    return {
        "largest_python_modules": sorted(sizes.items(), key=lambda kv: -kv[1])[:5],
        "largest_cpp_files": sorted(sizes_cpp.items(), key=lambda kv: -kv[1])[:3],
        f"python_functions_over_{limit}_lines": py_long,
        f"cpp_functions_over_{limit}_lines": cpp_long,
        "product_modules_importing_medtrt_testing": harness,
        "function_level_medtrt_imports": [i for m, p in mods.items()
                                          for i in function_level_imports(p, m)],
        "import_cycles": cycles(graph),
        "package_import_cycles": cycles(packages(graph)),
    }


def packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to medtrt's subpackages (medtrt.precision, medtrt.reference...)."""
    top = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = measure(args.root, args.limit)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        print(f"{key}:")
        items = value.items() if isinstance(value, dict) else value
        for item in items or ["(none)"]:
            print(f"  {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
