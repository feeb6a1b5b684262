"""Characters that look like the language's punctuation, read as the ASCII they stand for.

Text pasted from chat answers, word processors and web pages carries
typographic quotes (``‘ ’ “ ”``), no-break spaces, zero-width characters, a
byte order mark and full-width punctuation (``（ ） ， ＝ ：``). Outside
strings, :func:`normalize` reads them as their ASCII forms: a pair of
typographic quotes delimits a string, spaces become spaces, invisible
characters go. Inside a string nothing changes (``'Disney’s castle'`` keeps
its apostrophe). Each change is a :class:`Replacement`, and every character of
the result knows where it came from (:attr:`Normalized.origins`), so a
diagnostic can point into the original text and name the character that
caused it (:func:`describe`: ``U+201C LEFT DOUBLE QUOTATION MARK``).

Lines are read one at a time: a string never runs past the end of its line.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

from visprog.errors import Diagnostic

__all__ = ["Normalized", "Replacement", "describe", "explain", "lookalike_note", "normalize"]

#: Invisible characters that are dropped outside strings.
DROPPED = frozenset("\ufeff\u200b\u200c\u200d\u2060\u00ad\u180e")
#: Space characters read as one ASCII space outside strings.
SPACES = frozenset("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000")
#: Typographic quotes, by family: the ASCII quote each family stands for.
_QUOTE_FAMILY = {"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"'}
#: What may follow a closing quote: the string then ends there.
_AFTER_STRING = frozenset(",)];#=:}\uff0c\uff09\uff3d\uff1b")


#: A run of characters that are neither quotes nor read as something else.
_PLAIN = re.compile("[^'\"" + "".join(sorted(_QUOTE_FAMILY)) + "".join(sorted(DROPPED | SPACES)) + "\uff01-\uff5e]*")


def describe(char: str) -> str:
    """A character by its code point and Unicode name: ``U+201C LEFT DOUBLE QUOTATION MARK``."""
    return f"U+{ord(char):04X} {unicodedata.name(char, 'UNNAMED CHARACTER')}"


def _ascii_form(char: str) -> str | None:
    """What ``char`` reads as outside strings, ``""`` to drop it, None to keep it."""
    if char in DROPPED:
        return ""
    if char in SPACES:
        return " "
    code = ord(char)
    if 0xFF01 <= code <= 0xFF5E:  # full-width ASCII: （ ） ， ＝ ： ［ ］ ＇ ＂ ...
        return chr(code - 0xFEE0)
    return None


@dataclass(frozen=True)
class Replacement:
    """One character read as something else: where it was in the original text (0-based index, and
    1-based line and column), the character and what it reads as (``""`` when dropped)."""

    index: int
    line: int
    column: int
    original: str
    replacement: str

    def describe(self) -> str:
        """``U+00A0 NO-BREAK SPACE read as ' '`` (or ``dropped``)."""
        what = f"read as {self.replacement!r}" if self.replacement else "dropped"
        return f"{describe(self.original)} {what}"


class Normalized(NamedTuple):
    """The result of :func:`normalize`: the text as the parser should read it, the replacements
    made, and for each character of ``text`` the index in the original text it came from."""

    text: str
    replacements: tuple[Replacement, ...]
    origins: tuple[int, ...]

    def locate(self, line: int, column: int, original: str) -> tuple[int, int]:
        """The 1-based (line, column) in ``original`` of the character at ``line``, ``column`` of ``text``."""
        return _position(original, _origin(self.text, self.origins, line, column, len(original)))

    def explain(self, diagnostic: Diagnostic, original: str, *, whole_line: bool = True) -> Diagnostic:
        """``diagnostic`` (about ``text``) moved to its place in ``original``, naming the look-alike
        or invisible character that caused it, if one did (``whole_line``: see :func:`lookalike_note`;
        pass False for check errors, whose cause is not a character)."""
        index = _origin(self.text, self.origins, diagnostic.line, diagnostic.column, len(original))
        replaced = {r.index for r in self.replacements}
        return explain(diagnostic, original, index, replaced, whole_line=whole_line)


def _origin(text: str, origins: tuple[int, ...], line: int, column: int, end: int) -> int:
    starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            starts.append(i + 1)
    start = starts[min(max(line, 1), len(starts)) - 1]
    stop = text.find("\n", start)
    stop = len(text) if stop < 0 else stop
    at = start + max(column, 1) - 1
    if at < stop:
        return origins[at]
    if stop > start:  # past the end of the line: just after its last character
        return origins[stop - 1] + 1
    return origins[start] if start < len(origins) else end


def _position(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _closing(line: str, start: int, family: str) -> int:
    """Where the typographic string opened before ``start`` closes: a quote of the same family
    followed by what may follow a string; -1 when it does not close on this line."""
    for j in range(start, len(line)):
        if _QUOTE_FAMILY.get(line[j]) == family:
            rest = line[j + 1 :].lstrip(" \t\u00a0")
            if not rest or rest[0] in _AFTER_STRING:
                return j
    return -1


def _line(text: str, base: int, number: int, out: list[str], origins: list[int], found: list[Replacement]) -> None:
    """Normalise one line (no line ending) that starts at ``base`` in the original text."""
    if text.isascii():
        out.append(text)
        origins.extend(range(base, base + len(text)))
        return
    i = 0
    n = len(text)

    def keep(a: int, b: int) -> None:
        out.append(text[a:b])
        origins.extend(range(base + a, base + b))

    while i < n:
        plain = _PLAIN.match(text, i)
        stretch = plain.end() if plain else i
        if stretch > i:  # a stretch of characters read as they are
            keep(i, stretch)
            i = stretch
            continue
        ch = text[i]
        if ch in "'\"":  # an ASCII string: kept as written up to its closing quote
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            keep(i, min(j + 1, n))
            i = j + 1
            continue
        family = _QUOTE_FAMILY.get(ch)
        if family is not None:
            close = _closing(text, i + 1, family)
            if close < 0:
                keep(i, i + 1)  # an unpaired quote: the parser reports it, and it is named
                i += 1
                continue
            body = text[i + 1 : close]
            quote = family if family not in body else ("'" if family == '"' else '"')
            found.append(Replacement(base + i, number, i + 1, ch, quote))
            found.append(Replacement(base + close, number, close + 1, text[close], quote))
            out.append(quote)
            origins.append(base + i)
            for k, c in enumerate(body, start=i + 1):
                if c == quote or c == "\\":
                    out.append("\\")
                    origins.append(base + k)
                out.append(c)
                origins.append(base + k)
            out.append(quote)
            origins.append(base + close)
            i = close + 1
            continue
        form = _ascii_form(ch)
        if form is None:
            keep(i, i + 1)
        else:
            found.append(Replacement(base + i, number, i + 1, ch, form))
            if form in "'\"" and form:  # a full-width quote opens an ASCII string
                j = i + 1
                while j < n and text[j] not in (form, chr(ord(form) + 0xFEE0)):
                    j += 2 if text[j] == "\\" else 1
                out.append(form)
                origins.append(base + i)
                keep(i + 1, min(j, n))
                if j < n:
                    found.append(Replacement(base + j, number, j + 1, text[j], form))
                    out.append(form)
                    origins.append(base + j)
                i = j + 1
                continue
            out.append(form)
            origins.extend([base + i] * len(form))
        i += 1


def normalize(text: str) -> Normalized:
    """``text`` with look-alike and invisible characters outside strings read as ASCII.

    Returns ``(text, replacements, origins)``; see the module's documentation. A byte
    order mark is dropped wherever it is. Line endings are kept as they are.
    """
    out: list[str] = []
    origins: list[int] = []
    found: list[Replacement] = []
    base = 0
    for number, piece in enumerate(text.split("\n"), start=1):
        if number > 1:
            out.append("\n")
            origins.append(base - 1)
        content = piece[:-1] if piece.endswith("\r") else piece
        _line(content, base, number, out, origins, found)
        if len(content) < len(piece):
            out.append("\r")
            origins.append(base + len(content))
        base += len(piece) + 1
    return Normalized("".join(out), tuple(found), tuple(origins))


def lookalike_note(
    original: str, index: int, replaced: set[int] | frozenset[int] = frozenset(), *, whole_line: bool = True
) -> str:
    """A note naming the character that probably caused a diagnostic at ``index`` of ``original``:
    the character there when it is not ASCII (or was read as ASCII), else (``whole_line``) the
    first typographic quote or invisible character left on that line. ``""`` when there is none."""
    if 0 <= index < len(original):
        ch = original[index]
        if not ch.isascii() or index in replaced:
            form = _ascii_form(ch)
            if index in replaced and form:
                return f"the character there is {describe(ch)}, read as {form!r}"
            return f"the character there is {describe(ch)}"
    start = original.rfind("\n", 0, max(index, 0)) + 1
    stop = original.find("\n", start)
    stop = len(original) if stop < 0 else stop
    for k in range(start, stop if whole_line else start):
        ch = original[k]
        if k in replaced or ch.isascii():
            continue
        if ch in _QUOTE_FAMILY:
            return f"col {k - start + 1} holds {describe(ch)}, not {_QUOTE_FAMILY[ch]}"
        if ch in DROPPED or ch in SPACES or unicodedata.category(ch) in ("Cf", "Zs", "Cc"):
            return f"col {k - start + 1} holds the invisible {describe(ch)}"
    return ""


def explain(
    diagnostic: Diagnostic,
    original: str,
    index: int,
    replaced: set[int] | frozenset[int] = frozenset(),
    *,
    whole_line: bool = True,
) -> Diagnostic:
    """``diagnostic`` placed at ``index`` of ``original`` (its line, column and source line), with a
    :func:`lookalike_note` added to its message when there is one (``whole_line``: see there)."""
    line, column = _position(original, min(max(index, 0), len(original)))
    start = original.rfind("\n", 0, min(max(index, 0), len(original))) + 1
    stop = original.find("\n", start)
    source = original[start : len(original) if stop < 0 else stop].rstrip("\r")
    note = lookalike_note(original, index, replaced, whole_line=whole_line)
    message = diagnostic.message
    if note:  # a note already there (the diagnostic was explained before, about other text) is replaced
        message = f"{_NOTE.sub('', message)} ({note})"
    return Diagnostic(line, column, message, source)


#: A note :func:`explain` added: the last thing in a message.
_NOTE = re.compile(r" \((?:the character there is|col \d+ holds) (?:the invisible )?U\+[0-9A-F]{4,6} .*\)$")
