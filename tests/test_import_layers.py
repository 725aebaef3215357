"""The package's layers run one way: its import graph has no circle, and the bottom modules import nothing above
them (issue 27).

The graph is read from the source with `ast`: every `import` and `from ... import` of a canary_lib module, at
the top of a file or deferred inside a function, under `if TYPE_CHECKING:` too (a circle of type hints is still
a circle a reader has to untangle); relative imports resolved. `from pkg import name` is an edge to `pkg` and,
when `name` is a submodule, to `pkg.name`; `import a.b` is an edge to `a.b` (the parent package's __init__,
which Python also runs, is not counted: a package's __init__ is its facade, not a layer). Standard library only.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "canary_lib"

BOTTOM = {
    "canary_lib.controller": set(),
    "canary_lib.artifacts": {"canary_lib.errors", "canary_lib.fileio"},
    "canary_lib.fileio": set(),
    "canary_lib.names": set(),
    "canary_lib.errors": set(),
}
"""Bottom modules and the only canary_lib modules each may import (the controller's equations take plain numbers,
the run-directory contract plain paths; config.yaml is read and written by canary_lib.config_loader)."""


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package` (a package's __init__ is the package)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = own_package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm (iterative): the groups of modules that reach each other, of two or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def one_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A concrete circle through the group's first module, as a path that returns to where it started."""
    start = min(group)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first: the shortest way back to start
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no circle through {start} in {sorted(group)}")


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for child in graph[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_the_package_import_graph_has_no_circle(graph):
    circles = strongly_connected(graph)
    assert not circles, "import circles: " + "; ".join(
        f"{' -> '.join(one_cycle(graph, g))} (all of {sorted(g)})" for g in circles
    )


def test_bottom_modules_import_nothing_above_them(graph):
    for module, allowed in BOTTOM.items():
        assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"


def test_the_schema_imports_neither_the_registry_nor_the_world(graph):
    """The schema sits below the method registry (the loader hands METHODS in as pydantic's validation context) and
    below the organism (whose names it reads from canary_lib/names.py); the loader sits above the registry."""
    above = {
        m
        for m in reachable(graph, "canary_lib.config_schema")
        if m in ("canary_lib.methods", "canary_lib.controller") or m.startswith("canary_lib.organism")
    }
    assert not above, f"canary_lib.config_schema reaches {sorted(above)}"
    assert {"canary_lib.methods", "canary_lib.judge"} <= graph["canary_lib.config_loader"]


def test_loading_a_configuration_imports_neither_the_world_nor_torch():
    """The loader imports the registries; they reach the organism and torch only inside the functions that build a
    judge or a schedule, so validating a configuration loads neither (and the CPU numerics can still be pinned)."""
    code = (
        "import sys; from canary_lib.config import load_config; load_config(['parameters/organism.yaml']); "
        "print(sorted(m for m in sys.modules if m.startswith('canary_lib.organism') or m in ('torch', 'transformers')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_graph_sees_deferred_relative_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import x\n")
    (pkg / "c.py").write_text("from . import a\nimport os\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg", "pkg.a"}
    groups = strongly_connected(graph)
    assert groups == [{"pkg.a", "pkg.sub.b", "pkg.c"}]
    assert one_cycle(graph, groups[0]) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import os\n")
    assert strongly_connected(import_graph(pkg)) == []


def test_the_names_config_checks_agree_with_the_world():
    from canary_lib import names
    from canary_lib.organism.topics import GENERAL_TOPICS, NARROW_TOPICS

    assert names.NARROW_DOMAINS == tuple(NARROW_TOPICS)
    assert names.GENERAL_TOPIC_NAMES == tuple(t.name for t in GENERAL_TOPICS)


_ENV_PROBE = """
import os, sys
from canary_lib.config import config_from_dict, load_config, merge_sources
merged, origin = merge_sources(["parameters/organism.yaml"], ["model.cpu_numerics=pinned"])
config_from_dict(merged, origin)
print(os.environ.get("MKL_CBWR"))
load_config(["parameters/organism.yaml"], ["model.cpu_numerics=pinned"])
print(os.environ.get("MKL_CBWR"), "torch" in sys.modules)
"""


def test_config_from_dict_leaves_the_environment_and_load_config_pins(tmp_path):
    """Validating a pinned configuration changes nothing in the process; loading it (load_config, the `canary`
    command, read_run_config) pins the CPU numerics before torch starts, as before."""
    from canary_lib.numerics import NATIVE_ENV, PINNED_ENV

    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and k != NATIVE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", _ENV_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", PINNED_ENV["MKL_CBWR"], "False"]
