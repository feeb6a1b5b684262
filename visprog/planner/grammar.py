"""A small grammar notation, written out as Lark (llguidance, vLLM) or GBNF (llama.cpp, xgrammar, SGLang).

The planner builds the grammar of valid programs from the registry
(:mod:`visprog.planner.constraint`) in this notation once, and each
structured-generation backend reads it in its own syntax: :func:`to_lark`
writes llguidance's Lark dialect (whitespace is significant: nothing is
ignored), :func:`to_gbnf` the GBNF of llama.cpp, which xgrammar's and
SGLang's EBNF read too.

A grammar is a mapping from rule names (lower case, ``start`` first) to
:data:`Node` trees: literal text (:class:`Lit`), a rule (:class:`Ref`),
sequences, alternatives, optional and repeated parts, and terminals
(:class:`Term`, a pattern given in both syntaxes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Alt", "Grammar", "Lit", "Node", "Opt", "Ref", "Seq", "Star", "Term", "alt", "seq", "to_gbnf", "to_lark"]


@dataclass(frozen=True)
class Lit:
    """Literal text."""

    text: str


@dataclass(frozen=True)
class Ref:
    """Another rule, by name."""

    name: str


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Opt:
    item: Node


@dataclass(frozen=True)
class Star:
    item: Node


@dataclass(frozen=True)
class Term:
    """A terminal given as a regular expression (Lark, without slashes) and as GBNF."""

    regex: str
    gbnf: str


Node = Lit | Ref | Seq | Alt | Opt | Star | Term
#: Rule name -> its definition; the rule ``start`` is where a match begins.
Grammar = Mapping[str, Node]

_RULE = re.compile(r"[a-z][a-z0-9_]*")


def seq(*items: Node | str) -> Node:
    """A sequence; strings are literals, adjacent literals are joined."""
    out: list[Node] = []
    for item in items:
        node = Lit(item) if isinstance(item, str) else item
        if isinstance(node, Seq):
            out.extend(node.items)
        elif isinstance(node, Lit) and out and isinstance(out[-1], Lit):
            out[-1] = Lit(out[-1].text + node.text)
        else:
            out.append(node)
    out = [n for n in out if not (isinstance(n, Lit) and not n.text)]
    return out[0] if len(out) == 1 else Seq(tuple(out))


def alt(*options: Node | str) -> Node:
    """Alternatives (strings are literals); duplicates dropped, one option is itself."""
    unique: list[Node] = []
    seen: set[Node] = set()
    for option in options:
        node = Lit(option) if isinstance(option, str) else option
        if node not in seen:
            seen.add(node)
            unique.append(node)
    if not unique:
        raise ValueError("an alternative needs at least one option")
    return unique[0] if len(unique) == 1 else Alt(tuple(unique))


def _check(grammar: Grammar) -> None:
    if "start" not in grammar:
        raise ValueError("a grammar needs a 'start' rule")
    for name in grammar:
        if not _RULE.fullmatch(name):
            raise ValueError(f"rule name {name!r} must be lower-case letters, digits and underscores")


def to_lark(grammar: Grammar) -> str:
    """The grammar in llguidance's Lark dialect (``start`` first)."""
    _check(grammar)

    def node(n: Node, top: bool = False) -> str:
        if isinstance(n, Lit):
            return json.dumps(n.text, ensure_ascii=False)
        if isinstance(n, Ref):
            return n.name
        if isinstance(n, Term):
            return f"/{n.regex}/"
        if isinstance(n, Seq):
            text = " ".join(node(i) for i in n.items)
            return text if top else f"({text})"
        if isinstance(n, Alt):
            text = " | ".join(node(o, top=True) for o in n.options)
            return text if top else f"({text})"
        if isinstance(n, Opt):
            return f"{node(n.item)}?"
        return f"{node(n.item)}*"

    return "\n".join(f"{name}: {node(body, top=True)}" for name, body in _ordered(grammar)) + "\n"


def _gbnf_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def to_gbnf(grammar: Grammar) -> str:
    """The grammar in GBNF (``root`` is the start rule; rule names use ``-`` for ``_``)."""
    _check(grammar)

    def name(rule: str) -> str:
        return "root" if rule == "start" else rule.replace("_", "-")

    def node(n: Node, top: bool = False) -> str:
        if isinstance(n, Lit):
            return _gbnf_string(n.text)
        if isinstance(n, Ref):
            return name(n.name)
        if isinstance(n, Term):
            return f"({n.gbnf})"
        if isinstance(n, Seq):
            text = " ".join(node(i) for i in n.items)
            return text if top else f"({text})"
        if isinstance(n, Alt):
            text = " | ".join(node(o, top=True) for o in n.options)
            return text if top else f"({text})"
        if isinstance(n, Opt):
            return f"{node(n.item)}?"
        return f"{node(n.item)}*"

    return "\n".join(f"{name(rule)} ::= {node(body, top=True)}" for rule, body in _ordered(grammar)) + "\n"


def _ordered(grammar: Grammar) -> list[tuple[str, Node]]:
    return [("start", grammar["start"]), *((k, v) for k, v in grammar.items() if k != "start")]
