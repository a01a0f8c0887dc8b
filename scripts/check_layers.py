"""Hold the layering of docs/ARCHITECTURE.md: no import circles between modules, and no import a
package's layer forbids, naming the file and line of each offending import.

Every import statement counts, wherever it stands: at the top, inside a function (the usual way a
circle is hidden), under `if TYPE_CHECKING:`, or relative (`from .x import y`). An import of
`a.b.c` is an edge to the module `a.b.c` alone: Python runs the packages `a` and `a.b` first, but a
package's `__init__` importing its own submodules is how packages re-export, not a circle. Imports
by string (`importlib.import_module`) are not seen.

`make lint` runs this file and tests/test_layers.py runs it in the suite (so CI does too).
Standard library only, like scripts/check_lock.py.

    python scripts/check_layers.py        # exit status 1 and one paragraph per problem
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROJECT = ("app", "generators", "filters", "training")
# What each top-level folder may import besides itself (docs/ARCHITECTURE.md, "Packages and their
# layering"). The libraries import neither `app` nor each other; `app` joins them; migrations
# read the models; testbed (the scripted model server, the API in a child process, a throwaway
# PostgreSQL, a load driver, a corpus) serves tests and benchmarks alike, which import it and
# never each other. Maintainers' scripts sit on top (scripts/gpu_job.py builds the bundled
# model's shape from bench/finetune.py); tests may import a script (scripts/check_lock.py).
ALLOWED: dict[str, frozenset[str]] = {
    "app": frozenset({"generators", "filters", "training"}),
    "generators": frozenset(),
    "filters": frozenset(),
    "training": frozenset(),
    "migrations": frozenset({"app"}),
    "testbed": frozenset(PROJECT),
    "bench": frozenset({*PROJECT, "testbed"}),
    "scripts": frozenset({*PROJECT, "testbed", "bench"}),
    "tests": frozenset({*PROJECT, "testbed", "scripts"}),
}
# Single modules one library may take from another: DESIGN allows "a shared tokenizer helper if
# truly needed", and training's evaluation scores ROUGE-L with the novelty filter's own
# tokenizer rather than a second copy of the rule.
SHARED: dict[str, frozenset[str]] = {
    "training": frozenset({"filters.rouge", "filters.tokenize"}),
}


@dataclass(frozen=True)
class Edge:
    """One import statement of `source` that names `target` (both module names)."""

    source: str
    target: str
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def modules(root: Path, folders: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """Every module under `folders`: its dotted name, its file, whether it is a package."""
    found: dict[str, tuple[Path, bool]] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join(parts)] = (path, is_package)
    return found


def _known(name: str, known: dict[str, tuple[Path, bool]]) -> str | None:
    """The longest prefix of `name` that is one of our modules (None: a third-party module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def edges(root: Path, folders: Iterable[str]) -> list[Edge]:
    """Every import between our modules, each statement once per module it names."""
    known = modules(root, folders)
    found: list[Edge] = []
    for name, (path, is_package) in known.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # every statement, at any depth: functions included
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package, up level - 1 packages
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    origin = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                # `from a import b` names the module a.b when there is one, else a's attribute
                targets = [
                    f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                    for alias in node.names
                ]
            else:
                continue
            for target in dict.fromkeys(targets):
                resolved = _known(target, known)
                if resolved is not None and resolved != name:
                    found.append(Edge(name, resolved, path, node.lineno))
    return found


def forbidden(found: Iterable[Edge], root: Path = ROOT) -> list[str]:
    """A sentence for every import that crosses the layering the wrong way."""
    problems = []
    for edge in found:
        source, target = edge.source.split(".")[0], edge.target.split(".")[0]
        allowed = ALLOWED.get(source, frozenset())
        if source == target or target in allowed:
            continue
        if any(edge.target == m or edge.target.startswith(m + ".") for m in SHARED.get(source, ())):
            continue
        may = ", ".join(sorted({source, *allowed, *SHARED.get(source, ())}))
        problems.append(
            f"{edge.where(root)}: {edge.source} imports {edge.target}, but {source}/ may import "
            f"only {may} (docs/ARCHITECTURE.md). Move what both need below both, or into the "
            "package that may be imported."
        )
    return sorted(problems)


def cycles(found: Iterable[Edge], root: Path = ROOT) -> list[str]:
    """A paragraph for every set of modules that import each other, round and round: one circle
    through them, each step with the file and line of its import."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in found:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
    problems = []
    for component in _strongly_connected(graph):
        start = min(component)
        path = _circle(graph, start, component)
        steps = "\n".join(
            f"    {e.source} -> {e.target}  ({e.where(root)})"
            for e in (graph[a][b] for a, b in pairwise(path))
        )
        others = sorted(component - set(path))
        also = f"\n  (in the same knot: {', '.join(others)})" if others else ""
        problems.append(
            f"import circle through {len(component)} modules:\n{steps}{also}\n"
            "  Give what they share a home of its own below them; an import moved into a "
            "function is still an import."
        )
    return problems


def _strongly_connected(graph: dict[str, dict[str, Edge]]) -> list[set[str]]:
    """Tarjan's components of more than one module, without recursion (deep graphs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root_node in sorted(graph):
        if root_node in index:
            continue
        work = [(root_node, iter(sorted(graph.get(root_node, {}))))]
        index[root_node] = low[root_node] = len(index)
        stack.append(root_node)
        on_stack.add(root_node)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def _circle(graph: dict[str, dict[str, Edge]], start: str, within: set[str]) -> list[str]:
    """The shortest way from `start` back to itself inside one component, as a list of modules."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, {})):
            if child not in within:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a component but on no circle")


def check(root: Path = ROOT, folders: Iterable[str] = tuple(ALLOWED)) -> list[str]:
    """Every problem of the tree at `root`: forbidden imports first, then circles."""
    present = [f for f in folders if (root / f).is_dir()]
    found = edges(root, present)
    return forbidden(found, root) + cycles(found, root)


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
