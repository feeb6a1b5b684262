"""Google-style docstrings read into what a module declaration needs: summary, description, arguments, returns."""

from __future__ import annotations

import inspect
import re

__all__ = ["parse_docstring"]


def parse_docstring(doc: str) -> tuple[str, str, dict[str, str], str]:
    """(summary, description, {param: text}, returns text) of a Google-style docstring."""
    doc = inspect.cleandoc(doc)
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in doc.splitlines():
        header = line.strip().rstrip(":").lower()
        if (
            line
            and not line[0].isspace()
            and line.rstrip().endswith(":")
            and header
            in (
                "args",
                "arguments",
                "parameters",
                "returns",
                "return",
                "raises",
                "example",
                "examples",
                "note",
                "notes",
            )
        ):
            current = {"arguments": "args", "parameters": "args", "return": "returns"}.get(header, header)
            sections.setdefault(current, [])
            continue
        sections.setdefault(current, []).append(line)
    body = "\n".join(sections[""]).strip()
    summary = body.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    name = None
    for line in sections.get("args", []):
        m = re.match(r"^\s{0,8}(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", line)
        if m and (name is None or len(line) - len(line.lstrip()) <= _indent(sections["args"])):
            name = m.group(1)
            args[name] = m.group(3).strip()
        elif name is not None and line.strip():
            args[name] = (args[name] + " " + line.strip()).strip()
    returns = " ".join(s.strip() for s in sections.get("returns", []) if s.strip())
    return summary, body, args, returns


def _indent(lines: list[str]) -> int:
    indents = [len(s) - len(s.lstrip()) for s in lines if s.strip()]
    return min(indents) if indents else 0
