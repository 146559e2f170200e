"""Imports point one way: pipeline order, no cycles (module level, lazy imports inside functions included).

Read from the source with `ast`, so an import inside a function counts like one at the top (the lazy imports
that keep `import slimdeploy` light are still dependencies). `if TYPE_CHECKING:` blocks are typing only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "slimdeploy"

# Lowest first. A module may import its own layer or lower ones. The zoo's model sources (where the demo
# and zoo models come from) sit with load/; the tools that build the demo model sit with the CLI on top.
LAYERS = [
    ["slimdeploy", "slimdeploy.errors", "slimdeploy.utils"],  # the root holds __version__ only
    ["slimdeploy.analyze"],
    ["slimdeploy.load", "slimdeploy.zoo.registry", "slimdeploy.zoo.shapes", "slimdeploy.zoo.corpus"],
    ["slimdeploy.evaluate"],
    ["slimdeploy.score"],
    ["slimdeploy.prune"],
    ["slimdeploy.recover"],
    ["slimdeploy.merge"],
    ["slimdeploy.quantize"],
    ["slimdeploy.export"],
    ["slimdeploy.serve"],
    ["slimdeploy.recipe"],
    ["slimdeploy.pipeline"],
    ["slimdeploy.zoo", "slimdeploy.cli", "slimdeploy.__main__"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = f
    return out


def _resolve(name: str, mods) -> str | None:
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slimdeploy"):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("slimdeploy")]
            for n in names:
                target = _resolve(n, mods)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    assert level is not None, f"{module} is in no layer: add it to LAYERS"
    return level


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_imports_point_down_the_pipeline():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    upward = upward_imports(graph)
    assert not upward, "imports against the pipeline order:\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_a_planted_upward_import_and_cycle():
    """The checks must notice what they are meant to refuse (a test that cannot fail is no test)."""
    graph = import_graph()
    assert "slimdeploy.load.gguf" in graph["slimdeploy.zoo.registry"]  # lazy imports inside functions count
    graph["slimdeploy.load.model"].add("slimdeploy.prune.api")
    assert upward_imports(graph) == ["slimdeploy.load.model -> slimdeploy.prune.api"]
    graph["slimdeploy.prune.api"].add("slimdeploy.load.model")
    assert any("slimdeploy.prune.api -> slimdeploy.load.model" in c for c in find_cycles(graph))
