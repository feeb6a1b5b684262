"""Syntax colouring of a program as HTML, from the language's own tokens.

Tokens come from :func:`visprog.language.tokens.tokenize` (the grammar's
terminals), so the colouring follows the grammar. Every token is wrapped in a
``<span class="tok-KIND">`` and every text is escaped; a line that does not
parse still highlights (unknown characters come out as ``tok-error``).

Kinds: ``tok-target`` (the name a step assigns), ``tok-module``, ``tok-arg``,
``tok-var``, ``tok-const`` (True, False, None), ``tok-str`` (with Eval's
``{NAME}`` placeholders inside marked ``tok-placeholder``), ``tok-num``,
``tok-comment``, ``tok-punct`` and ``tok-error``.
"""

from __future__ import annotations

import html

from visprog.language.syntax import CONSTANTS, split_lines
from visprog.language.tokens import ERROR, Token, lexer, placeholder

__all__ = ["highlight_line", "highlight_program"]

#: CSS kind of each terminal that is not a name (names depend on what follows them).
_KINDS = {"STRING": "str", "NUMBER": "num", "COMMENT": "comment", ERROR: "error"}
_NESTING = {"LPAR": 1, "LSQB": 1, "RPAR": -1, "RSQB": -1}


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _span(kind: str, text: str) -> str:
    return f'<span class="tok-{kind}">{_esc(text)}</span>'


def _string_html(text: str) -> str:
    """A string token, with Eval's ``{VAR}`` placeholders marked inside it."""
    parts: list[str] = []
    last = 0
    for m in placeholder().finditer(text):
        parts.append(_esc(text[last : m.start()]))
        parts.append(_span("placeholder", m.group()))
        last = m.end()
    parts.append(_esc(text[last:]))
    return f'<span class="tok-str">{"".join(parts)}</span>'


def _name_kind(token: Token, after: Token | None, depth: int) -> str:
    """A name's role: what follows it and whether it is inside a call or a list decide."""
    if after is not None and after.kind == "LPAR":
        return "module"
    if after is not None and after.kind == "EQUAL":
        return "target" if depth == 0 else "arg"
    return "const" if token.text in CONSTANTS else "var"


def highlight_line(line: str) -> str:
    """One program line as HTML: every token in a ``tok-*`` span, everything escaped."""
    lex = lexer()
    tokens = list(lex.line(line))
    out: list[str] = []
    depth = 0
    for i, token in enumerate(tokens):
        if token.kind == "WS":
            out.append(_esc(token.text))
        elif token.kind == "NAME":
            after = next((t for t in tokens[i + 1 :] if t.kind != "WS"), None)
            out.append(_span(_name_kind(token, after, depth), token.text))
        elif token.kind == "STRING":
            out.append(_string_html(token.text))
        elif token.kind in lex.punctuation:
            depth += _NESTING.get(token.kind, 0)
            out.append(_span("punct", token.text))
        else:
            out.append(_span(_KINDS.get(token.kind, "error"), token.text))
    return "".join(out)


def highlight_program(source: str, line_status: dict[int, str] | None = None) -> str:
    """The program as ``<span class="line" data-line="N">`` lines of highlighted tokens.

    ``line_status`` adds a class to a line (``ran``, ``failed``, ``not-run``).
    Blank lines at the end are left out.
    """
    status = line_status or {}
    lines = split_lines(source)
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        cls = " ".join(c for c in ("line", status.get(number, "")) if c)
        out.append(f'<span class="{cls}" data-line="{number}">{highlight_line(line)}</span>')
    return "".join(out)
