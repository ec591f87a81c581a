"""Imports run one way through the product: cli -> engine / pipeline -> kernels.

The test reads every product module with :mod:`ast` (nothing is imported),
collects each import it makes -- at module level or inside a function (the
product imports lazily), plus ``importlib.import_module("...")`` calls with
literal names -- and builds the graph of imports between product modules.

Layers, lowest first: ``kernels`` < ``pipeline`` < ``engine`` < ``cli``
(``cli.py``, ``cli_args.py`` and ``cli_checks.py``). The rule enforced:

- ``kernels/`` imports nothing from ``pipeline/``, ``engine/`` or the cli;
- ``pipeline/`` imports nothing from ``engine/`` or the cli (it does not today,
  and the data side of the product is usable without the training engine);
- ``engine/`` imports nothing from the cli (it may read ``pipeline/``'s types
  and functions, e.g. the crop windows);
- no import cycle between two or more modules (a package's ``__init__`` and
  its own submodules excepted: Python imports a package before its children).

A failure names the offending edge (``importer -> imported``, file:line) or
the cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("cli.py", "cli_args.py", "cli_checks.py", "engine", "pipeline", "kernels")
#: for each layer, the layers it must not import (kernels the lowest, the cli the highest)
FORBIDDEN = {"kernels": {"pipeline", "engine", "cli"}, "pipeline": {"engine", "cli"}, "engine": {"cli"}}


def _modules() -> dict:
    """Dotted name -> path of every product module."""
    out = {}
    for root in ROOTS:
        path = REPO / root
        for f in [path] if path.suffix == ".py" else sorted(path.rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _layer(name: str) -> str:
    top = name.split(".")[0]
    return "cli" if top in ("cli", "cli_args", "cli_checks") else top


def _resolve(target: str) -> str | None:
    """The product module ``target`` names (the longest dotted prefix that is one), or None."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        if name in MODULES:
            return name
    return None


def _literal_names(node) -> list:
    """String constants of an ``import_module`` argument (a literal or ``a if c else b`` of literals)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literal_names(node.body) + _literal_names(node.orelse)
    return []


def imports_of(name: str) -> list:
    """``(imported module, line)`` for every product module that module ``name`` imports."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports pkg.sub when that is a module, else a name of pkg
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            targets = _literal_names(node.args[0])
        for t in targets:
            r = _resolve(t)
            if r is not None and r != name:
                found.append((r, node.lineno))
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _where(a, line) -> str:
    return f"{MODULES[a].relative_to(REPO)}:{line}"


def test_the_walk_sees_the_product():
    assert {"cli", "engine.train", "pipeline.stft", "kernels.cpu.stft", "kernels.gpu.stft"} <= set(MODULES)
    edges = {(a, b) for a, out in GRAPH.items() for b, _ in out}
    assert ("pipeline.stft", "kernels.cpu.stft") in edges  # a module-level import
    assert ("pipeline.stft", "kernels.gpu.stft") in edges  # importlib.import_module of a literal
    assert ("cli", "pipeline.sources") in edges


def test_no_back_edges():
    bad = []
    for a, out in GRAPH.items():
        for b, line in out:
            if _layer(b) in FORBIDDEN.get(_layer(a), ()):
                bad.append(f"{a} -> {b} ({_where(a, line)}): {_layer(a)} must not import {_layer(b)}")
    assert not bad, "imports against the layering cli -> engine -> pipeline -> kernels:\n" + "\n".join(sorted(bad))


def _is_package_edge(a: str, b: str) -> bool:
    """``a`` is ``b``'s package or ``b`` is ``a``'s (an ``__init__`` and its own submodule)."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_no_import_cycles():
    graph = {a: sorted({b for b, _ in out if not _is_package_edge(a, b)}) for a, out in GRAPH.items()}
    lines = {(a, b): line for a, out in GRAPH.items() for b, line in out}
    # Tarjan's strongly connected components: every component of two or more modules is a cycle
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    msgs = []
    for comp in comps:
        inside = set(comp)
        msgs.append("cycle among " + ", ".join(comp) + ": " + "; ".join(
            f"{a} -> {b} ({_where(a, lines[a, b])})" for a in comp for b in graph[a] if b in inside))
    assert not msgs, "\n".join(msgs)
