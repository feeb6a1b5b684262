"""Eval's syntax errors in words: where, what was found and what could come instead.

Lark reports the terminals it could accept next; :func:`syntax_error` says them
as a reader would (a value, an operator, ``')'``, ``'else'`` ...) and adds a
hint for what other languages write (``=``, ``&&``, ``||``, ``!``).
"""

from __future__ import annotations

from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from visprog.errors import EvalError

__all__ = ["syntax_error"]

# What the parser may expect next, in words.
_OPERATORS = frozenset(
    {"EQ", "NE", "LT", "LE", "GT", "GE", "PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT", "POW"}
    | {"AND", "OR", "XOR", "CARET", "NOT", "IF", "IS", "DOT", "LSQB"}
)
_HINTS = {
    "=": "use '==' to compare",
    "&": "use 'and'",
    "|": "use 'or'",
    "!": "use 'not' or '!='",
}


def _expected(names: set[str] | frozenset[str]) -> str:
    wanted: list[str] = []
    value = "NUMBER" in names  # wherever a value may come, any value may
    if value:
        wanted.append("a value (a number, a 'string', a {VARIABLE}, a [list], True/False/None or '(')")
    if names & _OPERATORS and not value:
        wanted.append("an operator")
    if "_LPAR" in names and not value:
        wanted.append("'(' to call it")
    if "IN" in names and not names & _OPERATORS:
        wanted.append("'in'")
    if "ELSE" in names:
        wanted.append("'else'")
    if "_RPAR" in names:
        wanted.append("')'")
    if "_RSQB" in names:
        wanted.append("']'")
    if "NAME" in names and not value:
        wanted.append("a method name")
    if "$END" in names:
        wanted.append("the end of the expression")
    return " or ".join(wanted) if wanted else "something else"


def _acceptable(err: UnexpectedToken | UnexpectedCharacters) -> set[str]:
    """The terminals that could come next: exact, unlike LALR's merged lookahead sets."""
    fallback = err.expected if isinstance(err, UnexpectedToken) else err.allowed
    interactive = getattr(err, "interactive_parser", None)
    if interactive is None:
        return set(fallback or ())
    try:
        return set(interactive.accepts())
    except (LarkError, AttributeError):
        return set(fallback or ())


def syntax_error(text: str, err: UnexpectedInput) -> EvalError:
    """The parser's error as an :class:`EvalError`: the 1-based column and what was expected, in words."""
    pos = err.pos_in_stream if isinstance(err.pos_in_stream, int) else len(text)
    if isinstance(err, UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            pos = len(text)
            what = "unexpected end of expression"
        else:
            pos = tok.start_pos if tok.start_pos is not None else 0
            what = f"unexpected {str(tok)!r}"
        detail = f"{what}, expected {_expected(_acceptable(err))}"
    elif isinstance(err, UnexpectedCharacters):
        char = text[pos] if pos < len(text) else ""
        if char in ("'", '"'):
            detail = f"unterminated string: no closing {char} on this line"
        elif char == "{":
            detail = "bad placeholder: write a variable as {NAME} (letters, digits and _)"
        elif char == "}":
            detail = "unexpected '}' without a matching '{NAME'"
        else:
            detail = f"unexpected character {char!r}"
            if char in _HINTS:
                detail += f"; {_HINTS[char]}"
            else:
                detail += f", expected {_expected(_acceptable(err))}"
    elif isinstance(err, UnexpectedEOF):
        pos = len(text)
        detail = f"unexpected end of expression, expected {_expected(set(err.expected))}"
    else:  # pragma: no cover - lark has no other UnexpectedInput
        detail = "invalid syntax"
    return EvalError(f"syntax error at column {pos + 1}: {detail}", text, column=pos + 1, detail=detail)
