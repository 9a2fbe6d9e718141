"""No import circle inside condinst, training or app: each package reads from the bottom up (imports inside
functions count, relative imports resolved). Observed before the fixes: in app/ one 13-module circle (actions,
canvas, explain_page, images, mask_edits, propagation, refine, review, screen, sequences, service, tracks,
ytvis_export); in condinst/ one through lazy imports (the config front door <-> checkpoint <-> sipmask's config,
presets and checkpoint <-> yaml_config); in training/ data <-> ytvis."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def package_imports(package: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports, at any depth of the code (imports inside
    functions count); relative imports resolved; `from a.b import c` counts a.b.c when that is a module."""
    root = package.parent
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_circle_finder_finds_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_are_resolved(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("def f():\n    from .sub import leaf\n")  # lazy, relative
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "leaf.py").write_text("from ..base import f\n")
    graph = package_imports(package)
    assert graph["pkg.base"] == {"pkg.sub", "pkg.sub.leaf"} and graph["pkg.sub.leaf"] == {"pkg.base"}
    assert import_circles(graph) == [["pkg.base", "pkg.sub.leaf"]]


@pytest.mark.parametrize("package", ["condinst", "training", "app"])
def test_no_import_circle_inside_the_package(package):
    circles = import_circles(package_imports(REPO / package))
    assert not circles, f"import circles in {package}/:\n" + "\n".join(" -> ".join(c) for c in circles)
