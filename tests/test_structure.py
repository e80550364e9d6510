"""The code's shape: no import cycle in volt_spec, no file over 500 lines, no function over 60.

The import graph is read from the source (every import statement anywhere in a file: inside
functions and under TYPE_CHECKING too, since a lazy import is still a dependency), so it sees
what a run would only see on some paths. Each allowlist below names offenders in code that
others are reworking; it may only shrink: an entry that no longer offends fails the test too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "volt_spec"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60

# Import cycles someone is removing, each the set of modules the test reports (none left today).
KNOWN_CYCLES: set[frozenset[str]] = set()
# Files over MAX_FILE_LINES: path -> the most lines it may have until it is split.
LONG_FILES: dict[str, int] = {}
# Functions over MAX_FUNCTION_LINES: (path, qualified name) -> the most lines it may have.
LONG_FUNCTIONS: dict[tuple[str, str], int] = {}


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name `from <...> import` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules this one imports: `from pkg import name` is an edge to pkg.name
    when that is a module, else to pkg; a parent package is not an edge of its own."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path.name == "__init__.py", node)
            out |= {f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names}
    return {m for m in out if m in modules and m != module}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components with more than one module, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _describe(component: set[str], graph: dict[str, set[str]]) -> str:
    edges = sorted(f"{a} -> {b}" for a in component for b in graph[a] if b in component)
    return "{" + ", ".join(sorted(component)) + "}: " + "; ".join(edges)


def test_no_import_cycles():
    graph = import_graph()
    cycles = {frozenset(c) for c in strongly_connected(graph)}
    new = [_describe(set(c), graph) for c in sorted(cycles - KNOWN_CYCLES, key=sorted)]
    gone = [sorted(c) for c in sorted(KNOWN_CYCLES - cycles, key=sorted)]
    assert not new, "import cycles:\n  " + "\n  ".join(new)
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_the_graph_sees_lazy_and_relative_imports():
    """The walk finds an import inside a function (loader -> linux_plan) and resolves `from . import`."""
    graph = import_graph()
    assert "volt_spec.vmm.linux_plan" in graph["volt_spec.vmm.loader"]
    assert "volt_spec.layout" in graph["volt_spec.vmm.loader"]             # from .. import layout
    assert "volt_spec.boot" not in graph["volt_spec.vmm.loader"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def python_files() -> list[Path]:
    return sorted([*(ROOT / PACKAGE).rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, lines) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        name = f"{prefix}{getattr(node, 'name', '')}"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield name, node.end_lineno - node.lineno + 1
            yield from functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, name + ".")
        else:
            yield from functions(node, prefix)


def _check_sizes(found: dict, allowed: dict, limit: int, what: str) -> None:
    over = {k: n for k, n in found.items() if n > limit}
    new = sorted(f"{k}: {n} lines" for k, n in over.items() if n > allowed.get(k, limit))
    fixed = sorted(str(k) for k in allowed if k not in over)
    assert not new, f"{what} over {limit} lines (or longer than their allowlisted size):\n  " + "\n  ".join(new)
    assert not fixed, f"these {what} are short enough now: remove them from the allowlist: {fixed}"


def test_no_file_over_500_lines():
    found = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in (ROOT / PACKAGE).rglob("*.py")}
    _check_sizes(found, LONG_FILES, MAX_FILE_LINES, "files")


def test_no_function_over_60_lines():
    found = {}
    for path in python_files():
        rel = str(path.relative_to(ROOT))
        for name, lines in functions(ast.parse(path.read_text(), rel)):
            found[(rel, name)] = max(lines, found.get((rel, name), 0))
    _check_sizes(found, LONG_FUNCTIONS, MAX_FUNCTION_LINES, "functions")
