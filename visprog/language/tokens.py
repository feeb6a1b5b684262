"""The tokens of the language, read from its grammars: the one definition of what a token is.

``grammar.lark`` (programs) and ``expr.lark`` (Eval's expressions) are loaded
here once. The parser parses with them; everything else that needs to know
the tokens of a program (the trace page's syntax highlighting, the planner
telling a step from chatter, the parser's own pre-checks) lexes with
:func:`tokenize`, which reads the grammar's terminals instead of repeating
them as regular expressions.

:func:`tokenize` never raises: a character that starts no token comes out as
an :data:`ERROR` token of one character and lexing goes on after it, so a
broken line still highlights. Kinds are the grammar's terminal names
(``NAME``, ``NUMBER``, ``STRING``, ``COMMENT``, ``WS``, ``EQUAL``, ``LPAR``,
``RPAR``, ``LSQB``, ``RSQB``, ``COMMA``), plus :data:`NEWLINE` between lines
and :data:`ERROR`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
from collections.abc import Collection, Iterator
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

import lark
from lark import Lark
from lark.lexer import PatternStr, TerminalDef

__all__ = [
    "ERROR",
    "NEWLINE",
    "Lexer",
    "Token",
    "expr_grammar",
    "grammar",
    "is_name",
    "lexer",
    "placeholder",
    "tokenize",
]

#: The kind of a character that starts no token.
ERROR = "ERROR"
#: The kind of a line ending (``\n``, or ``\r\n``): :func:`tokenize` lexes line by line.
NEWLINE = "NEWLINE"


class Token(NamedTuple):
    """One token: its kind (a terminal of the grammar, :data:`NEWLINE` or :data:`ERROR`), its text
    as written and where it starts (1-based line and column)."""

    kind: str
    text: str
    line: int
    column: int


def _read(name: str) -> str:
    return (files("visprog.language") / name).read_text(encoding="utf-8")


def _cache_file(name: str, text: str) -> str | bool:
    """Where lark keeps the built LALR tables of a grammar, so a new process does not rebuild them.

    ``$VISPROG_CACHE_DIR``, else ``~/.cache/visprog`` (the plan cache's folder), created private to
    the user: never a shared temporary folder, since lark reads the file back with pickle. The name
    holds a digest of the grammar and lark's version, and lark checks that digest again inside the
    file (a stale or damaged file is rebuilt). False (no cache) when the folder cannot be made.
    """
    folder = os.environ.get("VISPROG_CACHE_DIR")
    base = Path(folder).expanduser() if folder else Path.home() / ".cache" / "visprog"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    if not os.access(base, os.W_OK):
        return False
    digest = hashlib.sha256(f"{lark.__version__}\0{text}".encode()).hexdigest()[:16]
    return str(base / f"{name}-{digest}.lark-cache")


@functools.cache
def grammar() -> Lark:
    """The program grammar (``grammar.lark``) as an LALR parser with the starts ``program`` and ``line``."""
    text = _read("grammar.lark")
    cache = _cache_file("grammar", text)
    return Lark(text, parser="lalr", start=["program", "line"], maybe_placeholders=False, cache=cache)


@functools.cache
def expr_grammar() -> Lark:
    """Eval's expression grammar (``expr.lark``) as an LALR parser.

    It lexes with the basic lexer: a keyword is always a keyword, never a bare
    name where a value is expected.
    """
    text = _read("expr.lark")
    return Lark(text, parser="lalr", lexer="basic", start="start", cache=_cache_file("expr", text))


class Lexer:
    """A lexer over a grammar's terminals that never raises.

    Terminals are tried in the order lark's own lexer tries them (priority,
    then the longest possible match, then the longest pattern, then the name),
    so the tokens are the ones the parser sees.
    """

    def __init__(self, terminals: Collection[TerminalDef]) -> None:
        ordered = sorted(terminals, key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
        self.kinds = tuple(t.name for t in ordered)
        #: The terminals written as a literal string in the grammar: ``=``, ``(``, ``,`` ...
        self.punctuation = frozenset(t.name for t in ordered if isinstance(t.pattern, PatternStr))
        self._groups = [f"_{i}" for i in range(len(ordered))]  # terminal names need not be group names
        alternatives = (f"(?P<{g}>{t.pattern.to_regexp()})" for g, t in zip(self._groups, ordered, strict=True))
        self._pattern = re.compile("|".join(alternatives))
        self._kind_of = dict(zip(self._groups, self.kinds, strict=True))

    def line(self, text: str, number: int = 1) -> Iterator[Token]:
        """The tokens of one line (text without a line ending), whitespace and comments included."""
        pos = 0
        while pos < len(text):
            m = self._pattern.match(text, pos)
            if m is None or m.end() == pos:
                yield Token(ERROR, text[pos], number, pos + 1)
                pos += 1
                continue
            yield Token(self._kind_of[m.lastgroup or ""], m.group(), number, pos + 1)
            pos = m.end()

    def tokens(self, text: str) -> Iterator[Token]:
        """The tokens of ``text``, line by line, with a :data:`NEWLINE` token at each line ending.

        Lines end as the grammar ends them (``\\n``, a ``\\r`` before it belonging to
        the ending; see :func:`visprog.language.syntax.split_lines`). Joining the
        tokens' texts gives ``text`` back.
        """
        pieces = text.split("\n")
        for number, piece in enumerate(pieces, start=1):
            last = number == len(pieces)
            content = piece[:-1] if piece.endswith("\r") else piece
            yield from self.line(content, number)
            ending = piece[len(content) :] + ("" if last else "\n")
            if ending:
                yield Token(NEWLINE, ending, number, len(content) + 1)


@functools.cache
def lexer() -> Lexer:
    """The lexer of the program grammar's terminals."""
    return Lexer(grammar().terminals)


def tokenize(text: str) -> Iterator[Token]:
    """The tokens of a program (or of any part of one), never raising: see :class:`Lexer`."""
    return lexer().tokens(text)


def is_name(text: str) -> bool:
    """Whether ``text`` is one ``NAME`` token: what a variable, an input or a module may be called
    (``True``, ``False`` and ``None`` lex as names too; they are :data:`~visprog.language.syntax.CONSTANTS`)."""
    tokens = list(itertools.islice(lexer().line(text), 2))
    return len(tokens) == 1 and tokens[0].kind == "NAME"


@functools.cache
def placeholder() -> re.Pattern[str]:
    """Eval's ``{NAME}`` placeholder (the ``PLACEHOLDER`` terminal of ``expr.lark``), compiled."""
    return re.compile(expr_grammar().get_terminal("PLACEHOLDER").pattern.to_regexp())
