"""The package's import graph: stages import only downward, and no module imports itself back.

Every `import`/`from ... import` of `utkface` modules is read from the source (the ones inside
functions too: a lazy import is still a dependency), so the check needs no extra installed.
"""

import ast
from pathlib import Path

import utkface

PACKAGE = Path(utkface.__file__).parent
# lowest first: a module may import its own stage and the stages before it
STAGES = ("runtime", "data", "models", "evaluation", "training", "apps")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports (a name imported from a package counts as
    the submodule when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "utkface":
                found.add(name)
    found.discard(module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def stage(module: str) -> int:
    """The stage's rank; the package itself and `__main__` sit above every stage."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else len(STAGES)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_belongs_to_a_stage():
    loose = [m for m in graph() if m.count(".") == 1 and m.split(".")[1] not in STAGES]
    assert sorted(loose) == ["utkface.__main__"]


def test_no_module_imports_itself_back():
    assert cycles(graph()) == []


def test_imports_only_go_down_the_stages():
    upward = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if stage(target) > stage(module)
    ]
    assert upward == []
