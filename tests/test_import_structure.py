"""The import graph of vlp_jax/ has no cycles, and the config is a leaf.

Read from the source with `ast` (nothing is imported, so no JAX start-up): every import of a
vlp_jax module anywhere in a file counts, module level or inside a function, a method or an
`if TYPE_CHECKING:` block. A deferred import hides a circle from Python, not from a reader.

An import names the module it loads: `import vlp_jax.a.b` and `from vlp_jax.a import b` (b a
module) are edges to vlp_jax.a.b; `from vlp_jax.a import name` (not a module) is an edge to
vlp_jax.a. Relative imports resolve against the importing module's package. The packages that
Python runs on the way (vlp_jax/__init__.py, vlp_jax/a/__init__.py) are not edges: every
package-and-submodule pair would otherwise look like a cycle.
"""

from __future__ import annotations

import ast
import os
from collections import deque
from collections.abc import Iterable, Mapping

import pytest
from conftest import REPO

PACKAGE = 'vlp_jax'
CONFIG = f'{PACKAGE}.config'

Graph = Mapping[str, Iterable[str]]


def module_files(root: str, package: str) -> dict[str, str]:
    """{dotted module name: file path} of every .py file under root/package."""
    modules = {}
    for directory, subdirectories, files in os.walk(os.path.join(root, package)):
        subdirectories[:] = sorted(d for d in subdirectories if d != '__pycache__')
        for name in sorted(files):
            if not name.endswith('.py'):
                continue
            parts = os.path.relpath(os.path.join(directory, name), root)[: -len('.py')].split(os.sep)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            modules['.'.join(parts)] = os.path.join(directory, name)
    return modules


def _resolve(name: str, modules: Mapping[str, str]) -> str | None:
    """The module `name` loads: itself, or the nearest enclosing module (for names inside a module)."""
    while name and name not in modules:
        name = name.rpartition('.')[0]
    return name or None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module named by `from X import ...` in `module` (relative levels resolved)."""
    if not node.level:
        return node.module or ''
    base = module.split('.') if is_package else module.split('.')[:-1]
    base = base[: len(base) - (node.level - 1)]
    return '.'.join([*base, node.module] if node.module else base)


def imports_of(module: str, path: str, modules: Mapping[str, str], package: str) -> dict[str, int]:
    """{imported module of `package`: first line} for every import anywhere in the file."""
    with open(path, encoding='utf-8') as handle:
        tree = ast.parse(handle.read(), path)
    is_package = os.path.basename(path) == '__init__.py'
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        if name == package or name.startswith(package + '.'):
            target = _resolve(name, modules)
            if target is not None:
                found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            for alias in node.names:
                submodule = f'{source}.{alias.name}'
                add(submodule if submodule in modules else source, node.lineno)
    return found


def import_graph(root: str, package: str) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """({module: {imported module: line}}, {module: file}) of the package under root."""
    modules = module_files(root, package)
    return {module: imports_of(module, path, modules, package) for module, path in modules.items()}, modules


def strongly_connected_components(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm (iterative): every strongly connected component, members sorted."""
    nodes = sorted(set(graph) | {target for targets in graph.values() for target in targets})
    successors = {node: sorted(graph.get(node, ())) for node in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(successors[root]))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(successors[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(components)


def _shortest_cycle_through(start: str, graph: Graph, allowed: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside `allowed` (breadth first, ties by name)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child not in allowed:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]  # [start, start] for a self-loop
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f'{start} is on no cycle')


def find_cycles(graph: Graph) -> list[tuple[list[str], list[list[str]]]]:
    """[(members, cycles)] per import cycle: a strongly connected component of more than one module,
    or a module that imports itself. `cycles` are closed paths (first == last) that together pass
    through every member: the shortest cycle through each member that no earlier path visits."""
    found = []
    for component in strongly_connected_components(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in set(graph.get(component[0], ())):
            continue
        cycles, covered = [], set()
        for member in component:
            if member not in covered:
                cycle = _shortest_cycle_through(member, graph, members)
                cycles.append(cycle)
                covered.update(cycle)
        found.append((component, cycles))
    return found


def describe(cycles: list[tuple[list[str], list[list[str]]]], graph: Mapping[str, Mapping[str, int]], files) -> str:
    """One paragraph per cycle: its modules, then each closed path with the file:line of every import."""
    lines = []
    for members, paths in cycles:
        lines.append(f'cycle of {len(members)} module(s): {", ".join(members)}')
        for path in paths:
            hops = [f'{a} ({os.path.relpath(files[a], REPO)}:{graph[a][b]})' for a, b in zip(path, path[1:])]
            lines.append('  ' + ' -> '.join([*hops, path[-1]]))
    return '\n'.join(lines)


# --- the cycle finder on graphs small enough to check by hand ---


@pytest.mark.parametrize(
    'graph, expected',
    [
        ({}, []),
        ({'a': ['b', 'c'], 'b': ['c'], 'c': []}, []),  # a diamond is no cycle
        ({'a': ['b'], 'b': ['a'], 'c': ['a']}, [(['a', 'b'], [['a', 'b', 'a']])]),  # c only leads into it
        ({'a': ['a'], 'b': ['a']}, [(['a'], [['a', 'a']])]),  # a self-loop
        (
            {'a': ['b'], 'b': ['c'], 'c': ['a', 'd'], 'd': ['e'], 'e': ['d', 'f']},  # two cycles, one bridge
            [(['a', 'b', 'c'], [['a', 'b', 'c', 'a']]), (['d', 'e'], [['d', 'e', 'd']])],
        ),
        (
            {'a': ['b', 'c'], 'b': ['a'], 'c': ['a']},  # a figure eight: one component, two paths
            [(['a', 'b', 'c'], [['a', 'b', 'a'], ['c', 'a', 'c']])],
        ),
        (
            {'x': ['y'], 'y': ['z'], 'z': ['x', 'y']},  # the shortest cycle through x, then z's own
            [(['x', 'y', 'z'], [['x', 'y', 'z', 'x']])],
        ),
        ({'p': ['q'], 'q': ['r']}, []),  # r has no entry of its own
    ],
)
def test_find_cycles_on_small_graphs(graph, expected):
    assert find_cycles(graph) == expected


def test_strongly_connected_components_partition_the_nodes():
    graph = {'a': ['b'], 'b': ['c', 'e'], 'c': ['a', 'd'], 'd': [], 'e': ['f'], 'f': ['e'], 'g': ['g']}
    assert strongly_connected_components(graph) == [['a', 'b', 'c'], ['d'], ['e', 'f'], ['g']]
    long_chain = {str(i): [str(i + 1)] for i in range(5000)}  # iterative: no recursion limit
    long_chain['5000'] = ['0']
    assert [len(c) for c in strongly_connected_components(long_chain)] == [5001]


def test_import_collection_on_a_small_package(tmp_path):
    files = {
        'pkg/__init__.py': 'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import thing\n',
        'pkg/a.py': 'import os\nimport pkg.sub.c\n\ndef f():\n    from pkg import b\n',
        'pkg/b.py': 'class K:\n    def m(self):\n        from pkg.sub import c, VALUE\n',
        'pkg/sub/__init__.py': 'VALUE = 1\n',
        'pkg/sub/c.py': 'from . import d\nfrom .. import a\nfrom ..b import K\nimport numpy\n',
        'pkg/sub/d.py': 'import pkgother\nfrom pkg.missing import x\n',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph, modules = import_graph(str(tmp_path), 'pkg')
    assert set(modules) == {'pkg', 'pkg.a', 'pkg.b', 'pkg.sub', 'pkg.sub.c', 'pkg.sub.d'}
    edges = {module: sorted(targets) for module, targets in graph.items()}
    assert edges == {
        'pkg': ['pkg.a'],  # under TYPE_CHECKING; `thing` is a name in pkg.a
        'pkg.a': ['pkg.b', 'pkg.sub.c'],  # `from pkg import b` in a function: b is a module
        'pkg.b': ['pkg.sub', 'pkg.sub.c'],  # in a method: c a module, VALUE a name of pkg.sub
        'pkg.sub': [],
        'pkg.sub.c': ['pkg.a', 'pkg.b', 'pkg.sub.d'],  # relative imports
        'pkg.sub.d': ['pkg'],  # pkg.missing is no module: the nearest enclosing one; pkgother is not pkg
    }
    assert graph['pkg.a']['pkg.b'] == 5 and graph['pkg.sub.c']['pkg.b'] == 3  # first line of each import
    assert find_cycles(graph) == [
        (
            ['pkg', 'pkg.a', 'pkg.b', 'pkg.sub.c', 'pkg.sub.d'],
            [['pkg', 'pkg.a', 'pkg.sub.c', 'pkg.sub.d', 'pkg'], ['pkg.b', 'pkg.sub.c', 'pkg.b']],  # pkg.sub is outside
        )
    ]


# --- vlp_jax itself ---


def test_vlp_jax_has_no_import_cycles():
    graph, files = import_graph(REPO, PACKAGE)
    assert len(files) > 20 and CONFIG in files, sorted(files)  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, f'{len(cycles)} import cycle(s) in {PACKAGE}/:\n' + describe(cycles, graph, files)


def test_the_config_imports_nothing_else_of_vlp_jax():
    """vlp_jax/config.py, or every module of a vlp_jax/config/ package, imports only the config itself."""
    graph, files = import_graph(REPO, PACKAGE)
    config_modules = [m for m in files if m == CONFIG or m.startswith(CONFIG + '.')]
    assert config_modules, f'no {CONFIG} module or package in {PACKAGE}/'
    outside = [
        f'{os.path.relpath(files[module], REPO)}:{line} imports {target}'
        for module in sorted(config_modules)
        for target, line in sorted(graph[module].items(), key=lambda item: item[1])
        if not (target == CONFIG or target.startswith(CONFIG + '.'))
    ]
    assert not outside, f'{CONFIG} must be a leaf of the import graph:\n' + '\n'.join(outside)
