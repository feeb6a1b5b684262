"""The web app's status panel: a title and a message, as HTML that fits any screen.

A message wraps to the panel's width, at any width down to a phone's: its
lines keep their breaks and indentation, and a long word (a URL, a path)
breaks where it must. Only a program's source line and the caret under it stay
unwrapped, so that the caret keeps pointing at its column; such a pair (any
line followed by a line of spaces and ``^``) is set apart in its own block,
which scrolls sideways when it is wider than the panel.

:func:`status_panel` draws the panel for a finished request (``ok``, ``error``)
and for one in progress (``busy``, with an optional progress bar).
"""

from __future__ import annotations

import html
import re
from typing import Literal

from visprog.llm.masking import mask_secrets

__all__ = ["State", "message_blocks", "status_panel"]

#: How a request stands: done, failed, or still running.
State = Literal["ok", "error", "busy"]

_CARET = re.compile(r"^\s*\^[\^~]*\s*$")

_COLOURS: dict[str, str] = {
    "ok": "border-left:4px solid #16a34a;background:#f0fdf4;color:#14532d",
    "error": "border-left:4px solid #dc2626;background:#fef2f2;color:#7f1d1d",
    "busy": "border-left:4px solid #4f46e5;background:#eef2ff;color:#312e81",
}
_TEXT = (
    "margin:4px 0 0;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word;font-size:13px;line-height:1.4"
)
_SOURCE = (
    "margin:4px 0 0;white-space:pre;overflow-x:auto;max-width:100%;font-size:13px;line-height:1.4;"
    "background:none;color:inherit;border:0;padding:0"
)
_MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"


def message_blocks(message: str) -> list[tuple[bool, str]]:
    """``message`` cut into blocks: ``(True, lines)`` for source lines with their carets, ``(False, lines)`` else.

    A line of spaces and ``^`` (``~`` may follow) makes the line before it a
    source line; consecutive pairs share a block. Blocks keep their lines'
    indentation; empty blocks are left out.
    """
    lines = message.split("\n")
    blocks: list[tuple[bool, list[str]]] = []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and _CARET.match(lines[i + 1]) and lines[i].strip():
            pair = lines[i : i + 2]
            if blocks and blocks[-1][0]:
                blocks[-1][1].extend(pair)
            else:
                blocks.append((True, pair))
            i += 2
            continue
        if blocks and not blocks[-1][0]:
            blocks[-1][1].append(lines[i])
        else:
            blocks.append((False, [lines[i]]))
        i += 1
    out = [(source, "\n".join(text)) for source, text in blocks]
    return [(source, text) for source, text in out if text.strip()]


def _body(message: str, monospace: bool) -> str:
    parts = []
    for source, text in message_blocks(message):
        if source:
            parts.append(f'<pre class="vp-source" style="{_SOURCE}">{html.escape(text)}</pre>')
        else:
            font = f";{_MONO}" if monospace else ""
            parts.append(f'<div class="vp-message" style="{_TEXT}{font}">{html.escape(text.strip(chr(10)))}</div>')
    return "".join(parts)


def status_panel(
    state: State,
    title: str,
    message: str = "",
    *,
    progress: tuple[int, int | None] | None = None,
    classes: str = "",
) -> str:
    """The panel: ``title`` in bold, then ``message`` (see the module's notes on wrapping).

    ``progress`` is ``(done, total)`` for a bar under the message (``total``
    ``None``: a bar that only says something is moving). ``classes`` are added
    to the panel's own (``vp-status vp-ok``, ``vp-error`` or ``vp-busy``).
    """
    role = "alert" if state == "error" else "status"
    live = ' aria-live="polite"' if state == "busy" else ""
    message = mask_secrets(message)  # a server URL's user info and query values, the LLM's key
    monospace = "\n" in message  # diagnostics and programs: keep their columns readable
    body = _body(message, monospace) if message else ""
    if progress is not None:
        done, total = progress
        value = f' value="{done}" max="{total}"' if total else ""
        body += f'<progress class="vp-progress" style="width:100%;margin-top:6px"{value}></progress>'
    extra = f" {classes}" if classes else ""
    return (
        f'<div class="vp-status vp-{state}{extra}" role="{role}"{live} '
        f'style="{_COLOURS[state]};padding:10px 14px;border-radius:6px;font-size:14px;'
        f'max-width:100%;box-sizing:border-box;overflow-wrap:anywhere">'
        f'<strong class="vp-title">{html.escape(title)}</strong>{body}</div>'
    )
