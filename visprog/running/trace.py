"""What a run did, step by step: inputs, output, time, error.

A :class:`Trace` is returned by every run and carried by every
:class:`~visprog.errors.StepError`, so a failing step never loses the steps
before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from visprog.language.values import Template, describe_value

__all__ = ["StepRecord", "Trace"]


@dataclass(slots=True)
class StepRecord:
    """One step as it ran."""

    index: int
    line: int
    target: str
    module: str
    source: str
    inputs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    seconds: float = 0.0
    error: str | None = None
    #: how many steps shared the one module call that computed this step
    batch: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        if self.module == "=":  # a bare assignment, RESULT=X: shown as written
            head = f"line {self.line:>2}  {self.source.strip()}"
        else:
            args = ", ".join(f"{k}={_show(v)}" for k, v in self.inputs.items())
            head = f"line {self.line:>2}  {self.target} = {self.module}({args})"
        batch = f" [batch of {self.batch}]" if self.batch > 1 else ""
        if self.error is not None:
            return f"{head}\n         FAILED: {self.error}"
        return f"{head}\n         -> {_show(self.output)}  ({self.seconds * 1000:.1f} ms{batch})"


def _show(value: Any) -> str:
    if isinstance(value, Template):
        return f'"{value}"'
    text = describe_value(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Trace:
    """The record of one run of a program."""

    source: str
    inputs: dict[str, Any] = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)
    result: Any = None
    result_var: str | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.records)

    @property
    def values(self) -> dict[str, Any]:
        """Every variable's latest computed value, in program order (inputs first)."""
        out = dict(self.inputs)
        for r in sorted(self.records, key=lambda r: r.index):
            if r.ok:
                out[r.target] = r.output
        return out

    def step(self, target: str) -> StepRecord:
        """The record of the latest assignment to ``target`` that ran."""
        found = [r for r in self.records if r.target == target]
        if not found:
            raise KeyError(f"no step assigned '{target}' in this run")
        return max(found, key=lambda r: r.index)

    def seconds_by_module(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.records:
            out[r.module] = out.get(r.module, 0.0) + r.seconds
        return out

    def to_text(self) -> str:
        lines = [r.summary() for r in sorted(self.records, key=lambda r: r.index)]
        if self.error is not None:
            failed = [r for r in self.records if not r.ok]
            where = f" at line {failed[0].line} ({failed[0].module})" if failed else ""
            lines.append(f"run failed{where}; the steps before it are kept")
        else:
            lines.append(f"result: {_show(self.result)}  (total {self.seconds * 1000:.1f} ms)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def to_html(
        self,
        *,
        title: str | None = None,
        text: str | None = None,
        max_image_side: int | None = 512,
        image_format: Literal["auto", "jpeg", "png"] = "auto",
    ) -> str:
        """The run as one self-contained HTML page: every step's inputs and output drawn as pictures.

        ``text`` is the question, statement or instruction. Pictures are shown
        at most ``max_image_side`` pixels on their longest side (``None``: full
        size) and embedded as JPEG or PNG, whichever suits each one
        (``image_format="auto"``; ``"png"``: all lossless); the run's own
        images are not changed. See :func:`visprog.presentation.html.trace_html`.
        """
        from visprog.presentation.html import trace_html

        return trace_html(self, title=title, text=text, max_image_side=max_image_side, image_format=image_format)

    def save_html(
        self,
        path: str | PathLike[str],
        *,
        title: str | None = None,
        text: str | None = None,
        max_image_side: int | None = 512,
        image_format: Literal["auto", "jpeg", "png"] = "auto",
    ) -> Path:
        """Write :meth:`to_html` to ``path`` (UTF-8, parent folders created) and return the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        page = self.to_html(title=title, text=text, max_image_side=max_image_side, image_format=image_format)
        out.write_text(page, encoding="utf-8")
        return out

    def _repr_html_(self) -> str:
        """The trace rendered inline in a notebook cell (the page's body, with scoped CSS, pictures kept small)."""
        from visprog.presentation.html import trace_fragment

        return trace_fragment(self)
