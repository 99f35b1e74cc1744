"""The import graph has floors: a module imports only from its own floor or below, and no
module imports itself back through others (read with `ast`, nothing is imported).

    seqtrain.common, seqtrain.version    errors, atomic writes, storage, CLI parsing (torch-free)
    seqtrain.config                      the typed configs
    seqtrain.data                        shard format, stream, staging, sample positions
    seqtrain.models                      networks, their state dicts, FLOP counts
    seqtrain.components, .distributed    the run's parts, and the one place ranks are known
    seqtrain.*                           the commands: train (the loop), step, evaluate, ...
    data_gen                             stands on seqtrain.common and seqtrain.data.format only
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import REPO

FLOORS = [
    ("seqtrain.common", "seqtrain.version"),
    ("seqtrain.config",),
    ("seqtrain.data",),
    ("seqtrain.models",),
    ("seqtrain.components", "seqtrain.distributed"),
    ("seqtrain",),
]
DATA_GEN_MAY_IMPORT = ("seqtrain.common", "seqtrain.version", "seqtrain.data.format")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The repo's modules `path` imports anywhere in its body (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports a module; `from mod import name` a name of mod
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in known}
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted((REPO / "seqtrain").rglob("*.py")) + sorted((REPO / "data_gen").rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def floor(module: str) -> int:
    for level, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} is on no floor")


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


GRAPH = import_graph()


def test_graph_is_read() -> None:
    assert "seqtrain.train" in GRAPH
    assert "seqtrain.components.checkpoint" in GRAPH["seqtrain.train"]
    assert "seqtrain.common.errors" in GRAPH["data_gen.config"]


def test_no_import_from_a_higher_floor() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.startswith("seqtrain")
        for target in targets
        if target.startswith("data_gen") or floor(target) > floor(module)
    ]
    assert upward == []


def test_data_gen_stands_on_the_common_floor() -> None:
    reaching = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.startswith("data_gen")
        for target in targets
        if target.startswith("seqtrain") and not within(target, DATA_GEN_MAY_IMPORT)
    ]
    assert reaching == []


def cycle_through(start: str) -> list[str] | None:
    """A path start -> ... -> start through the graph, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for target in GRAPH[module]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_circle(module: str) -> None:
    assert cycle_through(module) is None
