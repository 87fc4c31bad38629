"""The layout of the code: imports go one way between the packages, no import cycle among the
project's modules, no module over 400 lines (the Triton kernel files excepted), no function over
100 statements.

Read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pspnet", "psp_kernels", "benchmarks")
MAX_LINES = 400
MAX_STATEMENTS = 100

#: The packages each package must not import: the kernel library stands alone, the model package
#: builds on it, the benchmarks on both; nothing imports the tests.
FORBIDDEN = {
    "psp_kernels": {"pspnet", "benchmarks", "tests"},
    "pspnet": {"benchmarks", "tests"},
    "benchmarks": {"tests"},
}


def _modules() -> dict[str, Path]:
    """``{dotted module name: file}`` of every Python file of the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imported(name: str, path: Path, node: ast.Import | ast.ImportFrom):
    """Dotted names an import statement of module ``name`` may load (a ``from m import x``
    loads ``m``, and ``m.x`` when that is a module)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:  # relative: from the module's package, up level - 1 more
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module
    yield module
    yield from (f"{module}.{alias.name}" for alias in node.names)


def imported_packages(name: str, path: Path) -> set[str]:
    """Top-level packages that module ``name`` imports anywhere (imports inside functions too)."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            tops |= {target.split(".")[0] for target in _imported(name, path, node)}
    return tops


def import_graph() -> dict[str, set[str]]:
    """``{module: project modules it imports}``, imports inside functions included.

    Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first, so those are edges too
    (a package ``__init__`` that re-exports from a module which imports the package back is a
    cycle); a module's own parent packages are not (they are loaded before it anyway).
    """
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(name, path, node):
                    for m in {target} | _parents(target):
                        if m in MODULES and m != name and m not in _parents(name):
                            edges.add(m)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a cycle
    through its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle ``[a, b, ..., a]`` inside a strongly connected component."""
    members, start = set(component), component[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & members)
        back = [w for w in nxt if w in seen]
        if back:
            return path[path.index(back[0]) :] + [back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


def _statements(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Statements in a function's body, nested blocks included (a nested function or class
    counts as one: it is checked on its own)."""
    count, todo = 0, list(fn.body)
    while todo:
        stmt = todo.pop()
        count += 1
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(stmt, field, None) or []:
                todo.extend([child] if isinstance(child, ast.stmt) else child.body)
    return count


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------------------------------ tests


def test_the_checks_see_the_code():
    """The graph and the counters find what they should (so a passing test means something)."""
    graph = import_graph()
    assert {"pspnet.train", "pspnet.model", "psp_kernels", "benchmarks.providers"} <= set(graph)
    assert "pspnet.model" in graph["pspnet.build"]  # top-level relative import
    assert "pspnet.onnx_runtime" in graph["pspnet.evaluate"]  # function-level import
    assert "pspnet.data.transforms" in graph["pspnet.data"]  # package __init__ re-export
    assert "psp_kernels" in graph["pspnet.ppm"]  # absolute import of another package
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(cyclic) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    fn = ast.parse("def f(x):\n    if x:\n        y = 1\n    else:\n        y = 2\n    return y\n")
    assert _statements(fn.body[0]) == 4


def test_the_direction_check_sees_imports(tmp_path):
    """The package check finds absolute, relative and function-level imports."""
    src = "import os\nfrom . import sibling\n\ndef f():\n    from tests.helpers import x\n"
    (tmp_path / "m.py").write_text(src)
    assert imported_packages("pkg.m", tmp_path / "m.py") == {"os", "pkg", "tests"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_direction(package):
    bad = [
        f"{name} imports {sorted(imported_packages(name, path) & FORBIDDEN[package])}"
        for name, path in MODULES.items()
        if name.split(".")[0] == package and imported_packages(name, path) & FORBIDDEN[package]
    ]
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(bad)


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _line_limited():
    for path in MODULES.values():
        # the Triton kernel files hold one kernel family each, whatever its length
        if path.name == "kernels.py" and "psp_kernels/ops" in _rel(path):
            continue
        yield path


@pytest.mark.parametrize("path", list(_line_limited()), ids=_rel)
def test_module_length(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_rel(path)} has {lines} lines (at most {MAX_LINES}): split it"


def test_function_length():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _statements(node)
                if n > MAX_STATEMENTS:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name}() has {n} statements")
    assert not long, f"functions over {MAX_STATEMENTS} statements:\n" + "\n".join(long)
