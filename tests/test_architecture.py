"""The layout rules of docs/architecture.md, checked on the source with ``ast`` (nothing is imported).

* imports point one way: lkbase <- ctprep <- ctlabel <- ctseg <- lesionkit;
* no import circle among the modules of any package (module-level and function-level imports);
* no module over MAX_LINES lines (TOLERATED lists exceptions, each with its reason);
* names that were defined twice (CaseOutcome, Lesion, SOURCES) are defined once.

Graph convention: ``import a.b.c`` imports module ``a.b.c``; ``from a.b import c`` imports
``a.b.c`` when that is a module, else ``a.b``; importing a package imports its ``__init__``
(module ``a.b``); relative imports are resolved against the importing module's package.
Parent packages that Python initialises on the way are not edges (they never form a circle
that fails at import time). Each failure names the file, line and import.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("lkbase", "ctprep", "ctlabel", "ctseg", "lesionkit")  # each may import only those before it
MAX_LINES = 500
TOLERATED: dict[str, str] = {}  # module -> why it may exceed MAX_LINES
ONCE = {"CaseOutcome": "class", "Lesion": "class", "SOURCES": "module-level name"}


@dataclass(frozen=True)
class Module:
    """One source file: its dotted name, its path (for messages) and its text."""

    name: str
    path: str
    source: str
    is_package: bool = False  # an __init__.py: relative imports resolve against the module itself


@dataclass(frozen=True)
class Import:
    """One import of ``source`` (a module of ours): ``target`` is the module it names, as written and resolved."""

    source: str
    target: str  # the dotted name as written, resolved if relative (may be a name inside a module)
    line: int
    text: str

    def where(self, modules: dict[str, Module]) -> str:
        return f"{modules[self.source].path}:{self.line}: {self.text}"


def load_modules(root: Path = ROOT, packages=LAYERS) -> dict[str, Module]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules[name] = Module(name, str(path.relative_to(root)), path.read_text(encoding="utf-8"), is_package)
    return modules


def imports_of(module: Module) -> list[Import]:
    """Every import in the module, at any depth (functions, classes, conditionals).

    ``from a.b import c, d`` gives ``a.b.c`` and ``a.b.d`` (``a.b`` for ``*``): each resolves to
    the module it names, or to ``a.b`` when it names something inside it.
    """
    found = []
    for node in ast.walk(ast.parse(module.source, module.path)):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        text = " ".join((ast.get_source_segment(module.source, node) or "").split())
        if isinstance(node, ast.Import):
            found += [Import(module.name, alias.name, node.lineno, text) for alias in node.names]
        else:
            base = _absolute(module, node.module, node.level)
            found += [Import(module.name, base if alias.name == "*" else f"{base}.{alias.name}", node.lineno, text)
                      for alias in node.names]
    return found


def _absolute(module: Module, name: str | None, level: int) -> str:
    if not level:
        return name or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _resolve(target: str, modules: dict[str, Module]) -> str | None:
    """The module of ours that ``target`` names: itself, else its longest prefix that is a module."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, Import]]:
    """module -> {imported module of ours -> the first import that names it}."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for name, module in modules.items():
        for imp in imports_of(module):
            resolved = _resolve(imp.target, modules)
            if resolved is not None:
                graph[name].setdefault(resolved, imp)
    return graph


def layer_violations(modules: dict[str, Module], layers=LAYERS) -> list[str]:
    """Imports of a later layer (or of a package above) from an earlier one."""
    rank = {package: i for i, package in enumerate(layers)}
    bad = []
    for name, module in modules.items():
        own = rank.get(name.split(".")[0])
        for imp in imports_of(module):
            other = rank.get(imp.target.split(".")[0])
            if own is not None and other is not None and other > own:
                bad.append(f"{imp.where(modules)}  ({name.split('.')[0]} may not import {layers[other]})")
    return sorted(set(bad))


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's components of the graph (iterative)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[Import]]:
    """One circle per strongly connected component of more than one module, or self-import: its imports in order."""
    found = []
    for component in strongly_connected(graph):
        start = component[0]
        if len(component) == 1 and start not in graph[start]:
            continue
        found.append(_circle_through(start, set(component), graph))
    return found


def _circle_through(start: str, members: set[str], graph: dict[str, dict[str, Import]]) -> list[Import]:
    """A shortest path of imports from ``start`` back to it, inside the component (breadth first)."""
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child, imp in sorted(graph[node].items()):
                if child not in members:
                    continue
                if child == start:
                    path = [imp]
                    while path[0].source != start:
                        path.insert(0, previous[path[0].source])
                    return path
                if child not in previous:
                    previous[child] = imp
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # pragma: no cover - a component always has one


def describe(circle: list[Import], modules: dict[str, Module]) -> str:
    names = " -> ".join([imp.source for imp in circle] + [circle[0].source])
    return names + "".join(f"\n    {imp.where(modules)}" for imp in circle)


def long_modules(modules: dict[str, Module], limit: int = MAX_LINES) -> list[str]:
    return sorted(f"{m.path}: {len(m.source.splitlines())} lines" for m in modules.values()
                  if len(m.source.splitlines()) > limit and m.name not in TOLERATED)


def repeated_definitions(modules: dict[str, Module], names=ONCE) -> list[str]:
    """Names of ``names`` defined (as a class, or at module level) in more than one place."""
    where: dict[str, list[str]] = {name: [] for name in names}
    for module in modules.values():
        for node in ast.parse(module.source, module.path).body:
            for defined in _defined_names(node):
                if defined in where:
                    where[defined].append(f"{module.path}:{node.lineno}")
    return [f"{name} ({names[name]}) defined {len(places)} times: {', '.join(places)}"
            for name, places in sorted(where.items()) if len(places) > 1]


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


# ---- the rules, on the repository ---------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _repository() -> dict[str, Module]:
    return load_modules()


def test_imports_point_one_way():
    bad = layer_violations(_repository())
    assert not bad, "imports against the layers lkbase <- ctprep <- ctlabel <- ctseg <- lesionkit:\n" + "\n".join(bad)


def test_no_import_circles():
    modules = _repository()
    found = cycles(import_graph(modules))
    assert not found, "import circles:\n" + "\n".join(describe(c, modules) for c in found)


def test_modules_are_short():
    bad = long_modules(_repository())
    assert not bad, f"modules over {MAX_LINES} lines:\n" + "\n".join(bad)


def test_tolerated_modules_exist_and_are_long():
    modules = _repository()
    for name, reason in TOLERATED.items():
        assert name in modules and reason, name
        assert len(modules[name].source.splitlines()) > MAX_LINES, f"{name} is short now: drop it from TOLERATED"


def test_names_defined_once():
    bad = repeated_definitions(_repository())
    assert not bad, "\n".join(bad)


# ---- the checker itself ---------------------------------------------------------------------------
def _synthetic(**sources: str) -> dict[str, Module]:
    modules = {}
    for dotted, source in sources.items():
        is_package = dotted.endswith(".__init__")
        name = dotted.removesuffix(".__init__")
        modules[name] = Module(name, name.replace(".", "/") + ("/__init__.py" if is_package else ".py"), source,
                               is_package)
    return modules


def test_checker_finds_a_circle_through_function_level_and_relative_imports():
    modules = _synthetic(**{"pkg.__init__": "", "pkg.a": "from pkg import b\n",
                            "pkg.b": "import os\n\ndef f():\n    from . import c\n",
                            "pkg.c": "from pkg.a import thing\n", "pkg.d": "import pkg.a\n"})
    found = cycles(import_graph(modules))
    assert len(found) == 1
    assert [imp.source for imp in found[0]] == ["pkg.a", "pkg.b", "pkg.c"]
    text = describe(found[0], modules)
    assert text.startswith("pkg.a -> pkg.b -> pkg.c -> pkg.a")
    assert "pkg/b.py:4: from . import c" in text and "pkg/c.py:1: from pkg.a import thing" in text


def test_checker_finds_self_imports_and_package_init_circles():
    modules = _synthetic(**{"pkg.__init__": "from pkg.core import X\n", "pkg.core": "from pkg import helper\n",
                            "pkg.helper": "", "pkg.alone": "def f():\n    from pkg import alone\n"})
    found = {tuple(imp.source for imp in circle) for circle in cycles(import_graph(modules))}
    assert found == {("pkg.alone",)}  # `from pkg import helper` names the submodule, not pkg/__init__
    modules["pkg.core"] = Module("pkg.core", "pkg/core.py", "from pkg import VERSION\n")
    found = {tuple(imp.source for imp in circle) for circle in cycles(import_graph(modules))}
    assert ("pkg", "pkg.core") in found  # a name of the package: its __init__, which imports core


def test_checker_finds_imports_against_the_layers():
    modules = _synthetic(**{"lkbase.__init__": "", "lkbase.x": "def f():\n    import ctprep.store.layout\n",
                            "ctlabel.y": "from ctseg import models\n", "ctseg.z": "from ctlabel.y import q\n"})
    bad = layer_violations(modules)
    assert len(bad) == 2
    assert bad[0].startswith("ctlabel/y.py:1: from ctseg import models") and "ctlabel may not import ctseg" in bad[0]
    assert bad[1].startswith("lkbase/x.py:2: import ctprep.store.layout")


def test_checker_finds_repeated_names_and_long_modules():
    modules = _synthetic(**{"ctprep.a": "class CaseOutcome:\n    pass\n", "ctlabel.b": "SOURCES = ()\n",
                            "lkbase.c": "class CaseOutcome:\n    pass\n", "ctseg.d": "x = 1\n" * 501})
    assert repeated_definitions(modules) == [
        "CaseOutcome (class) defined 2 times: ctprep/a.py:1, lkbase/c.py:1"]
    assert long_modules(modules) == ["ctseg/d.py: 501 lines"]
