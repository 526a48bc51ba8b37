"""No import cycles inside the softphone package (module-level imports only).

A cycle makes import order matter and hides which concept depends on which;
imports inside functions (deferred on purpose) are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "softphone"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (``if TYPE_CHECKING:`` excluded)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _module_level(tree.body):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node, path.name == "__init__.py")
                if base:
                    # ``from pkg import submodule`` depends on the submodule (and on pkg's
                    # __init__ only when a name is not a submodule).
                    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                    names = subs if len(subs) == len(node.names) else [base, *subs]
            for name in names:
                if name in files and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def _module_level(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            test = node.test
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                continue
            if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
                continue
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body)
            for handler in node.handlers:
                yield from _module_level(handler.body)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_package_has_no_import_cycles():
    # A package __init__ that imports its own submodules is not a cycle by itself;
    # submodules importing the package __init__ back would be, and are counted.
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle(tmp_path):
    package = tmp_path / "softphone"
    (package / "media").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "media" / "__init__.py").write_text("")
    (package / "media" / "a.py").write_text("from softphone.media.b import x\n")
    (package / "media" / "b.py").write_text("from . import c\n")
    (package / "media" / "e.py").write_text("from softphone.media import a\n")  # a submodule: no edge to __init__
    (package / "media" / "c.py").write_text("import softphone.media.a\n\ndef f():\n    import softphone.media.b\n")
    (package / "media" / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                            "    from softphone.media import a\n")
    graph = import_graph(package)
    assert find_cycles(graph) == [["softphone.media.a", "softphone.media.b", "softphone.media.c"]]
    assert graph["softphone.media.d"] == set()
    assert graph["softphone.media.e"] == {"softphone.media.a"}
