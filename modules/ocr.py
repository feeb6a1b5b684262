"""Ocr and Text: read the text in an image (PP-OCR text detection and recognition, in ONNX, through RapidOCR).

``Ocr`` reads all of an image's text as one string. ``Text`` gives the text
lines as objects, each labelled with what it says, or, with a query, the
places where that text is written.

Backend (``--backend Ocr=NAME``, ``--backend Text=NAME``):

- ``rapidocr`` (the only one): RapidOCR (the ``rapidocr`` package, Apache-2.0)
  on ONNX Runtime's CPU provider, with the PP-OCRv6 small detection and
  recognition models that its wheel ships (Apache-2.0): nothing to download.
  The recognition model reads Chinese, Japanese, English and most languages
  written in Latin letters. ``--model Ocr=FOLDER`` (and ``--model Text=FOLDER``)
  takes a folder of other PP-OCR ONNX models: one ``*det*.onnx``, one
  ``*rec*.onnx`` with its character list in the ONNX metadata (RapidOCR's
  exports have it) or in the one ``*.txt`` file of the folder, and optionally
  one ``*cls*.onnx``, the text-direction classifier that ``upside_down`` uses.
  Install: ``pip install 'visprog[models]'`` (rapidocr and onnxruntime).

The engine loads once per runtime and model folder (the runtime's model pool),
shared by Ocr and Text; an image is read once per run and settings (the run
cache), so ``Ocr`` and ``Text`` on the same image cost one pass.

Options (``[modules.Ocr]`` / ``[modules.Text]`` in the config file, ``--option Ocr.NAME=VALUE``):

- ``max_side`` (1600): a larger image is scaled down so that its longer side
  is at most this many pixels, which bounds the work on any image;
- ``min_side`` (320): a smaller image (a crop of a sign, say) is scaled up so
  that its shorter side is at least this many pixels, never past ``max_side``:
  the models read text a few dozen pixels high best;
- ``min_score`` (0.5): the recognition confidence a line needs;
- ``upside_down`` (false): also read lines turned upside down, with the
  text-direction classifier (a pass per line; it can turn small upright text
  the wrong way).

Reading order: lines whose heights overlap by half form a row; rows go top to
bottom, the lines of a row left to right. Ocr joins the lines of a row with a
space and the rows with a newline. Text's objects are in the frame of its
image, as Loc's are: boxes in the image's pixels (the scaling above undone),
the upright bounds of each (possibly slanted) line.
"""

from __future__ import annotations

import difflib
import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visprog.errors import ConfigError
from visprog.language.signatures import Option, module, not_empty
from visprog.language.values import Detection, Image, Objects
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

if TYPE_CHECKING:  # numpy is imported by the functions that use it: loading the module stays cheap
    import numpy as np

__all__ = [
    "BACKENDS",
    "OPTIONS",
    "PACKAGES",
    "Line",
    "Ocr",
    "Text",
    "Word",
    "bundled_folder",
    "find_query",
    "matches",
    "model_files",
    "read_lines",
    "reading_order",
    "rows",
]

#: The Python packages the ``rapidocr`` backend imports, and how to install them.
PACKAGES = ("rapidocr", "onnxruntime")
INSTALL = "pip install 'visprog[models]'"

#: A query word this long or longer also matches a word that differs a little (an OCR slip).
FUZZY_MIN_LENGTH = 5
#: How alike two such words must be (difflib's ratio: one wrong letter in five is 0.8).
FUZZY_CUTOFF = 0.8

OPTIONS = [
    Option("max_side", int, 1600, "larger images are scaled down to this longer side, in pixels (bounds the work)"),
    Option("min_side", int, 320, "smaller images are scaled up to this shorter side, in pixels (not past max_side)"),
    Option("min_score", float, 0.5, "the recognition confidence a line needs"),
    Option("upside_down", bool, False, "also read lines turned upside down (text-direction classifier)"),
]


@dataclass(frozen=True)
class Word:
    """One word as read: its text, its upright box in the image's pixels, the recognition confidence."""

    text: str
    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class Line:
    """One line of text as read: its text, box and confidence, and its words (at least one)."""

    text: str
    box: tuple[float, float, float, float]
    score: float
    words: tuple[Word, ...]


# --- the engine -------------------------------------------------------------------


def _require_packages(module_name: str) -> None:
    missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"{module_name}: the rapidocr backend needs the packages {' and '.join(PACKAGES)}, "
            f"and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: {INSTALL}"
        )


def bundled_folder() -> str:
    """The folder of the models that the rapidocr wheel ships."""
    spec = importlib.util.find_spec("rapidocr")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(f"the rapidocr package is not installed: {INSTALL}")
    return str(Path(locations[0]) / "models")


def _one(folder: Path, pattern: str, required: bool, what: str) -> Path | None:
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found and not required:
        return None
    names = ", ".join(p.name for p in found) or "none"
    raise ConfigError(f"expected one {pattern} file ({what}) in the OCR model folder {folder}, found: {names}")


def model_files(folder: str) -> dict[str, str]:
    """RapidOCR's settings for the PP-OCR models in ``folder``: detection, recognition, and, when the folder
    has them, the text-direction classifier and a character list. A :class:`ConfigError` says what is missing."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ConfigError(
            f"the OCR model folder {folder} {what}; give a folder with one *det*.onnx, one *rec*.onnx "
            "and optionally one *cls*.onnx (PP-OCR models in ONNX)"
        )
    files = {
        "Det.model_path": _one(path, "*det*.onnx", True, "text detection"),
        "Rec.model_path": _one(path, "*rec*.onnx", True, "text recognition"),
        "Cls.model_path": _one(path, "*cls*.onnx", False, "text direction"),
        "Rec.rec_keys_path": _one(path, "*.txt", False, "the recognition model's characters"),
    }
    return {key: str(p) for key, p in files.items() if p is not None}


class _Engine:
    """A RapidOCR engine; one read at a time (ONNX Runtime already spreads each over the cores)."""

    def __init__(self, ocr: Any, has_cls: bool) -> None:
        self.ocr = ocr
        self.has_cls = has_cls
        self.lock = threading.Lock()

    def read(self, bgr: np.ndarray, upside_down: bool) -> Any:
        with self.lock:
            return self.ocr(bgr, use_cls=upside_down and self.has_cls)


def _load_engine(folder: str, placement: Placement) -> _Engine:
    from rapidocr import RapidOCR

    files = model_files(folder)
    params: dict[str, Any] = {
        "Global.log_level": "error",
        "Global.text_score": 0.0,  # min_score is applied here, per module
        "Global.use_cls": False,
        "Global.use_preprocess_img": False,  # the image comes already scaled (_scale)
        "Global.return_word_box": True,
        "Global.model_root_dir": str(Path(files["Det.model_path"]).parent),
        # detection at the size the image comes in (rounded to a multiple of 32)
        "Det.limit_type": "max",
        "Det.limit_side_len": 1 << 16,
        **files,
    }
    return _Engine(RapidOCR(params=params), "Cls.model_path" in files)


def _engine(ctx: Context) -> _Engine:
    _require_packages(ctx.module)
    chosen = ctx.options.get("model")
    folder = str(Path(str(chosen)).expanduser()) if chosen else bundled_folder()
    model_files(folder)  # a folder without the models fails here, with what it lacks
    return load_model(ctx, _load_engine, model_id=folder, on_device=False)


# --- reading ----------------------------------------------------------------------


def _positive(ctx: Context, name: str, least: int) -> int:
    value = int(ctx.option(name))
    if value < least:
        raise ConfigError(f"{ctx.module} option '{name}' must be at least {least} pixels, got {value}")
    return value


def _scale(size: tuple[int, int], max_side: int, min_side: int) -> float:
    """The factor that brings an image's shorter side up to ``min_side`` and its longer side down to ``max_side``
    (the longer side wins)."""
    w, h = size
    factor = max(1.0, min_side / min(w, h))
    return min(factor, max_side / max(w, h))


def _bgr(image: Image, factor: float) -> np.ndarray:
    """The image as OpenCV's 8-bit BGR, scaled by ``factor``; transparent pixels become white."""
    import numpy as np
    from PIL import Image as PILImage

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = PILImage.new("RGBA", image.size, (255, 255, 255, 255))
        image = PILImage.alpha_composite(background, image.convert("RGBA"))
    rgb = image.convert("RGB")
    if factor != 1.0:
        w, h = rgb.size
        new = (max(1, round(w * factor)), max(1, round(h * factor)))
        rgb = rgb.resize(new, PILImage.Resampling.LANCZOS if factor < 1 else PILImage.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def _bounds(points: Any, factor: float, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The upright box of a polygon read on the scaled image, in the image's pixels, clipped to it."""
    xs = [float(p[0]) / factor for p in points]
    ys = [float(p[1]) / factor for p in points]
    w, h = size
    x0, x1 = min(max(min(xs), 0.0), w), min(max(max(xs), 0.0), w)
    y0, y1 = min(max(min(ys), 0.0), h), min(max(max(ys), 0.0), h)
    return (x0, y0, x1, y1)


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _word_groups(texts: Sequence[str], groups: Sequence[Any]) -> list[Any]:
    """RapidOCR's word results lined up with its lines: it leaves out the empty ones, so a group belongs to
    the line whose text its words spell; a line without one gets None."""
    if len(groups) == len(texts):
        return list(groups)
    out: list[Any] = []
    k = 0
    for text in texts:
        if k < len(groups) and _squeezed("".join(_word_texts(groups[k]))) == _squeezed(text):
            out.append(groups[k])
            k += 1
        else:
            out.append(None)
    return out


def _word_texts(group: Any) -> list[str]:
    try:
        return [str(item[0]) for item in group]
    except (TypeError, IndexError, KeyError):
        return []


def _words(group: Any, text: str, factor: float, size: tuple[int, int]) -> tuple[Word, ...]:
    """A line's words from RapidOCR's (text, score, four corners) per word; () when they are not that, or do not
    spell the line."""
    try:
        words = tuple(
            Word(str(t).strip(), _bounds(b, factor, size), float(s)) for t, s, b in group or () if str(t).strip()
        )
    except (TypeError, ValueError, IndexError, KeyError):
        return ()
    return words if _squeezed("".join(w.text for w in words)) == _squeezed(text) else ()


def _lines(result: Any, factor: float, size: tuple[int, int]) -> list[Line]:
    """The lines of a RapidOCR result (boxes on the image scaled by ``factor``), in reading order."""
    boxes, texts, scores = (getattr(result, name, None) for name in ("boxes", "txts", "scores"))
    if boxes is None or texts is None or scores is None:
        return []
    groups = _word_groups(list(texts), list(getattr(result, "word_results", None) or ()))
    lines = []
    for points, raw, score, group in zip(boxes, texts, scores, groups, strict=True):
        text = " ".join(str(raw).split())
        if not text:
            continue
        box = _bounds(points, factor, size)
        words = _words(group, text, factor, size) or (Word(text, box, float(score)),)
        lines.append(Line(text, box, float(score), words))
    return reading_order(lines)


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two vertical extents (top, bottom) overlap by at least half the shorter one."""
    return min(a[1], b[1]) - max(a[0], b[0]) >= 0.5 * min(a[1] - a[0], b[1] - b[0])


def rows(lines: Sequence[Line]) -> list[list[Line]]:
    """``lines`` in rows, in reading order: a line whose height overlaps a row's by half joins it; rows top to
    bottom, each left to right."""
    out: list[list[Line]] = []
    for line in sorted(lines, key=lambda ln: (ln.box[1] + ln.box[3]) / 2):
        extent = (line.box[1], line.box[3])
        for row in out:
            if _overlaps(extent, (min(ln.box[1] for ln in row), max(ln.box[3] for ln in row))):
                row.append(line)
                break
        else:
            out.append([line])
    return [sorted(row, key=lambda ln: ln.box[0]) for row in out]


def reading_order(lines: Sequence[Line]) -> list[Line]:
    """``lines`` top to bottom, left to right (:func:`rows`, one after another)."""
    return [line for row in rows(lines) for line in row]


def read_lines(image: Image, ctx: Context) -> list[Line]:
    """The lines of text in ``image``, in reading order, read once per run and settings (the run cache)."""
    max_side = _positive(ctx, "max_side", 32)
    min_side = _positive(ctx, "min_side", 0)
    min_score = float(ctx.option("min_score"))
    upside_down = bool(ctx.option("upside_down"))
    engine = _engine(ctx)
    w, h = image.size
    factor = _scale((w, h), max_side, min_side)

    def read() -> list[Line]:
        return _lines(engine.read(_bgr(image, factor), upside_down), factor, (w, h))

    name = f"ocr:{ctx.options.get('model') or 'bundled'}:{max_side}:{min_side}:{upside_down}"
    return [line for line in ctx.cache.get(image, name, read) if line.score >= min_score]


# --- queries ----------------------------------------------------------------------


def _norm(text: str) -> str:
    """The letters and digits of ``text``, case folded: what a query is matched on."""
    return "".join(c for c in text.casefold() if c.isalnum())


def _alike(query_word: str, word: str) -> float:
    if query_word == word:
        return 1.0
    if min(len(query_word), len(word)) < FUZZY_MIN_LENGTH:
        return 0.0
    return difflib.SequenceMatcher(None, query_word, word).ratio()


def find_query(words: Sequence[str], query: str) -> tuple[list[int], float] | None:
    """Where ``query`` is written among a line's ``words``: the indices of the words it covers and how closely
    they match (1.0 exactly), or None.

    Matching ignores case, spaces and punctuation. The query matches the
    shortest run of consecutive words whose letters and digits contain its own
    (so a part of a word matches, and 'main street' matches 'MAIN ST.REET' and
    'MAINSTREET'); failing that, when every word of the query is one of the
    line's words, in any order, or differs from one by a letter or so (words of
    five letters or more, difflib's ratio at least 0.8).
    """
    wanted = _norm(query)
    if not wanted:
        return None
    normed = [_norm(w) for w in words]
    best: tuple[int, int] | None = None
    for i in range(len(normed)):
        joined = ""
        for j in range(i, len(normed)):
            joined += normed[j]
            if wanted in joined:
                if best is None or j - i < best[1] - best[0]:
                    best = (i, j)
                break
    if best is not None:
        return list(range(best[0], best[1] + 1)), 1.0
    picked: list[int] = []
    closeness = 1.0
    for query_word in (q for q in (_norm(w) for w in query.split()) if q):
        options = [(_alike(query_word, w), k) for k, w in enumerate(normed) if k not in picked and w]
        alike, k = max(options, default=(0.0, -1))
        if alike < FUZZY_CUTOFF:
            return None
        picked.append(k)
        closeness = min(closeness, alike)
    return (sorted(picked), closeness) if picked else None


def _union(boxes: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def matches(lines: Sequence[Line], query: str) -> Objects:
    """One object per line where ``query`` is written, the words it covers, best match first."""
    found: list[tuple[float, int, Detection]] = []
    for order, line in enumerate(lines):
        match = find_query([w.text for w in line.words], query)
        if match is None:
            continue
        indices, closeness = match
        words = [line.words[k] for k in indices]
        score = closeness * min(w.score for w in words)
        label = " ".join(w.text for w in words)
        # the detector's box when the match is the whole line: word boxes are placed from the recognizer's
        # character positions, less exactly
        box = line.box if len(words) == len(line.words) else _union([w.box for w in words])
        found.append((-score, order, Detection(box, score, label)))
    return Objects(d for _, _, d in sorted(found, key=lambda f: (f[0], f[1])))


# --- the modules ------------------------------------------------------------------

#: The backend: its models ship with the package (no download).
BACKENDS: dict[str, str | None] = {"rapidocr": None}


@module(aliases=["OCR", "READ", "ReadText"], backends=BACKENDS, default_backend="rapidocr", options=OPTIONS)
def Ocr(image: Image, ctx: Context) -> str:
    """Read the text written in an image (signs, labels, brand names, numbers, pages).

    Returns the text line by line in reading order, top to bottom and left to
    right: the lines side by side joined by a space, the rows by a newline; ''
    when the image has no legible text. Crop to the object first (a sign, a
    shirt, a bus) to read only its text.

    Args:
        image: the image (or a crop of it) to read.
    """
    return "\n".join(" ".join(line.text for line in row) for row in rows(read_lines(image, ctx)))


@module(
    aliases=["TEXT", "FindText", "TextDet"],
    backends=BACKENDS,
    default_backend="rapidocr",
    options=OPTIONS,
    validate={"query": not_empty("text to look for (or None for every line)")},
)
def Text(image: Image, query: str | None = None, *, ctx: Context) -> Objects:
    """Find the text written in an image: each line as an object labelled with what it says.

    Without a query, every line, in reading order. With a query, the places
    where it is written, best match first: for each line that has it, the
    words that match, labelled with them. Matching ignores case and
    punctuation, finds part of a word ('cafe' in 'CAFETERIA') and forgives a
    misread letter in longer words. Each object's score is the recognition
    confidence (lowered by how far a forgiven misreading is from the query).
    Count them, or Crop to the first.

    Args:
        image: the image (or a crop of it) to search.
        query: the text to look for, e.g. 'stop' or 'exit'; None for all the text.
    """
    lines = read_lines(image, ctx)
    if query is None:
        return Objects(Detection(line.box, line.score, line.text) for line in lines)
    if not _norm(query):
        raise ValueError(f"Text needs a query with letters or digits (or None for every line), got {query!r}")
    return matches(lines, query)
