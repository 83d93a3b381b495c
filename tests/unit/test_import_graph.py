"""No import cycles in `p2pay/` (issue 15).

Every module under ``p2pay/`` is parsed (``ast``, nothing is imported) and every import it
runs is an edge: at module level, inside functions (a lazy import still ties the two
modules together), anywhere except under ``if TYPE_CHECKING:`` (annotations only). An
import of a submodule is an edge to that submodule, not to its package: Python runs a
package's ``__init__`` before any of its submodules, so that order is never a cycle.
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``. The test fails on any cycle and prints it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import p2pay

ROOT = Path(p2pay.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement except those in the body of an ``if TYPE_CHECKING:``
    (its ``else:`` branch runs, so it counts)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the p2pay modules it imports at run time."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _runtime_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # `import p2pay.a.b` names the deepest module that exists
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each given
    as one cycle through it, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        # iterative Tarjan: (vertex, iterator over its successors)
        work: list[tuple[str, Iterator[str]]] = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            u, successors = work[-1]
            advanced = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[u] = min(low[u], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[u])
            if low[u] == index[u]:
                component: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == u:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_one_cycle(graph, c) for c in components)


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A cycle through the component's first module, e.g. [a, b, c, a]."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first back to start inside the component
        nxt: list[str] = []
        for u in frontier:
            for w in sorted(graph[u] & members):
                if w == start:
                    path = [u]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = u
                    nxt.append(w)
        frontier = nxt
    return component  # unreachable for a strongly connected component


def _render(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


def _in_sim(cycle: list[str]) -> bool:
    return any(m == "p2pay.sim" or m.startswith("p2pay.sim.") for m in cycle)


def test_the_graph_sees_the_modules_and_their_imports() -> None:
    graph = import_graph()
    assert "p2pay.node.facade" in graph and "p2pay.core.channel" in graph
    assert "p2pay.core.channel" in graph["p2pay.node.book"]
    assert "p2pay.node.watcher" in graph["p2pay.node.facade"]


def test_the_cycle_finder_finds_a_cycle_and_ignores_type_checking_imports() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import x\n"
        "if TYPE_CHECKING:\n"
        "    import y\n"
        "else:\n"
        "    import z\n"
        "def f():\n"
        "    import w\n"
    )
    names = [a.name for n in _runtime_imports(tree) for a in n.names]
    assert sorted(names) == ["TYPE_CHECKING", "w", "x", "z"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_p2pay_has_no_import_cycles() -> None:
    cycles = [c for c in find_cycles(import_graph()) if not _in_sim(c)]
    assert not cycles, "import cycles in p2pay/:\n" + _render(cycles)


def test_p2pay_sim_has_no_import_cycles() -> None:
    cycles = [c for c in find_cycles(import_graph()) if _in_sim(c)]
    assert not cycles, "import cycles in p2pay/sim/:\n" + _render(cycles)


def test_the_cli_imports_the_simulator_only_for_simulate() -> None:
    """Importing the simulator is about half of the CLI's start-up (p2pay/cli/main.py
    `_Main`): every command but `simulate` (and the help that lists it) starts without it."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from p2pay.cli.main import cli\n"
        "assert not [m for m in sys.modules if m.startswith('p2pay.sim')], 'loaded early'\n"
        "import click\n"
        "ctx = click.Context(cli)\n"
        "assert 'simulate' in cli.list_commands(ctx)\n"
        "assert cli.get_command(ctx, 'simulate').name == 'simulate'\n"
        "assert 'p2pay.sim.cli' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
