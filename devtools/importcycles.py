"""`python -m devtools.importcycles` (run by `make lint`): fail on any import cycle among the
project's packages.

The graph is read from the source with `ast`, nothing is imported: every `import` statement
counts, at module level or inside a function or an `if TYPE_CHECKING:` block, because a cycle
that only a deferred import keeps from breaking at start-up is still two modules that each need
the other. An import names the deepest project module it reaches (`from export import cli` is
export.cli, `from export.cli import main` is export.cli); the parent packages it also runs are
not counted, so a package's `__init__` may import its own submodules.

Exit codes: 0 no cycle; 1 a cycle (each printed as a path a -> b -> ... -> a).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Top-level packages not checked by default: the tests import what they test in every
# direction a fixture needs; the production packages, bench/ and devtools/ are checked.
SKIPPED_PACKAGES = frozenset({"tests"})
# Cycles tolerated for now, each with the reason: {frozenset(the modules of one strongly
# connected group): reason}. None today.
ALLOWED: Mapping[frozenset[str], str] = {}

Graph = dict[str, set[str]]


def find_packages(root: Path) -> list[str]:
    """Top-level packages under `root` (directories with an __init__.py), minus SKIPPED_PACKAGES."""
    return sorted(
        path.parent.name
        for path in root.glob("*/__init__.py")
        if path.parent.name not in SKIPPED_PACKAGES and not path.parent.name.startswith(".")
    )


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def build_graph(modules: Mapping[str, Path]) -> Graph:
    """Module -> the project modules its import statements reach (itself excluded)."""
    graph: Graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = {
            resolved
            for imported in imported_names(path, name, is_package)
            if (resolved := _deepest_module(imported, modules)) is not None
        }
        graph[name] = targets - {name}
    return graph


def imported_names(path: Path, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement of the file names (relative ones made absolute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_base(node, module, is_package)
            # `from a import b`: b is a submodule or a name in a; the deepest match decides.
            yield from (f"{base}.{alias.name}" if base else alias.name for alias in node.names)


def _absolute_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def _deepest_module(dotted: str, modules: Mapping[str, Path]) -> str | None:
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def find_cycles(graph: Graph, allowed: Iterable[frozenset[str]] = ()) -> list[list[str]]:
    """One cycle (a path ending where it starts) per strongly connected group of modules,
    except the groups `allowed` names."""
    skip = set(allowed)
    return [
        _cycle_in(sorted(group), graph)
        for group in _strong_components(graph)
        if frozenset(group) not in skip
    ]


def _strong_components(graph: Graph) -> list[set[str]]:
    """Tarjan's algorithm, iterative; only the groups of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
    return sorted(groups, key=sorted)


def _cycle_in(group: Sequence[str], graph: Graph) -> list[str]:
    """The shortest path from the group's first module back to itself, within the group."""
    start = group[0]
    members = set(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in its strongly connected group")


def check(root: Path, packages: Sequence[str] | None = None) -> tuple[list[list[str]], int]:
    """Cycles not in ALLOWED, and how many modules were read."""
    modules = module_files(root, packages if packages is not None else find_packages(root))
    return find_cycles(build_graph(modules), ALLOWED), len(modules)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.importcycles", description=__doc__)
    parser.add_argument("packages", nargs="*", help="top-level packages (default: all but tests)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project directory")
    args = parser.parse_args(argv)
    packages = args.packages or find_packages(args.root)
    cycles, count = check(args.root, packages)
    for cycle in cycles:
        print("import cycle: " + " -> ".join(cycle), file=sys.stderr)
    for group, reason in ALLOWED.items():
        print(f"import cycle allowed ({reason}): {', '.join(sorted(group))}")
    if cycles:
        return 1
    print(f"import cycles: none among {count} modules ({', '.join(packages)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
