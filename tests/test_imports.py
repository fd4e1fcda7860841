"""The packages' import graphs have no cycle (issue 15): configuration sits below the commands,
helpers below the modules that use them. Every import counts, also those inside functions
(deferred for start-up time), since a cycle through one still ties the modules together."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports (`a.b` for a.b's file, `a` for __init__)."""
    base = ROOT / package
    names = {".".join((package, *p.relative_to(base).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in base.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = here.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(filter(None, (parent, node.module)))
                # `from . import reference` imports the module kernels.reference, not kernels' names
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in names else module for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in names}
        graph[name] = found - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_and_deferred_imports():
    graph = import_graph("alexnet")
    assert "alexnet.trainer" in graph["alexnet.train"]  # deferred: inside main()
    assert {"alexnet.session", "alexnet.recipe"} <= graph["alexnet.trainer"]


@pytest.mark.parametrize("package", ["alexnet", "kernels"])
def test_no_import_cycle(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
