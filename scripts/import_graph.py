"""Print agent/'s import graph (grimp; `if TYPE_CHECKING:` imports included) and its cycles.

Level "package": every module of a sub-package (agent.sinks.xds.*) is one node; a root-level module
(agent.model) is its own node. Level "module": every module is a node. Used to show the layering
before and after a redesign; tests/unit/test_layers.py holds the contracts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import grimp


def node_of(module: str, depth: int) -> str:
    parts = module.split(".")
    return ".".join(parts[:depth]) if len(parts) > depth else module


def edges(graph: grimp.ImportGraph, package: str, level: str) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if level == "module":
                a, b = importer, imported
            else:
                a, b = _package_node(importer, graph), _package_node(imported, graph)
            if a != b:
                out.add((a, b))
    return out


def _package_node(module: str, graph: grimp.ImportGraph) -> str:
    # The deepest package that is not the root: agent.sinks.xds.cache -> agent.sinks.xds,
    # agent.sinks.runner -> agent.sinks.runner (a module directly in agent.sinks stays itself).
    parts = module.split(".")
    if len(parts) <= 2:
        return module
    parent = ".".join(parts[:-1])
    return parent if parent.count(".") >= 1 and _is_leaf_package(parent, graph) else module


def _is_leaf_package(package: str, graph: grimp.ImportGraph) -> bool:
    # agent.sinks holds modules (runner, kubernetes) and packages (envoy, xds): keep its modules apart.
    return package != "agent.sinks"


def cycles(nodes: Iterable[str], es: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in es:
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in sorted(succ):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = sorted(succ[node])
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="agent")
    parser.add_argument("--level", choices=("package", "module"), default="package")
    args = parser.parse_args(argv)
    graph = grimp.build_graph(args.package, include_external_packages=False)
    es = edges(graph, args.package, args.level)
    nodes = sorted({n for e in es for n in e})
    print(f"# {args.level}-level import graph of {args.package} ({len(nodes)} nodes, {len(es)} edges)")
    for node in nodes:
        targets = sorted(b for a, b in es if a == node)
        if targets:
            print(f"{node} -> {', '.join(targets)}")
    found = cycles(nodes, es)
    print(f"\n# cycles ({len(found)} strongly connected components)")
    for component in found:
        print("  " + " <-> ".join(component))
    return 0


if __name__ == "__main__":
    sys.exit(main())
