"""The import graph of corrigo's own modules: no cycle, no private name taken from another
module, no project module imported inside a function.

Every shipped module (tests/unit/test_shipped_imports.py, ``shipped_roots``) is parsed with
``ast``; each import of one of the project's modules is an edge, those inside functions
included (an import moved into a function still runs, later: it hides a cycle, it does not
remove it). Relative imports are resolved, ``from pkg import module`` is an import of
``pkg.module``, and importing ``a.b.c`` from outside ``a.b`` runs ``a/__init__.py`` and
``a/b/__init__.py`` first, so it is an edge to those packages too.

A function-level import stays allowed for what is slow to import: a heavy third-party package
(:data:`HEAVY`: torch, transformers, vLLM, uvicorn...) or a project module that loads one at
its top (``adapters.engine`` imports vLLM), so that ``corrigo --help``, the client commands
and the light tests start without them. Such an import cannot hide a cycle: the cycle check
counts it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tests.unit.test_shipped_imports import REPO, shipped_roots

#: Third-party packages whose import takes seconds (or starts threads): a module that needs
#: them may import them, or a project module that loads them, inside the function using them.
HEAVY = frozenset(
    {"vllm", "torch", "transformers", "sentence_transformers", "matplotlib", "ray", "uvicorn"}
)


@dataclass(frozen=True)
class Edge:
    """One import of a project module ``target`` by ``source``."""

    source: str
    target: str
    path: str
    line: int
    in_function: bool
    #: False for the packages that importing ``target``'s module runs first.
    direct: bool = True

    def where(self) -> str:
        return f"{self.path}:{self.line}" + (" (inside a function)" if self.in_function else "")


@dataclass(frozen=True)
class Graph:
    edges: tuple[Edge, ...]
    #: ``path:line: message`` for every private name imported from another module.
    private: tuple[str, ...]
    #: Module -> the third-party top-level packages it imports outside functions.
    third_party: Mapping[str, frozenset[str]]

    def heavy(self, module: str) -> str | None:
        """The heavy package (:data:`HEAVY`) importing ``module`` loads, if any: its own
        imports outside functions and theirs, transitively."""
        seen, todo = {module}, [module]
        while todo:
            current = todo.pop()
            found = sorted(self.third_party.get(current, frozenset()) & HEAVY)
            if found:
                return found[0]
            for edge in self.edges:
                if edge.source == current and not edge.in_function and edge.target not in seen:
                    seen.add(edge.target)
                    todo.append(edge.target)
        return None


def module_names(files: Mapping[str, str]) -> dict[str, str]:
    """Dotted module name -> relative path, for ``files`` (relative path -> source)."""
    names = {}
    for path in files:
        parts = path.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class _Imports(ast.NodeVisitor):
    """Every import statement of one module, with whether it runs inside a function."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self.depth = 0

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self.depth > 0))


def build_graph(files: Mapping[str, str]) -> Graph:
    """The project-internal import graph of ``files`` (relative path -> source)."""
    modules = module_names(files)
    edges: list[Edge] = []
    private: list[str] = []
    third_party: dict[str, frozenset[str]] = {}
    for source, path in modules.items():
        is_package = path.endswith("__init__.py")
        own = {*_ancestors(source), source}
        visitor = _Imports()
        visitor.visit(ast.parse(files[path], path))
        outside: set[str] = set()
        for node, in_function in visitor.found:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name in modules]
                if not in_function:
                    outside |= {a.name.split(".")[0] for a in node.names if a.name not in modules}
            else:
                if node.level:
                    package = source if is_package else source.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = ".".join(p for p in (package, node.module) if p)
                else:
                    base = node.module or ""
                if base not in modules:  # a third-party module (or the standard library)
                    if not in_function and not node.level:
                        outside.add(base.split(".")[0])
                    continue
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else base)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(
                            f"{path}:{node.lineno}: imports the private name {alias.name} "
                            f"from {base}"
                        )
            for target in targets:
                # Importing a.b.c runs the packages a and a.b first (those not already ours).
                for module in [*_ancestors(target), target]:
                    if module not in own and module in modules:
                        edges.append(
                            Edge(source, module, path, node.lineno, in_function, module == target)
                        )
        third_party[source] = frozenset(outside)
    return Graph(tuple(edges), tuple(private), third_party)


def cycles(edges: Iterable[Edge]) -> list[list[Edge]]:
    """One cycle (as the edges that close it) per strongly connected component of more than
    one module (Tarjan's algorithm, iterative)."""
    out: dict[str, list[Edge]] = {}
    for edge in edges:
        out.setdefault(edge.source, []).append(edge)
        out.setdefault(edge.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(out):
        if root in index:
            continue
        work = [(root, iter(out[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            edge = next(children, None)
            if edge is not None:
                child = edge.target
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(out[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_cycle_in(component, out) for component in components]


def _cycle_in(component: set[str], out: Mapping[str, list[Edge]]) -> list[Edge]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in out[node]:
                if edge.target not in component:
                    continue
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if edge.target not in came:
                    came[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle in the component {sorted(component)}")


def describe(cycle: list[Edge]) -> str:
    steps = " -> ".join(f"{e.target} [{e.where()}]" for e in cycle)
    return f"{cycle[0].source} -> {steps}"


def shipped_sources() -> dict[str, str]:
    return {
        str(path.relative_to(REPO)): path.read_text()
        for root in shipped_roots()
        for path in sorted(root.rglob("*.py"))
    }


GRAPH = build_graph(shipped_sources())


def test_no_import_cycle() -> None:
    found = [describe(cycle) for cycle in cycles(GRAPH.edges)]
    assert not found, "import cycles between corrigo's modules:\n" + "\n".join(found)


def test_no_private_name_is_imported_from_another_module() -> None:
    assert not GRAPH.private, "private names imported across modules:\n" + "\n".join(GRAPH.private)


def light_imports_in_functions(graph: Graph) -> list[str]:
    """Imports of project modules inside functions, except of those that load a heavy
    package (:data:`HEAVY`): those are deferred for start-up time, as the package would be."""
    return sorted(
        {
            f"{e.where()}: imports {e.target}"
            for e in graph.edges
            if e.in_function and e.direct and graph.heavy(e.target) is None
        }
    )


def test_no_project_module_is_imported_inside_a_function() -> None:
    found = light_imports_in_functions(GRAPH)
    assert not found, (
        "project modules imported inside functions (import them at the top; a cycle is "
        "broken by moving what both sides need into a module of its own):\n" + "\n".join(found)
    )


# The checks themselves, on a small made-up project.
TOY = {
    "pkg/__init__.py": "",
    "pkg/a.py": "from .b import helper\n",
    "pkg/b.py": "def helper():\n    from pkg import a\n",
    "pkg/sub/__init__.py": "from ..c import thing\n",
    "pkg/sub/d.py": "import os\nfrom . import e\n",
    "pkg/sub/e.py": "from pkg.c import _secret, __version__\n",
    "pkg/c.py": "import pkg.sub.d\n\ndef late():\n    import json\n    from . import engine\n",
    "pkg/engine.py": "import torch\nfrom .a import helper\n",
}


def test_the_graph_resolves_each_form() -> None:
    graph = build_graph(TOY)
    edges = {(e.source, e.target, e.in_function) for e in graph.edges}
    assert edges == {
        ("pkg.a", "pkg.b", False),  # relative
        ("pkg.b", "pkg.a", True),  # `from pkg import module`, inside a function
        ("pkg.sub", "pkg.c", False),  # two levels up
        ("pkg.sub.d", "pkg.sub.e", False),  # `from . import module`
        ("pkg.sub.e", "pkg.c", False),
        ("pkg.c", "pkg.sub", False),  # importing pkg.sub.d runs pkg/sub/__init__.py first
        ("pkg.c", "pkg.sub.d", False),
        ("pkg.c", "pkg.engine", True),
        ("pkg.engine", "pkg.a", False),
    }
    assert graph.heavy("pkg.engine") == "torch"
    assert graph.heavy("pkg.a") is None
    assert light_imports_in_functions(graph) == ["pkg/b.py:2 (inside a function): imports pkg.a"]
    assert graph.private == ("pkg/sub/e.py:1: imports the private name _secret from pkg.c",)


def test_the_cycles_are_found_and_named() -> None:
    found = sorted(describe(cycle) for cycle in cycles(build_graph(TOY).edges))
    assert found == [
        "pkg.a -> pkg.b [pkg/a.py:1] -> pkg.a [pkg/b.py:2 (inside a function)]",
        "pkg.c -> pkg.sub [pkg/c.py:1] -> pkg.c [pkg/sub/__init__.py:1]",
    ]


#: Which top-level packages each layer may import (docs/architecture.md): imports only go down.
LAYERS = {
    "decoding": {"decoding"},
    "adapters": {"adapters", "decoding"},
    "server": {"server", "adapters", "decoding"},
}


def upward_imports(graph: Graph) -> list[str]:
    return [
        f"{edge.where()}: {edge.source} imports {edge.target}"
        for edge in graph.edges
        if edge.source.split(".")[0] in LAYERS
        and edge.target.split(".")[0] not in LAYERS[edge.source.split(".")[0]]
    ]


def test_imports_only_go_down_the_layers() -> None:
    found = upward_imports(GRAPH)
    assert not found, "imports up the layers:\n" + "\n".join(found)


def test_an_upward_import_is_found() -> None:
    toy = {
        "decoding/__init__.py": "",
        "decoding/x.py": "from server import app\n",
        "server/__init__.py": "",
        "server/app.py": "from decoding import x\n",
    }
    assert upward_imports(build_graph(toy)) == [
        "decoding/x.py:1: decoding.x imports server",  # the package runs first
        "decoding/x.py:1: decoding.x imports server.app",
    ]
