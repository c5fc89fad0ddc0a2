"""negforge's modules import each other without a loop, at module level or inside functions: a loop hidden by a
function-level import still ties the modules together (what one changes, the other must know). The domain packages
are layered the same way, and each tasks/<domain>/__init__.py says truly which domains it imports."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = {"negforge.flows": ROOT / "flows", "negforge.tasks": ROOT / "tasks", "negforge.schemas": ROOT / "schemas"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The negforge modules `path` imports anywhere in it (`from a.b import c` counts a.b.c when it is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state and (loop := visit(other)):
                return loop
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def _domain(module: str, modules: dict[str, Path]) -> str:
    """The node of `module` in the domain graph: its package under flows/ or tasks/ (negforge.tasks.mining,
    negforge.flows.stages), else negforge.flows (flows' own modules) or negforge.schemas whole."""
    package = ".".join(module.split(".")[:3])
    return package if modules.get(package, Path()).name == "__init__.py" else ".".join(module.split(".")[:2])


def _domain_graph() -> dict[str, set[str]]:
    """Which domains each domain's modules import, itself left out."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph.setdefault(_domain(name, modules), set()).update(_domain(other, modules)
                                                               for other in _imports(path, modules))
    return {domain: imported - {domain} for domain, imported in graph.items()}


def _may_import(init: Path) -> set[str]:
    """The domains a package's docstring allows, from its closing "May import: schemas, tasks.gate." line
    ("May import: nothing ..." for none)."""
    allowed = ast.get_docstring(ast.parse(init.read_text())).split("May import:")[1]
    return set() if allowed.split()[0] == "nothing" else {name.strip().removesuffix(".") for name in allowed.split(",")}


def test_no_import_loops():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ imports nothing; importing a module through its package is not a loop
    for name in graph:
        graph[name] = {other for other in graph[name] if not name.startswith(other + ".")}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_domain_packages_are_layered():
    """No loop between packages either: a domain that imports another must not be imported back by it, through any
    other, or the two cannot be understood, tested or changed apart."""
    graph = _domain_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_each_domain_says_exactly_which_domains_it_imports():
    """Each package's __init__.py under tasks/ and flows/ ("May import:") names exactly the domains its modules
    import: a missing one is an import nobody allowed, and an extra one (a superset) would let the line drift from
    the code unnoticed."""
    graph = _domain_graph()
    drifted = {}
    for init in sorted([*(ROOT / "tasks").glob("*/__init__.py"), *(ROOT / "flows").glob("*/__init__.py")]):
        package = f"{init.parent.parent.name}.{init.parent.name}"
        said = _may_import(init)
        done = {domain.removeprefix("negforge.") for domain in graph[f"negforge.{package}"]}
        if said != done:
            drifted[package] = f"says {sorted(said)}, imports {sorted(done)}"
    assert not drifted, drifted


def test_the_loop_finder_finds_loops():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
