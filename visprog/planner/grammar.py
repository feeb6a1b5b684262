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
from collections.abc import Callable, Mapping
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
    """``item`` repeated: any number of times, or at most ``most`` times."""

    item: Node
    most: int | None = None


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


@dataclass(frozen=True)
class _Syntax:
    """How one grammar syntax writes what differs between them: literals, terminals, rule names, definitions."""

    literal: Callable[[str], str]
    terminal: Callable[[Term], str]
    rule: Callable[[str], str]
    defines: str
    #: how a repetition of at most N is written after its item
    at_most: Callable[[int], str]


def _render(grammar: Grammar, syntax: _Syntax) -> str:
    _check(grammar)

    def node(n: Node, top: bool = False) -> str:
        if isinstance(n, Lit):
            return syntax.literal(n.text)
        if isinstance(n, Ref):
            return syntax.rule(n.name)
        if isinstance(n, Term):
            return syntax.terminal(n)
        if isinstance(n, (Seq, Alt)):
            parts = [node(i) for i in n.items] if isinstance(n, Seq) else [node(o, top=True) for o in n.options]
            text = (" " if isinstance(n, Seq) else " | ").join(parts)
            return text if top else f"({text})"
        if isinstance(n, Star) and n.most is not None:
            return f"{node(n.item)}{syntax.at_most(n.most)}"
        return f"{node(n.item)}{'?' if isinstance(n, Opt) else '*'}"

    rules = (f"{syntax.rule(name)}{syntax.defines}{node(body, top=True)}" for name, body in _ordered(grammar))
    return "\n".join(rules) + "\n"


def _gbnf_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


_LARK = _Syntax(
    literal=lambda text: json.dumps(text, ensure_ascii=False),
    terminal=lambda t: f"/{t.regex}/",
    rule=lambda name: name,
    defines=": ",
    at_most=lambda n: f" ~ 0..{n}",
)
_GBNF = _Syntax(
    literal=_gbnf_string,
    terminal=lambda t: f"({t.gbnf})",
    rule=lambda name: "root" if name == "start" else name.replace("_", "-"),
    defines=" ::= ",
    at_most=lambda n: f"{{0,{n}}}",
)


def to_lark(grammar: Grammar) -> str:
    """The grammar in llguidance's Lark dialect (``start`` first)."""
    return _render(grammar, _LARK)


def to_gbnf(grammar: Grammar) -> str:
    """The grammar in GBNF (``root`` is the start rule; rule names use ``-`` for ``_``)."""
    return _render(grammar, _GBNF)


def _ordered(grammar: Grammar) -> list[tuple[str, Node]]:
    return [("start", grammar["start"]), *((k, v) for k, v in grammar.items() if k != "start")]
