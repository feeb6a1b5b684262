"""What every command writes besides its answer: usage errors, diagnostics as ``FILE:LINE:COL: message``, and the
``error:`` and ``warning:`` labels, in colour on a terminal only.

Colour follows https://no-color.org: never when ``$NO_COLOR`` is set (to anything but the empty string); always
when ``$FORCE_COLOR`` is set (and not ``0``); otherwise only when the stream is a terminal and ``$TERM`` is not
``dumb``. A pipe or a file never gets an escape code.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from visprog.errors import Diagnostic, VisprogError

__all__ = [
    "UsageError",
    "colour_on",
    "diagnostic_data",
    "format_diagnostic",
    "paint",
    "severity_label",
    "stderr_of",
]

#: SGR codes of the few styles the commands use
_STYLES = {"error": "1;31", "warning": "1;33", "hint": "1;36", "place": "1"}


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
    text = diagnostic.render()
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
