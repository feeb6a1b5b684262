"""The web app's files: the examples it ships with, and the trace files it offers for download.

The examples' pictures are package data (``visprog/apps/examples/``), made
from scikit-image's sample images (``skimage.data``: public domain or CC0).
Each example is a text with the upload(s) it goes with; clicking one in the app
fills both.

:class:`TraceFiles` writes a run's trace as the HTML page
(:func:`visprog.presentation.report.trace_html`) and as JSON
(:meth:`~visprog.running.tracing.Trace.to_json`) for the download buttons.
"""

from __future__ import annotations

import importlib.resources
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from visprog.presentation.report import trace_html
from visprog.running.tracing import Trace

__all__ = ["EXAMPLES", "Example", "TraceFiles", "example_path", "example_rows"]


@dataclass(frozen=True)
class Example:
    """A text and the pictures it goes with: ``image`` for one-image tasks, ``left`` and ``right`` for two."""

    text: str
    image: str | None = None
    left: str | None = None
    right: str | None = None


#: The examples the app offers, one per thing a user does (pictures under ``examples/``).
EXAMPLES: tuple[Example, ...] = (
    Example("Hide the face with sunglasses emoji", image="astronaut.jpg"),
    Example("What is in the cup?", image="coffee.jpg"),
    Example("Blur the background", image="chelsea.jpg"),
    Example("How many rockets are in the picture?", image="rocket.jpg"),
    Example("Tag the animal with its breed", image="chelsea.jpg"),
    Example("There is a cat in exactly one of the two images.", left="chelsea.jpg", right="coffee.jpg"),
)


def example_path(name: str) -> str:
    """The file of the example picture ``name`` (``"astronaut.jpg"``), from the package's data."""
    path = importlib.resources.files("visprog.apps").joinpath("examples", name)
    if not path.is_file():
        raise FileNotFoundError(f"visprog/apps/examples/{name}: the example picture is missing from the package")
    return str(path)


def example_rows() -> list[list[str | None]]:
    """The examples as rows of ``[image, left, right, text]`` (file paths; ``None`` where there is no picture)."""
    rows: list[list[str | None]] = []
    for e in EXAMPLES:
        pictures = [example_path(name) if name else None for name in (e.image, e.left, e.right)]
        rows.append([*pictures, e.text])
    return rows


class TraceFiles:
    """Writes traces as ``visprog-trace.html`` and ``visprog-trace.json``, each pair in a folder of its own.

    The folders live under ``root`` (default: a new temporary folder); only
    the ``keep`` newest are kept (the app hands each file to Gradio, which
    serves its own copy).
    """

    def __init__(self, root: str | Path | None = None, *, keep: int = 16) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="visprog-web-"))
        self.keep = keep
        self._written: list[Path] = []
        self._lock = threading.Lock()

    def write(self, trace: Trace, text: str | None = None) -> tuple[Path, Path]:
        """The trace's page (headed by ``text``, the question or instruction) and its JSON, written to files."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="trace-", dir=self.root))
        page = folder / "visprog-trace.html"
        page.write_text(trace_html(trace, text=text), encoding="utf-8")
        data = folder / "visprog-trace.json"
        data.write_text(trace.to_json(indent=1), encoding="utf-8")
        with self._lock:
            self._written.append(folder)
            old, self._written = self._written[: -self.keep], self._written[-self.keep :]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        return page, data
