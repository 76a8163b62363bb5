"""The package's import graph: no circle, and every arrow points down the layers.

Every ``import`` inside ``src/lore_rm`` is read with :mod:`ast`, wherever it stands: at the
top of a module, inside a function (imported when the function runs) or under
``if TYPE_CHECKING:`` (read by the type checker only). All three kinds count, and a failure
names the kind of every arrow involved.

The layers, lowest first (a module may import its own package and any lower layer)::

    bottom    the top-level modules (errors, io, conversation, comparisons, protocol, metrics,
              ranking, ...): they import each other only
    data      preparing and reading dataset folders
    embed     embedding texts into a dataset folder's store
    fit       the model
    evaluate, serve
              protocols and reports; the service, export and offline scoring (siblings:
              neither imports the other)
    lore_rm   the package's public names (``lore_rm/__init__.py``)
    cli       the ``lore`` command

``python tests/test_import_graph.py`` prints the graph between packages (with the number of
module-level arrows behind each) and any circle or arrow back up.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lore_rm"
LAYERS = {"bottom": 0, "data": 1, "embed": 2, "fit": 3, "evaluate": 4, "serve": 4}
LAYERS |= {"lore_rm": 5, "cli": 6}
#: top-level modules above the bottom layer (a compatibility alias of an embed function)
TOP_LEVEL = {"pipeline": "embed"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, kind: str = "module"):
    """(node, kind) of every import under ``tree``: kind is "module", "function" or "type"."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), "type")
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), kind)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _imports(node, "type" if kind == "type" else "function")
        else:
            yield from _imports(node, kind)


def edges() -> dict[tuple[str, str], set[str]]:
    """(importer, imported) -> the kinds of import between them, for the package's modules."""
    known = modules()
    out: dict[tuple[str, str], set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, kind in _imports(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
                ]
            for target in targets:
                while target and target not in known:  # import a.b.c of a module a.b
                    target = target.rpartition(".")[0]
                if target.startswith("lore_rm") and target != name:
                    out.setdefault((name, target), set()).add(kind)
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "lore_rm"
    if parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return TOP_LEVEL.get(parts[1], "bottom")
    raise AssertionError(f"{module}: a package with no layer: add it to LAYERS")


def cycles(graph: dict[tuple[str, str], set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    succ: dict[str, list[str]] = {}
    for a, b in sorted(graph):
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in succ:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on_stack.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(succ[w])))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
    return found


def _arrow(graph, a: str, b: str) -> str:
    return f"{a} -> {b} ({', '.join(sorted(graph[(a, b)]))})"


def circles(graph) -> list[str]:
    return [
        "; ".join(_arrow(graph, a, b) for a in comp for b in comp if (a, b) in graph)
        for comp in cycles(graph)
    ]


def arrows_back_up(graph) -> list[str]:
    bad = []
    for a, b in sorted(graph):
        la, lb = layer_of(a), layer_of(b)
        if la == lb or (la == "bottom" and lb == "bottom"):
            continue
        if LAYERS[lb] >= LAYERS[la]:
            bad.append(f"{_arrow(graph, a, b)}: {la} may not import {lb}")
    return bad


def test_the_graph_is_read():
    graph = edges()
    kinds = set().union(*graph.values())
    assert kinds == {"module", "function", "type"}, kinds
    assert ("lore_rm.fit.model", "lore_rm.fit.config") in graph
    assert len({a for a, _ in graph}) > 100


def test_no_import_circle():
    assert circles(edges()) == []


def test_no_arrow_back_up():
    assert arrows_back_up(edges()) == []


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """A circle made of a function-level and a type-only import is found."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lore_rm.fit.model import LowRankReward\n"
        "def f():\n    from lore_rm.io import atomic_write\n"
        "import lore_rm.errors\n"
    )
    kinds = [(kind, getattr(node, "module", None)) for node, kind in _imports(tree)]
    assert ("type", "lore_rm.fit.model") in kinds
    assert ("function", "lore_rm.io") in kinds
    assert ("module", None) in kinds  # import lore_rm.errors
    graph = {("a.x", "a.y"): {"function"}, ("a.y", "a.x"): {"type"}, ("a.y", "a.z"): {"module"}}
    assert circles(graph) == ["a.x -> a.y (function); a.y -> a.x (type)"]


if __name__ == "__main__":
    graph = edges()
    between: Counter[tuple[str, str]] = Counter()
    for a, b in graph:
        if layer_of(a) != layer_of(b):
            between[(layer_of(a), layer_of(b))] += 1
    for (a, b), n in sorted(between.items(), key=lambda kv: (-LAYERS[kv[0][0]], kv[0])):
        print(f"{a:>8} -> {b:<8} {n} module pairs")
    for line in circles(graph) + arrows_back_up(graph):
        print("PROBLEM:", line)
