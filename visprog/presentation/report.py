"""A trace as one self-contained HTML page: the visual rationale of a run.

:func:`trace_html` writes a complete document (inline CSS, images embedded as
base64 ``data:`` URIs, no JavaScript, no external URL): the question or
instruction, the result, the program with syntax colouring, then one card per
step with its line, inputs and output drawn as pictures. Objects are drawn as
numbered, labelled boxes (and masks as coloured overlays) over the image the
step looked at; a failed step is shown in red with its error, among the steps
that ran (those that did not need it run after it), and the result says which
steps ran after it and which were not run (as :meth:`Trace.to_text
<visprog.running.tracing.Trace.to_text>` does). :func:`save_html` writes the page to a file.
:func:`trace_fragment` is the same page without the document wrapper, for
notebooks (``import visprog`` has IPython show a trace with it); its CSS is
scoped to the ``.visprog-trace`` element so it does not restyle the notebook.
Each takes a :class:`~visprog.running.tracing.Trace` or its data
(:meth:`Trace.to_dict <visprog.running.tracing.Trace.to_dict>`, read back with
``Trace.from_dict``).

Pictures are for looking, so they are embedded small: outputs and the result
are downscaled to ``max_image_side`` (default :data:`MAX_SIDE`) on their
longest side and inputs to :data:`THUMB_SIDE`; a downscaled picture gives its
original size in its ``alt`` and ``title``. With ``image_format="auto"`` (the
default) each picture is embedded in the format that suits it: photographs as
JPEG (quality :data:`JPEG_QUALITY`), and as PNG what JPEG would spoil or not
shrink: transparency, masks (1-bit images), palette images, and small or flat
pictures whose PNG is the smaller. ``"png"`` embeds every picture losslessly,
``"jpeg"`` every picture without transparency as JPEG. Only the page is
affected: the trace's images (the run's outputs) are never changed.

Element structure, stable for tests and tools::

    <div class="visprog-trace" data-status="ok|failed">
      <header class="trace-head"> <h1 class="title"> <p class="question"> ...
      <div class="result" data-type="image|text|...">
      <pre class="program"><code><span class="line ran|failed|not-run" data-line="N">
          <span class="tok-target|tok-module|tok-arg|tok-var|tok-str|tok-num|tok-const|tok-comment|tok-punct">
      <section class="step ok|failed|skipped" data-index data-line data-target data-module data-status>
          <div class="step-inputs"> <dl class="args"> <dt>name <dd>value
          <div class="step-output"> <div class="output"> (<img class="output"> | <div class="answer"> | ...)
          <div class="error">  (failed steps only)
          <span class="timing" data-ms> <span class="batch">

The page's styles are package data (``trace.css``); pictures are embedded by
:mod:`visprog.presentation.pictures`. Drawing uses PIL with the packaged
DejaVu Sans; nothing here imports torch.
"""

from __future__ import annotations

import html
import importlib.resources
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from visprog.language.syntax import split_lines
from visprog.language.values import Detection, Template
from visprog.presentation.drawing import colour as _colour
from visprog.presentation.drawing import draw_objects
from visprog.presentation.drawing import scaled as _scaled
from visprog.presentation.highlight import highlight_line, highlight_program
from visprog.presentation.pictures import FORMATS, IMAGE_FORMAT, JPEG_QUALITY, ImageFormat, Picture, picture
from visprog.running.tracing import StepRecord, Trace

__all__ = [
    "IMAGE_FORMAT",
    "JPEG_QUALITY",
    "MAX_SIDE",
    "THUMB_SIDE",
    "ImageFormat",
    "draw_objects",
    "highlight_program",
    "save_html",
    "trace_fragment",
    "trace_html",
]

#: Longest side, in pixels, of an embedded output picture (larger images are downscaled).
MAX_SIDE = 512
#: Longest side of an embedded input thumbnail.
THUMB_SIDE = 240
#: At most this many items of a list (or objects of an Objects value) are listed.
MAX_ITEMS = 40


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# --- pictures -------------------------------------------------------------------------------


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# --- values ---------------------------------------------------------------------------------


def _is_objects(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Detection) for v in value)


def _describe(value: Any) -> str:
    if isinstance(value, PILImage.Image):
        return f"image {value.width}×{value.height}"
    return f"{len(value)} object{'s' if len(value) != 1 else ''}"


def _is_picture(value: Any) -> bool:
    return isinstance(value, PILImage.Image) or _is_objects(value)


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return _number(value)
    return str(value)


def _type_name(value: Any) -> str:
    if isinstance(value, PILImage.Image):
        return "image"
    if _is_objects(value):
        return "objects"
    if isinstance(value, Template):
        return "expression"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "none"
    if isinstance(value, list):
        return "list"
    return "other"


def _seconds(s: float) -> str:
    ms = s * 1000
    if ms < 0.01:
        return "<0.01 ms"
    if ms < 10:
        return f"{ms:.2f} ms"
    return f"{ms:.1f} ms" if ms < 1000 else f"{s:.2f} s"


def _check_options(max_image_side: int | None, image_format: str) -> None:
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(map(repr, FORMATS))}, got {image_format!r}")
    if max_image_side is not None and (isinstance(max_image_side, bool) or max_image_side < 1):
        raise ValueError(f"max_image_side must be a positive number of pixels or None, got {max_image_side!r}")


class _Page:
    """Renders one trace; embeds each picture once per size (images are kept alive by the trace)."""

    def __init__(
        self, trace: Trace, *, max_image_side: int | None = MAX_SIDE, image_format: ImageFormat = IMAGE_FORMAT
    ) -> None:
        _check_options(max_image_side, image_format)
        self.trace = trace
        self.max_side = max_image_side
        self.thumb_side = THUMB_SIDE if max_image_side is None else min(THUMB_SIDE, max_image_side)
        self.image_format = image_format
        self.records = sorted(trace.records, key=lambda r: r.index)
        self._uris: dict[tuple[int, int | None], Picture] = {}
        self._drawn: dict[tuple[int, int, int | None], Picture] = {}
        self.first_image = next((v for v in trace.inputs.values() if isinstance(v, PILImage.Image)), None)
        self.failed = next((r for r in trace.records if r.error is not None), None)
        self.skipped = self._skipped()
        # The image each Objects value was found on, by identity, to draw it where it is used again.
        self.found_on: dict[int, PILImage.Image] = {}
        for r in self.records:
            if _is_objects(r.output) and id(r.output) not in self.found_on:
                base = self.step_image(r) or self.objects_base(r.inputs.values()) or self.first_image
                if base is not None:
                    self.found_on[id(r.output)] = base

    def _skipped(self) -> set[int]:
        """Indices of steps that were started with a failing step but never ran (no output, no time, no error)."""
        if self.failed is None:
            return set()
        return {r.index for r in self.trace.records if r.error is None and r.output is None and r.seconds == 0.0}

    def status(self, r: StepRecord) -> str:
        if r.error is not None:
            return "failed"
        return "skipped" if r.index in self.skipped else "ok"

    @staticmethod
    def step_image(r: StepRecord) -> PILImage.Image | None:
        """The image argument of the step: ``image`` if it is one, else the first image among its inputs."""
        if isinstance(r.inputs.get("image"), PILImage.Image):
            image: PILImage.Image = r.inputs["image"]
            return image
        return next((v for v in r.inputs.values() if isinstance(v, PILImage.Image)), None)

    def objects_base(self, values: Any) -> PILImage.Image | None:
        for v in values:
            if _is_objects(v) and id(v) in self.found_on:
                return self.found_on[id(v)]
        return None

    # -- pictures

    def image_uri(self, image: PILImage.Image, side: int | None) -> Picture:
        key = (id(image), side)
        if key not in self._uris:
            self._uris[key] = picture(_scaled(image, side), image, self.image_format)
        return self._uris[key]

    def objects_uri(self, base: PILImage.Image, objects: list[Detection], side: int | None) -> Picture:
        key = (id(base), id(objects), side)
        if key not in self._drawn:
            drawn = draw_objects(base, objects, side)
            self._drawn[key] = picture(drawn, base, self.image_format, annotated=True)
        return self._drawn[key]

    @staticmethod
    def img(picture: Picture, role: str, alt: str) -> str:
        """The ``<img>``; a downscaled picture says so, with its original size, in ``alt`` and ``title``."""
        cls = {"result": "output result-image"}.get(role, role)
        w, h = picture.width, picture.height
        title = ""
        if picture.downscaled:
            alt = f"{alt}, shown downscaled to {w}x{h}"
            title = f' title="{picture.source_width}×{picture.source_height} pixels, shown downscaled to {w}×{h}"'
        return f'<img class="{cls}" src="{picture.src}" width="{w}" height="{h}" alt="{_esc(alt)}"{title}>'

    # -- values

    def objects_html(self, value: list[Detection], base: PILImage.Image | None, *, role: str, side: int | None) -> str:
        n = len(value)
        head = f'<div class="caption">{n} object{"s" if n != 1 else ""}</div>'
        picture = ""
        if base is not None:
            alt = f"{n} objects drawn on an image of {base.width}x{base.height}"
            picture = self.img(self.objects_uri(base, value, side), role, alt)
        items = []
        for i, obj in enumerate(value[:MAX_ITEMS]):
            x0, y0, x1, y1 = obj.int_box()
            mask = ' <span class="tag">mask</span>' if obj.mask is not None else ""
            items.append(
                f'<li><span class="swatch" style="background:{_hex(_colour(i))}"></span>'
                f'<span class="label">{_esc(obj.label or "(no label)")}</span> '
                f'<span class="score">{obj.score:.2f}</span> '
                f'<span class="box">[{x0}, {y0}, {x1}, {y1}]</span>{mask}</li>'
            )
        more = f'<li class="more">… and {n - MAX_ITEMS} more</li>' if n > MAX_ITEMS else ""
        return f'<div class="objects-value">{picture}{head}<ol class="objects">{"".join(items)}{more}</ol></div>'

    def value_html(self, value: Any, *, role: str, base: PILImage.Image | None, side: int | None) -> str:
        """``role`` is ``input``, ``output`` or ``result``: outputs and results are shown large."""
        if isinstance(value, PILImage.Image):
            picture = self.img(self.image_uri(value, side), role, f"image {value.width}x{value.height}")
            return (
                f'<figure class="image-value">{picture}<figcaption>{value.width}×{value.height}</figcaption></figure>'
            )
        if _is_objects(value):
            return self.objects_html(value, self.found_on.get(id(value), base), role=role, side=side)
        if isinstance(value, Detection):
            return self.objects_html([value], base, role=role, side=side)
        if isinstance(value, Template):
            return f'<code class="bound-expr">{_esc(value)}</code>'
        if isinstance(value, list):
            if not value:
                if base is not None and role != "input":
                    picture = self.img(self.image_uri(base, side), role, "no objects found")
                    return (
                        f'<div class="objects-value">{picture}<div class="caption">empty list: no objects</div></div>'
                    )
                return '<span class="value empty">empty list</span>'
            items = "".join(
                f"<li>{self.value_html(v, role='item', base=base, side=self.thumb_side)}</li>"
                for v in value[:MAX_ITEMS]
            )
            more = f'<li class="more">… and {len(value) - MAX_ITEMS} more</li>' if len(value) > MAX_ITEMS else ""
            return f'<ol class="list">{items}{more}</ol>'
        kind = _type_name(value)
        if kind == "other":
            text = repr(value)
            text = text if len(text) <= 300 else text[:297] + "..."
            return f'<span class="value other">{_esc(text)}</span>'
        if role in ("output", "result"):
            return f'<div class="answer" data-type="{kind}">{_esc(_scalar_text(value))}</div>'
        shown = repr(value) if isinstance(value, str) else _scalar_text(value)
        return f'<span class="value {kind}">{_esc(shown)}</span>'

    # -- page parts

    def step_html(self, r: StepRecord) -> str:
        status = self.status(r)
        base = self.step_image(r) or self.objects_base(r.inputs.values()) or self.first_image
        module = "assign" if r.module == "=" else r.module
        meta = [f'<span class="module-badge">{_esc(module)}</span>']
        if status == "ok":
            meta.append(f'<span class="timing" data-ms="{r.seconds * 1000:.3f}">{_esc(_seconds(r.seconds))}</span>')
            if r.batch > 1:
                meta.append(f'<span class="batch" data-batch="{r.batch}">batch of {r.batch}</span>')
        args = "".join(
            f'<dt>{_esc(name)}</dt><dd data-arg="{_esc(name)}">'
            f"{self.value_html(v, role='input', base=base, side=self.thumb_side)}</dd>"
            for name, v in r.inputs.items()
        )
        inputs = f'<dl class="args">{args}</dl>' if args else '<p class="none">none</p>'
        passed = next((name for name, v in r.inputs.items() if v is r.output and _is_picture(v)), None)
        if status == "ok" and passed is not None:
            # Result(var=IMAGE0), X=BOX0: the picture shown as the input; not embedded again.
            output = f'<p class="same">{_describe(r.output)}: the value of <code>{_esc(passed)}</code>, unchanged</p>'
        elif status == "ok":
            output = self.value_html(r.output, role="output", base=base, side=self.max_side)
        elif status == "failed":
            output = '<p class="none">no output: the step failed</p>'
        else:
            output = '<p class="none">not run: a step of its batch failed</p>'
        error = ""
        if r.error is not None:
            error = f'<div class="error" role="alert"><strong>Error</strong><pre>{_esc(r.error)}</pre></div>'
        if r.notes:
            error += '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in r.notes) + "</ul>"
        return (
            f'<section class="step {status}" id="line-{r.line}" data-index="{r.index}" data-line="{r.line}" '
            f'data-target="{_esc(r.target)}" data-module="{_esc(r.module)}" data-status="{status}">'
            f'<div class="step-head"><span class="lineno" title="line {r.line}">{r.line}</span>'
            f'<code class="source">{highlight_line(r.source)}</code>'
            f'<span class="meta">{"".join(meta)}</span></div>'
            f"{error}"
            f'<div class="step-body"><div class="step-inputs"><h3>Inputs</h3>{inputs}</div>'
            f'<div class="step-output"><h3>Output <code class="target">{_esc(r.target)}</code></h3>'
            f'<div class="output" data-type="{_type_name(r.output) if status == "ok" else "none"}">{output}</div>'
            f"</div></div></section>"
        )

    def result_html(self) -> str:
        t = self.trace
        if self.failed is not None:
            f = self.failed
            return (
                '<div class="result failed" data-type="error"><h2>Result</h2>'
                f'<p class="fail-where">The run failed at <a href="#line-{f.line}">line {f.line} '
                f"({_esc(f.module)})</a>; {_esc(t.after_failure() or '')}.</p>"
                f'<pre class="fail-message">{_esc(f.error)}</pre></div>'
            )
        if t.error is not None:
            return (
                '<div class="result failed" data-type="error"><h2>Result</h2>'
                f'<p class="fail-where">The run failed.</p><pre class="fail-message">{_esc(t.error)}</pre></div>'
            )
        name = f' <code class="target">{_esc(t.result_var)}</code>' if t.result_var else ""
        body = self.value_html(t.result, role="result", base=self.first_image, side=self.max_side)
        return f'<div class="result" data-type="{_type_name(t.result)}"><h2>Result{name}</h2>{body}</div>'

    def inputs_html(self) -> str:
        items = []
        for name, v in self.trace.inputs.items():
            items.append(
                f'<div class="program-input"><div class="input-name">{_esc(name)}</div>'
                f"{self.value_html(v, role='input', base=None, side=self.thumb_side)}</div>"
            )
        if not items:
            return ""
        heading = f"Input{'s' if len(items) > 1 else ''}"
        return f'<div class="program-inputs"><h2>{heading}</h2><div class="input-list">{"".join(items)}</div></div>'

    def program_html(self) -> str:
        ran = {r.line: self.status(r) for r in self.records}
        lines: dict[int, str] = {}
        for number, line in enumerate(split_lines(self.trace.source), start=1):
            state = ran.get(number)
            if state is not None:
                lines[number] = {"ok": "ran", "failed": "failed"}.get(state, "not-run")
            elif self.failed is not None and line.strip() and not line.strip().startswith("#"):
                lines[number] = "not-run"
        return f'<pre class="program"><code>{highlight_program(self.trace.source, lines)}</code></pre>'

    def fragment(self, title: str | None, text: str | None) -> str:
        t = self.trace
        failed = self.failed is not None or t.error is not None
        status = "failed" if failed else "ok"
        pill = '<span class="pill failed">✗ failed</span>' if failed else '<span class="pill ok">✓ completed</span>'
        n = len(self.records)
        summary = (
            f'{pill}<span class="stat">{n} step{"s" if n != 1 else ""}</span>'
            f'<span class="stat">total {_esc(_seconds(t.seconds))}</span>'
        )
        question = f'<p class="question">{_esc(text)}</p>' if text else ""
        if t.warnings:
            items = "".join(f"<li>{_esc(w)}</li>" for w in t.warnings)
            question += f'<ul class="warnings" role="note">{items}</ul>'
        steps = "".join(self.step_html(r) for r in self.records)
        inputs = self.inputs_html()
        return (
            f'<div class="visprog-trace" data-status="{status}"><style>{_CSS}</style>'
            f'<header class="trace-head"><div class="brand">VisProg · visual rationale</div>'
            f'<h1 class="title">{_esc(title or "Program trace")}</h1>{question}'
            f'<div class="summary">{summary}</div></header>'
            f'<div class="overview{"" if inputs else " single"}">{inputs}{self.result_html()}</div>'
            f'<h2 class="section-title">Program</h2>{self.program_html()}'
            f'<h2 class="section-title">Steps</h2><div class="steps">{steps}</div>'
            f'<footer class="trace-foot">Generated by visprog {_esc(_version())}</footer></div>'
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visprog")
    except PackageNotFoundError:
        return "(source tree)"


# --- public ---------------------------------------------------------------------------------


def _trace(trace: Trace | Mapping[str, Any]) -> Trace:
    """The trace itself, or the trace its data (:meth:`Trace.to_dict`) describes."""
    return trace if isinstance(trace, Trace) else Trace.from_dict(trace)


def trace_fragment(
    trace: Trace | Mapping[str, Any],
    *,
    title: str | None = None,
    text: str | None = None,
    max_image_side: int | None = MAX_SIDE,
    image_format: ImageFormat = IMAGE_FORMAT,
) -> str:
    """The trace as one ``<div class="visprog-trace">`` with its own scoped ``<style>``.

    What a notebook shows inline; :func:`trace_html` wraps it into a page. The
    options are those of :func:`trace_html`.
    """
    page = _Page(_trace(trace), max_image_side=max_image_side, image_format=image_format)
    return page.fragment(title, text)


def trace_html(
    trace: Trace | Mapping[str, Any],
    *,
    title: str | None = None,
    text: str | None = None,
    max_image_side: int | None = MAX_SIDE,
    image_format: ImageFormat = IMAGE_FORMAT,
) -> str:
    """The trace as one self-contained HTML document (no external resources, no JavaScript).

    ``trace`` is a :class:`~visprog.running.tracing.Trace` or its data (:meth:`Trace.to_dict`).
    ``title`` heads the page (default "Program trace"); ``text`` is the
    question, statement or instruction the program answers.

    ``max_image_side`` caps the longest side, in pixels, of the pictures shown
    large (outputs, the result); input thumbnails are at most
    :data:`THUMB_SIDE`. ``None`` shows outputs at full size. ``image_format``
    is ``"auto"`` (JPEG for photographs, PNG for transparency, masks, flat
    graphics and small images where it is smaller), ``"png"`` (all lossless) or
    ``"jpeg"`` (JPEG for every picture without transparency). Only the page is
    affected: the trace's images are not changed.
    """
    body = trace_fragment(trace, title=title, text=text, max_image_side=max_image_side, image_format=image_format)
    head_title = title or (f"VisProg: {text}" if text else "VisProg trace")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(head_title)}</title>"
        f"<style>{_PAGE_CSS}</style></head>\n<body>\n"
        f"{body}\n</body></html>\n"
    )


def save_html(
    trace: Trace | Mapping[str, Any],
    path: str | PathLike[str],
    *,
    title: str | None = None,
    text: str | None = None,
    max_image_side: int | None = MAX_SIDE,
    image_format: ImageFormat = IMAGE_FORMAT,
) -> Path:
    """Write :func:`trace_html` to ``path`` (UTF-8, parent folders created) and return the path."""
    page = trace_html(trace, title=title, text=text, max_image_side=max_image_side, image_format=image_format)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


_PAGE_CSS = "html{background:#eef1f5}body{margin:0;padding:24px 12px}"
#: The trace's styles (package data, ``trace.css``), every rule scoped to ``.visprog-trace``.
_CSS = importlib.resources.files("visprog.presentation").joinpath("trace.css").read_text(encoding="utf-8")
