"""What every command writes besides its answer: usage errors, diagnostics as ``FILE:LINE:COL: message``, and the
``error:`` and ``warning:`` labels, in colour on a terminal only.

Colour follows https://no-color.org: never when ``$NO_COLOR`` is set (to anything but the empty string); always
when ``$FORCE_COLOR`` is set (and not ``0``); otherwise only when the stream is a terminal and ``$TERM`` is not
``dumb``. A pipe or a file never gets an escape code.

Text that came from elsewhere (a program, a model's reply, an answer, a file name, an error quoting them) never
reaches the terminal raw, as in ``git`` and ``ruff``: :func:`escape_controls` writes control characters (C0, DEL,
C1), bidirectional overrides and invisible format characters as ``\\x1b``, ``\\r``, ``\\u202e``; in a
diagnostic's source line each becomes one visible character, so the caret stays under its column.
:func:`shown` also masks secrets (:mod:`visprog.llm.masking`). JSON output is escaped by ``json.dumps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Any, TextIO

from visprog.errors import Diagnostic, VisprogError
from visprog.llm.masking import mask_secrets

__all__ = [
    "UsageError",
    "colour_on",
    "diagnostic_data",
    "escape_controls",
    "format_diagnostic",
    "paint",
    "severity_label",
    "shown",
    "stderr_of",
]

#: SGR codes of the few styles the commands use
_STYLES = {"error": "1;31", "warning": "1;33", "hint": "1;36", "place": "1"}
#: What a terminal must not get raw: C0 and C1 controls and DEL, bidirectional marks, embeddings, overrides and
#: isolates, zero-width and other invisible format characters, line and paragraph separators, lone surrogates.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b\u200e\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\ud800-\udfff\U000e0000-\U000e007f]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str, *, lines: bool = True) -> str:
    """``text`` safe for a terminal: every control or invisible character written as an escape (``\\x1b``,
    ``\\r``, ``\\u202e``). ``lines``: newlines and tabs stay (text of several lines); else they are escaped too."""
    if lines:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in "\n\t" else _escaped(m), text)
    return _UNSAFE.sub(_escaped, text)


def shown(text: object, *, lines: bool = True) -> str:
    """``text`` as the command line shows it: secrets masked (:func:`visprog.llm.masking.mask_secrets`), then
    control characters escaped (:func:`escape_controls`)."""
    return escape_controls(mask_secrets(str(text)), lines=lines)


def _visible(source_line: str) -> str:
    """A source line with each control or invisible character as one visible character, so the caret's column
    holds: C0 and DEL as :meth:`Diagnostic.render` draws them (control pictures), the others as U+FFFD."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() < " " or m.group() == "\x7f" else "\ufffd", source_line)


class UsageError(VisprogError):
    """A command-line mistake (exit status 2)."""


def stderr_of(args: argparse.Namespace) -> TextIO:
    """Where a command writes everything but its answer: warnings, progress, the trace, "wrote ..."."""
    err: TextIO = getattr(args, "stderr", None) or sys.stderr
    return err


def colour_on(stream: TextIO) -> bool:
    """Whether text for ``stream`` may be coloured: ``$NO_COLOR`` wins, then ``$FORCE_COLOR``, then a terminal."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "") not in ("", "0"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # not a file, or closed
        return False


def paint(text: str, style: str, colour: bool) -> str:
    """``text`` in ``style`` (error, warning, hint, place) when ``colour``, else as it is."""
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m" if colour and text else text


def severity_label(kind: str, stream: TextIO) -> str:
    """``error:`` or ``warning:`` (or ``hint:``), coloured when ``stream`` takes colour."""
    return paint(f"{kind}:", kind, colour_on(stream))


def format_diagnostic(name: str, diagnostic: Diagnostic, severity: str = "", *, colour: bool = False) -> str:
    """``FILE:LINE:COL: message`` (``severity`` before the message, e.g. ``"warning: "``), then the source line
    with a caret under the column: the form editors and terminals link to the place.

    With ``colour``, the place is bold, and the severity and the caret are red (an error) or yellow (a warning).
    """
    head = f"line {diagnostic.line}, col {diagnostic.column}: "
    message, source = shown(diagnostic.message), _visible(diagnostic.source_line)
    text = dataclasses.replace(diagnostic, message=message, source_line=source).render()
    name = shown(name, lines=False)
    body = text[len(head) :] if text.startswith(head) else text
    style = "warning" if severity.strip().rstrip(":") == "warning" else "error"
    if colour and diagnostic.source_line:  # the last line is the caret
        rest, _, caret = body.rpartition("\n")
        mark = caret.lstrip()
        body = f"{rest}\n{caret[: len(caret) - len(mark)]}{paint(mark, style, colour)}"
    place = paint(f"{name}:{diagnostic.line}:{diagnostic.column}:", "place", colour)
    return f"{place} {paint(severity.rstrip(), style, colour)}{' ' if severity else ''}{body}"


def diagnostic_data(diagnostic: Diagnostic, severity: str, name: str | None = None) -> dict[str, Any]:
    """One diagnostic as JSON (``check --format json``, ``--json``)."""
    data = {"line": diagnostic.line, "column": diagnostic.column, "severity": severity}
    return {**({"file": name} if name else {}), **data, "message": diagnostic.message, "source": diagnostic.source_line}
