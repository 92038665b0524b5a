"""The package's import structure: no import cycle between its modules, no private name imported
from another module, and viz (every figure) below the rest of the kit. Reads the source with
``ast`` only: offline, nothing imported, well under a second."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hagan"
# The kit modules hagan.viz may import: plain types and errors, nothing that draws on the rest.
VIZ_MAY_IMPORT = {"config", "errors"}


def kit_imports(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """module -> the sibling modules it imports (anywhere in its body, function-level imports
    too), and the private names imported across modules ("a imports b._x")."""
    modules = {p.stem for p in package.glob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for module in sorted(modules):
        tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names]
                parts = (node.module or "").split(".")
                if node.level == 1 and not node.module:  # from . import a, b
                    targets += [(n, []) for n in names]
                elif node.level == 1:  # from .a import x
                    targets.append((parts[0], names))
                elif node.level == 0 and parts[0] == package.name and len(parts) > 1:
                    targets.append((parts[1], names))  # from hagan.a import x
                elif node.level == 0 and node.module == package.name:
                    targets += [(n, []) for n in names]  # from hagan import a
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == package.name and len(parts) > 1:
                        targets.append((parts[1], []))
            for target, names in targets:
                if target in modules and target not in (module, "__init__"):
                    edges[module].add(target)
                    private += [f"{module} imports {target}.{n}" for n in names
                                if n.startswith("_") and not n.startswith("__")]
    edges.pop("__init__", None)
    return edges, private


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (strongly connected
    components of more than one module, or a module importing itself)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(edges):
        if v not in order:
            visit(v)
    return cycles


def test_the_checks_find_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "hagan"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from hagan.c import _helper\n")
    (pkg / "c.py").write_text("import hagan.a\n")
    (pkg / "d.py").write_text("from . import a\n")
    edges, private = kit_imports(pkg)
    assert edges == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(edges) == [["a", "b", "c"]]
    assert private == ["b imports c._helper"]


def test_the_package_has_no_import_cycle():
    edges, _ = kit_imports(PACKAGE)
    assert len(edges) > 10  # the walk found the package
    assert import_cycles(edges) == []


def test_no_private_name_is_imported_across_modules():
    assert kit_imports(PACKAGE)[1] == []


def test_viz_imports_no_kit_module_above_it():
    edges, _ = kit_imports(PACKAGE)
    assert edges["viz"] <= VIZ_MAY_IMPORT, edges["viz"] - VIZ_MAY_IMPORT
