"""The dependency graph of a checked program: one node per assignment.

Because every assignment is its own node, reassigning a variable is exact: a
reference depends on the latest assignment before it, never on a later one.
Inputs (``IMAGE``, ``LEFT``, ...) are sources outside the nodes.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Edge", "Graph", "Node"]


@dataclass(frozen=True)
class Node:
    index: int
    target: str
    module: str
    line: int
    source: str


@dataclass(frozen=True)
class Edge:
    """``var`` flows from step ``src`` (or the input named ``src``) into step ``dst``."""

    src: int | str
    dst: int
    var: str


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def predecessors(self, index: int) -> set[int]:
        return {e.src for e in self.edges if e.dst == index and isinstance(e.src, int)}

    def successors(self, index: int) -> set[int]:
        return {e.dst for e in self.edges if e.src == index}

    @property
    def inputs(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.edges:
            if isinstance(e.src, str):
                seen.setdefault(e.src)
        return list(seen)

    def sorter(self) -> graphlib.TopologicalSorter[int]:
        """A prepared sorter whose ready sets are the steps that can run together."""
        ts: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
        for n in self.nodes:
            ts.add(n.index, *sorted(self.predecessors(n.index)))
        ts.prepare()
        return ts

    def levels(self) -> list[list[int]]:
        """Steps grouped by the round in which they become ready, each in line order."""
        ts, out = self.sorter(), []
        while ts.is_active():
            ready = sorted(ts.get_ready())
            out.append(ready)
            ts.done(*ready)
        return out

    def to_mermaid(self) -> str:
        lines = ["flowchart TD"]
        for name in self.inputs:
            lines.append(f'    in_{name}[/"{_mermaid(name)}"/]')
        for n in self.nodes:
            lines.append(f'    s{n.index}["{_mermaid(f"{n.target} = {n.module}")}<br/>line {n.line}"]')
        for e in self.edges:
            src = f"in_{e.src}" if isinstance(e.src, str) else f"s{e.src}"
            lines.append(f"    {src} -->|{_mermaid(e.var)}| s{e.dst}")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        lines = ["digraph program {", "    rankdir=TB;", "    node [shape=box, fontname=Helvetica];"]
        for name in self.inputs:
            lines.append(f'    "in_{name}" [label={_dot(name)}, shape=parallelogram];')
        for n in self.nodes:
            label = _dot(f"{n.target} = {n.module}\\nline {n.line}")
            lines.append(f'    "s{n.index}" [label={label}];')
        for e in self.edges:
            src = f"in_{e.src}" if isinstance(e.src, str) else f"s{e.src}"
            lines.append(f'    "{src}" -> "s{e.dst}" [label={_dot(e.var)}];')
        lines.append("}")
        return "\n".join(lines) + "\n"


def _mermaid(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _dot(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def build(nodes: Iterable[Node], edges: Iterable[Edge]) -> Graph:
    return Graph(tuple(nodes), tuple(dict.fromkeys(edges)))
