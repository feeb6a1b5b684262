"""A trace as one self-contained HTML page: the visual rationale of a run.

:func:`trace_html` writes a complete document (inline CSS, images embedded as
base64 ``data:`` URIs, no JavaScript, no external URL): the question or
instruction, the result, the program with syntax colouring, then one card per
step with its line, inputs and output drawn as pictures. Objects are drawn as
numbered, labelled boxes (and masks as coloured overlays) over the image the
step looked at; a failed step is shown in red with its error, after the steps
that ran before it. :func:`trace_fragment` is the same page without the
document wrapper, for notebooks (``Trace._repr_html_``); its CSS is scoped to
the ``.visprog-trace`` element so it does not restyle the notebook.

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

Drawing uses PIL with the packaged DejaVu Sans; nothing here imports torch.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

from visprog.language.syntax import split_lines
from visprog.language.values import Detection, Template
from visprog.presentation.drawing import PALETTE
from visprog.presentation.drawing import font as _font

if TYPE_CHECKING:
    from visprog.running.trace import StepRecord, Trace

__all__ = [
    "IMAGE_FORMAT",
    "JPEG_QUALITY",
    "MAX_SIDE",
    "THUMB_SIDE",
    "ImageFormat",
    "draw_objects",
    "highlight_program",
    "trace_fragment",
    "trace_html",
]

#: Longest side, in pixels, of an embedded output picture (larger images are downscaled).
MAX_SIDE = 512
#: Longest side of an embedded input thumbnail.
THUMB_SIDE = 240
#: At most this many items of a list (or objects of an Objects value) are listed.
MAX_ITEMS = 40

#: How pictures are embedded: ``auto`` (JPEG or PNG, per picture), ``jpeg`` or ``png``.
ImageFormat = Literal["auto", "jpeg", "png"]
#: The default :data:`ImageFormat`.
IMAGE_FORMAT: ImageFormat = "auto"
#: JPEG quality of embedded photographs.
JPEG_QUALITY = 85
#: With ``auto``, a picture of at most this many pixels is encoded both ways and the smaller kept.
_SMALL_PIXELS = 256 * 256
#: With ``auto``, a picture of at most this many colours (a mask, a diagram) is also tried as PNG.
_FEW_COLOURS = 256
_FORMATS = ("auto", "jpeg", "png")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# --- program highlighting -------------------------------------------------------------------

# The tokens of grammar.lark, plus the comment it ignores.
_TOKEN = re.compile(
    r"""(?P<ws>[ \t\f]+)
      | (?P<comment>\#.*)
      | (?P<str>'(?:[^'\\\r\n]|\\.)*'|"(?:[^"\\\r\n]|\\.)*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<punct>[=(),\[\]])
      | (?P<error>.)""",
    re.VERBOSE,
)
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_CONSTANTS = frozenset({"True", "False", "None"})


def _span(kind: str, text: str) -> str:
    return f'<span class="tok-{kind}">{_esc(text)}</span>'


def _string_html(text: str) -> str:
    """A string token, with Eval's ``{VAR}`` placeholders marked inside it."""
    parts: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(_esc(text[last : m.start()]))
        parts.append(f'<span class="tok-placeholder">{_esc(m.group())}</span>')
        last = m.end()
    parts.append(_esc(text[last:]))
    return f'<span class="tok-str">{"".join(parts)}</span>'


def _highlight_line(line: str) -> str:
    """One program line as HTML: every token in a ``tok-*`` span, everything escaped."""
    tokens = [(m.lastgroup or "error", m.group()) for m in _TOKEN.finditer(line)]
    out: list[str] = []
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        if kind == "ws":
            out.append(_esc(text))
        elif kind == "name":
            after = next((t for k, t in tokens[i + 1 :] if k != "ws"), "")
            if after == "(":
                out.append(_span("module", text))
            elif after == "=":
                out.append(_span("target" if depth == 0 else "arg", text))
            elif text in _CONSTANTS:
                out.append(_span("const", text))
            else:
                out.append(_span("var", text))
        elif kind == "str":
            out.append(_string_html(text))
        elif kind == "punct":
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(text, 0)
            out.append(_span("punct", text))
        else:
            out.append(_span(kind, text))
    return "".join(out)


def highlight_program(source: str, line_status: dict[int, str] | None = None) -> str:
    """The program as ``<span class="line" data-line="N">`` lines of highlighted tokens.

    ``line_status`` adds a class to a line (``ran``, ``failed``, ``not-run``).
    """
    status = line_status or {}
    lines = split_lines(source)
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        cls = " ".join(c for c in ("line", status.get(number, "")) if c)
        out.append(f'<span class="{cls}" data-line="{number}">{_highlight_line(line)}</span>')
    return "".join(out)


# --- pictures -------------------------------------------------------------------------------


def _colour(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _displayable(image: PILImage.Image) -> PILImage.Image:
    """The image in a mode that resizes smoothly: RGB, L (grey, 1-bit), or RGBA when it has transparency."""
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def _scaled(image: PILImage.Image, max_side: int | None) -> PILImage.Image:
    """A copy no larger than ``max_side`` on its longest side (never enlarged; ``None``: full size).

    A palette or 1-bit image that needs no resizing keeps its mode, so PNG stores it exactly.
    """
    if image.mode in ("1", "P") and (max_side is None or max(image.size) <= max_side):
        return image.copy()
    out = _displayable(image).copy()
    if max_side is not None:
        out.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    return out


def _tag_text(i: int, obj: Detection) -> str:
    parts = [obj.label] if obj.label else [f"#{i + 1}"]
    if obj.score < 1:
        parts.append(f"{obj.score:.2f}")
    return " ".join(parts)


def draw_objects(
    image: PILImage.Image, objects: Sequence[Detection], max_side: int | None = MAX_SIDE
) -> PILImage.Image:
    """The image (downscaled to ``max_side``) with each object's mask tinted and its box labelled.

    Objects get colours in order (the first, best one in blue); a mask whose
    shape does not match the image is left out and only the box is drawn.
    """
    base = _scaled(image, max_side).convert("RGB")
    sx, sy = base.width / image.width, base.height / image.height
    overlay = PILImage.new("RGBA", base.size, (0, 0, 0, 0))
    for i, obj in enumerate(objects):
        if obj.mask is None or obj.mask.shape != (image.height, image.width):
            continue
        mask = PILImage.fromarray(obj.mask.astype(np.uint8) * 255, "L")
        mask = mask.resize(base.size, PILImage.Resampling.BILINEAR)
        fill = PILImage.new("RGBA", base.size, (*_colour(i), 110))
        overlay.paste(fill, (0, 0), mask)
        edge = mask.point(lambda v: 255 if v >= 128 else 0).filter(ImageFilter.FIND_EDGES)
        overlay.paste(PILImage.new("RGBA", base.size, (*_colour(i), 255)), (0, 0), edge)
    out = PILImage.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(out)
    short = min(out.size)
    width = max(2, round(short / 170))
    font = _font(max(11, round(short / 34)))
    pad = 3
    # Best object last, so its box and tag are on top.
    for i in reversed(range(len(objects))):
        obj, colour = objects[i], _colour(i)
        x0, y0, x1, y1 = obj.box
        bx0 = min(max(round(x0 * sx), 0), out.width - 1)
        by0 = min(max(round(y0 * sy), 0), out.height - 1)
        bx1 = min(max(round(x1 * sx) - 1, bx0), out.width - 1)
        by1 = min(max(round(y1 * sy) - 1, by0), out.height - 1)
        draw.rectangle((bx0, by0, bx1, by1), outline=colour, width=width)
        text = _tag_text(i, obj)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        ty = by0 - th if by0 >= th else by0
        tx = min(bx0, max(0, out.width - tw))
        draw.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, font=font, fill=_text_colour(colour))
    return out


def _png_bytes(image: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(image: PILImage.Image, *, annotated: bool) -> bytes:
    """JPEG at :data:`JPEG_QUALITY`; ``annotated`` pictures keep full colour resolution (4:4:4).

    Halving the colour resolution (4:2:0, the usual for photographs) smears the
    colour of thin boxes and labels, which is what tells the objects apart.
    """
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True, subsampling=0 if annotated else 2)
    return buf.getvalue()


def _encode(
    image: PILImage.Image, image_format: ImageFormat, *, source_mode: str, annotated: bool
) -> tuple[str, bytes]:
    """(MIME type, bytes) of ``image`` (a :func:`_scaled` picture) as it is embedded.

    ``auto``: PNG for transparency, 1-bit images (masks, also when resized)
    and palette images shown at their own size; JPEG for other pictures,
    except that small pictures, flat ones (at most :data:`_FEW_COLOURS`
    colours: masks, graphics) and resized palette images (``source_mode``) are
    encoded both ways and the smaller kept. ``annotated``: boxes and labels are
    drawn on it.
    """
    if image_format == "png":
        return "image/png", _png_bytes(image)
    if image_format == "jpeg" and image.mode in ("1", "P"):
        image = _displayable(image)
    if image.mode not in ("RGB", "L") or (image_format == "auto" and source_mode == "1"):
        # transparency (JPEG would lose it), a palette image, a mask
        return "image/png", _png_bytes(image)
    jpeg = _jpeg_bytes(image, annotated=annotated)
    if image_format == "auto" and (
        image.width * image.height <= _SMALL_PIXELS or source_mode == "P" or image.getcolors(_FEW_COLOURS) is not None
    ):
        png = _png_bytes(image)
        if len(png) <= len(jpeg):
            return "image/png", png
    return "image/jpeg", jpeg


class _Picture(NamedTuple):
    """An embedded picture: its ``data:`` URI, its size on the page and the size it was drawn from."""

    src: str
    width: int
    height: int
    source_width: int
    source_height: int

    @property
    def downscaled(self) -> bool:
        return (self.width, self.height) != (self.source_width, self.source_height)


def _picture(
    shown: PILImage.Image, source: PILImage.Image, image_format: ImageFormat, *, annotated: bool = False
) -> _Picture:
    mime, raw = _encode(shown, image_format, source_mode=source.mode, annotated=annotated)
    src = f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")
    return _Picture(src, shown.width, shown.height, source.width, source.height)


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
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(map(repr, _FORMATS))}, got {image_format!r}")
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
        self._uris: dict[tuple[int, int | None], _Picture] = {}
        self._drawn: dict[tuple[int, int, int | None], _Picture] = {}
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

    def image_uri(self, image: PILImage.Image, side: int | None) -> _Picture:
        key = (id(image), side)
        if key not in self._uris:
            self._uris[key] = _picture(_scaled(image, side), image, self.image_format)
        return self._uris[key]

    def objects_uri(self, base: PILImage.Image, objects: list[Detection], side: int | None) -> _Picture:
        key = (id(base), id(objects), side)
        if key not in self._drawn:
            drawn = draw_objects(base, objects, side)
            self._drawn[key] = _picture(drawn, base, self.image_format, annotated=True)
        return self._drawn[key]

    @staticmethod
    def img(picture: _Picture, role: str, alt: str) -> str:
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
        return (
            f'<section class="step {status}" id="line-{r.line}" data-index="{r.index}" data-line="{r.line}" '
            f'data-target="{_esc(r.target)}" data-module="{_esc(r.module)}" data-status="{status}">'
            f'<div class="step-head"><span class="lineno" title="line {r.line}">{r.line}</span>'
            f'<code class="source">{_highlight_line(r.source)}</code>'
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
                f"({_esc(f.module)})</a>; the steps before it are shown below.</p>"
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


def trace_fragment(
    trace: Trace,
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
    return _Page(trace, max_image_side=max_image_side, image_format=image_format).fragment(title, text)


def trace_html(
    trace: Trace,
    *,
    title: str | None = None,
    text: str | None = None,
    max_image_side: int | None = MAX_SIDE,
    image_format: ImageFormat = IMAGE_FORMAT,
) -> str:
    """The trace as one self-contained HTML document (no external resources, no JavaScript).

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


_PAGE_CSS = "html{background:#eef1f5}body{margin:0;padding:24px 12px}"

_CSS = """
.visprog-trace{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--card:#fff;--soft:#f6f8fa;--accent:#0969da;
--red:#cf222e;--red-soft:#ffebe9;--green:#1a7f37;--green-soft:#dafbe1;
--mono:ui-monospace,SFMono-Regular,"DejaVu Sans Mono",Menlo,Consolas,monospace;
font-family:system-ui,-apple-system,"Segoe UI","DejaVu Sans",Roboto,Helvetica,Arial,sans-serif;
color:var(--fg);background:#eef1f5;max-width:1120px;margin:0 auto;padding:8px;font-size:14px;line-height:1.5;
text-align:left;box-sizing:border-box}
.visprog-trace *{box-sizing:border-box}
.visprog-trace h1,.visprog-trace h2,.visprog-trace h3{margin:0;font-weight:600;line-height:1.3}
.visprog-trace code,.visprog-trace pre{font-family:var(--mono);font-size:13px}
.visprog-trace pre{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.visprog-trace img{display:block;max-width:100%;height:auto;border-radius:6px;background:var(--soft)}
.visprog-trace .trace-head{background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:20px 24px;margin-bottom:16px}
.visprog-trace .brand{font-size:12px;letter-spacing:.06em;text-transform:uppercase;color:var(--muted)}
.visprog-trace .title{font-size:22px;margin:4px 0 6px}
.visprog-trace .question{font-size:17px;margin:6px 0 10px;padding:8px 14px;border-left:4px solid var(--accent);
background:#f1f8ff;border-radius:0 8px 8px 0;overflow-wrap:anywhere}
.visprog-trace .summary{display:flex;flex-wrap:wrap;gap:8px;align-items:center;color:var(--muted)}
.visprog-trace .stat{padding:2px 10px;background:var(--soft);border:1px solid var(--line);border-radius:999px}
.visprog-trace .pill{padding:2px 10px;border-radius:999px;font-weight:600}
.visprog-trace .pill.ok{background:var(--green-soft);color:var(--green)}
.visprog-trace .pill.failed{background:var(--red-soft);color:var(--red)}
.visprog-trace .overview{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1.4fr);gap:16px;align-items:start;
margin-bottom:16px}
.visprog-trace .overview.single{grid-template-columns:minmax(0,1fr)}
.visprog-trace .program-inputs,.visprog-trace .result{background:var(--card);border:1px solid var(--line);
border-radius:12px;padding:16px 20px}
.visprog-trace .program-inputs h2,.visprog-trace .result h2{font-size:15px;margin-bottom:10px}
.visprog-trace .input-list{display:flex;flex-wrap:wrap;gap:12px 16px;align-items:flex-start}
.visprog-trace .program-input{min-width:0;max-width:100%}
.visprog-trace .input-name{font-family:var(--mono);font-size:12px;color:var(--muted);margin-bottom:4px}
.visprog-trace .result{border-top:4px solid var(--green)}
.visprog-trace .result.failed{border-top-color:var(--red);background:var(--red-soft)}
.visprog-trace img.result-image{max-height:420px;width:auto}
.visprog-trace .fail-where{margin:0 0 8px;color:var(--red);font-weight:600}
.visprog-trace .fail-where a{color:inherit}
.visprog-trace .fail-message{color:var(--red)}
.visprog-trace .section-title{font-size:16px;margin:22px 0 10px;color:var(--fg)}
.visprog-trace .program{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:12px 0;
overflow-x:auto}
.visprog-trace .program .line{display:block;padding:1px 16px 1px 56px;position:relative;min-height:1.5em}
.visprog-trace .program .line::before{content:attr(data-line);position:absolute;left:0;width:40px;
text-align:right;color:#8c959f;user-select:none}
.visprog-trace .program .line.failed{background:var(--red-soft);box-shadow:inset 3px 0 var(--red)}
.visprog-trace .program .line.not-run{opacity:.45}
.visprog-trace .tok-target{color:#8250df;font-weight:600}
.visprog-trace .tok-module{color:#0550ae;font-weight:600}
.visprog-trace .tok-arg{color:#bc4c00}
.visprog-trace .tok-var{color:#1b7c83}
.visprog-trace .tok-str{color:#116329}
.visprog-trace .tok-placeholder{color:#1b7c83;font-weight:600}
.visprog-trace .tok-num{color:#9a6700}
.visprog-trace .tok-const{color:#0550ae;font-style:italic}
.visprog-trace .tok-comment{color:#6e7781;font-style:italic}
.visprog-trace .tok-punct{color:#6e7781}
.visprog-trace .tok-error{color:var(--red);text-decoration:underline wavy}
.visprog-trace .steps{display:flex;flex-direction:column;gap:14px}
.visprog-trace .step{background:var(--card);border:1px solid var(--line);border-radius:12px;overflow:hidden}
.visprog-trace .step-head{display:flex;align-items:center;gap:12px;padding:10px 16px;background:var(--soft);
border-bottom:1px solid var(--line)}
.visprog-trace .lineno{flex:none;min-width:28px;height:28px;padding:0 6px;border-radius:8px;background:#fff;
border:1px solid var(--line);display:inline-flex;align-items:center;justify-content:center;
font-family:var(--mono);font-size:12px;color:var(--muted)}
.visprog-trace .source{flex:1 1 auto;min-width:0;overflow-wrap:anywhere;white-space:pre-wrap}
.visprog-trace .meta{flex:none;display:flex;gap:6px;align-items:center}
.visprog-trace .module-badge,.visprog-trace .timing,.visprog-trace .batch{font-size:12px;padding:1px 8px;
border-radius:999px;white-space:nowrap}
.visprog-trace .module-badge{background:#ddf4ff;color:#0550ae;font-weight:600}
.visprog-trace .timing{background:#fff;border:1px solid var(--line);color:var(--muted)}
.visprog-trace .batch{background:#fff8c5;color:#7d4e00}
.visprog-trace .step-body{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1.5fr)}
.visprog-trace .step-inputs,.visprog-trace .step-output{padding:12px 16px}
.visprog-trace .step-inputs{border-right:1px solid var(--line)}
.visprog-trace .step h3{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);
margin-bottom:8px}
.visprog-trace .step h3 .target{text-transform:none;letter-spacing:0;color:#8250df}
.visprog-trace .args{margin:0;display:grid;grid-template-columns:auto minmax(0,1fr);gap:6px 12px}
.visprog-trace .args dt{font-family:var(--mono);font-size:12px;color:#bc4c00;padding-top:1px}
.visprog-trace .args dd{margin:0;min-width:0;overflow-wrap:anywhere}
.visprog-trace img.input{max-height:150px;width:auto}
.visprog-trace img.output{max-height:360px;width:auto}
.visprog-trace .list img{max-height:120px;width:auto}
.visprog-trace figure{margin:0}
.visprog-trace figcaption,.visprog-trace .caption{font-size:12px;color:var(--muted);margin-top:4px}
.visprog-trace .value{font-family:var(--mono);font-size:13px}
.visprog-trace .value.text{color:#116329}
.visprog-trace .value.number,.visprog-trace .value.bool{color:#9a6700}
.visprog-trace .same{margin:0;color:var(--muted)}
.visprog-trace .value.empty,.visprog-trace .none{color:var(--muted);font-style:italic;margin:0}
.visprog-trace .bound-expr{display:block;padding:6px 10px;background:var(--soft);border:1px solid var(--line);
border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere}
.visprog-trace .answer{display:inline-block;font-size:20px;font-weight:600;padding:6px 16px;border-radius:8px;
background:#f1f8ff;border:1px solid #b6e3ff;color:#0a3069;overflow-wrap:anywhere;max-width:100%}
.visprog-trace .result .answer{font-size:26px}
.visprog-trace .objects,.visprog-trace .list{margin:6px 0 0;padding-left:22px}
.visprog-trace .objects li{font-size:12px;color:var(--muted)}
.visprog-trace .objects .label{color:var(--fg);font-weight:600}
.visprog-trace .objects .score,.visprog-trace .objects .box{font-family:var(--mono)}
.visprog-trace .swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;
vertical-align:middle}
.visprog-trace .tag{font-size:11px;padding:0 5px;border-radius:4px;background:var(--soft);
border:1px solid var(--line)}
.visprog-trace .step.failed{border-color:var(--red);box-shadow:inset 4px 0 var(--red)}
.visprog-trace .step.failed .step-head{background:var(--red-soft);border-bottom-color:#ffcecb}
.visprog-trace .step.failed .lineno{border-color:var(--red);color:var(--red)}
.visprog-trace .error{margin:12px 16px 0;padding:10px 14px;border-radius:8px;background:var(--red-soft);
border:1px solid #ffcecb;color:var(--red)}
.visprog-trace .error strong{display:block;font-size:12px;text-transform:uppercase;letter-spacing:.05em;
margin-bottom:2px}
.visprog-trace .error pre{color:var(--red)}
.visprog-trace .step.skipped{opacity:.6}
.visprog-trace .trace-foot{margin:18px 0 4px;text-align:center;font-size:12px;color:var(--muted)}
@media (max-width:760px){.visprog-trace .overview,.visprog-trace .step-body{grid-template-columns:minmax(0,1fr)}
.visprog-trace .step-inputs{border-right:none;border-bottom:1px solid var(--line)}
.visprog-trace .step-head{flex-wrap:wrap}}
"""
