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
    assert "alexnet.training.loop" in graph["alexnet.train"]  # deferred: inside main()
    assert {"alexnet.training.session", "alexnet.training.recipe"} <= graph["alexnet.training.loop"]


@pytest.mark.parametrize("package", ["alexnet", "kernels"])
def test_no_import_cycle(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


# alexnet/ in layers, each importing only its own layer and those below it: the commands
# (alexnet/*.py, thin argparse modules) -> training -> data -> network -> base. The package's
# __init__ maps the network's two names.
LAYERS = ("commands", "training", "data", "network", "base")


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "alexnet":
        return "commands"
    return parts[1] if len(parts) > 2 else "commands"


def test_every_alexnet_module_has_a_layer():
    for module in import_graph("alexnet"):
        assert layer(module) in LAYERS, f"{module}: not in a layer of {LAYERS} (alexnet/<layer>/<module>.py)"


def test_alexnet_imports_only_downward():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, targets in import_graph("alexnet").items()
             for t in targets if t != "alexnet" and rank[layer(t)] < rank[layer(m)]]
    assert wrong == [], "upward imports:\n" + "\n".join(wrong)


def test_the_layer_check_sees_an_upward_import():
    assert layer("alexnet.network.model") == "network" and layer("alexnet.train") == "commands"
    assert layer("alexnet.training.loop") == "training" and layer("alexnet") == "commands"


def kernel_imports(path: Path) -> set[str]:
    """The kernels modules a file imports (`kernels` for the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "kernels"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "kernels":
            found.add(node.module)
    return found


def test_alexnet_reaches_kernels_through_its_public_surface():
    """alexnet/ imports `kernels` (the names kernels/__init__.py lists) and `kernels.reference`
    (the same ops in plain PyTorch), nothing inside the package."""
    import kernels

    wrong = {f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / "alexnet").rglob("*.py")
             for m in kernel_imports(p) if m not in ("kernels", "kernels.reference")}
    assert not wrong, f"alexnet/ imports kernels' internals: {sorted(wrong)}"
    for p in (ROOT / "alexnet").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "kernels":
                missing = [a.name for a in node.names if a.name not in kernels.__all__]
                assert not missing, f"{p.relative_to(ROOT)} imports {missing}, not in kernels.__all__"
