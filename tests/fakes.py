"""Deterministic stand-ins for the model-backed modules, for tests of the language core.

They are declared exactly like real modules (typed signature + docstring), so
the checker sees the same schema the real ones have. Answers are scripted:
``Vqa`` answers from ``VQA_ANSWERS`` (default 'yes'; 'how many' questions '2'),
``Loc`` finds ``LOC_COUNTS[object]`` boxes (default 1; region words give the
matching half of the image); ``Ocr`` reads 'OPEN' and ``Text`` finds one line.
Every call is appended to ``CALLS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image as PILImage

from visprog.language import checker
from visprog.language.signatures import Registry, at_least, module
from visprog.language.values import Detection, Image, Objects
from visprog.planner.tasks import input_names
from visprog.running.runtime import Context

CALLS: list[tuple[str, int]] = []  # (module, number of argument sets in the call)
VQA_ANSWERS: dict[str, str] = {}
LOC_COUNTS: dict[str, int] = {"wolf": 2, "dog": 1, "cat": 1, "unicorn": 0, "person": 3, "people": 3}


def check(program: Any, inputs: Any = None, *, registry: Registry) -> checker.CheckedProgram:
    """The language's check with the input names the tasks define (IMAGE, LEFT, RIGHT), as visprog.check passes them."""
    return checker.check(program, inputs, registry=registry, known_inputs=input_names())


def reset() -> None:
    CALLS.clear()
    VQA_ANSWERS.clear()


def _boxes(image: Image, obj: str) -> list[Detection]:
    w, h = image.size
    regions = {
        "TOP": (0, 0, w, h // 2),
        "BOTTOM": (0, h // 2, w, h),
        "LEFT": (0, 0, w // 2, h),
        "RIGHT": (w // 2, 0, w, h),
    }
    if obj in regions:
        return [Detection(regions[obj], 1.0, obj)]
    n = LOC_COUNTS.get(obj.lower(), 1)
    out = []
    for k in range(n):
        x0 = (k * w) // max(n, 1) + 2
        box = (x0, h // 4, min(x0 + w // (2 * max(n, 1)) + 4, w), (3 * h) // 4)
        out.append(Detection(box, 0.9 - 0.1 * k, obj))
    return out


def _loc_batch(calls: Sequence[dict[str, Any]], ctx: Context) -> list[Objects]:
    CALLS.append(("Loc", len(calls)))
    return [_boxes(c["image"], c["object"]) for c in calls]


@module(aliases=["LOC", "Locate"], batch=_loc_batch)
def Loc(image: Image, object: str) -> Objects:
    """Find objects by name (fake: scripted boxes).

    Args:
        image: the image to search.
        object: what to find, or TOP/BOTTOM/LEFT/RIGHT for a half of the image.
    """
    CALLS.append(("Loc", 1))
    return _boxes(image, object)


def _answer(question: str) -> str:
    if question in VQA_ANSWERS:
        return VQA_ANSWERS[question]
    if question.lower().startswith("how many"):
        return "2"
    return "yes"


def _vqa_batch(calls: Sequence[dict[str, Any]], ctx: Context) -> list[str]:
    CALLS.append(("Vqa", len(calls)))
    return [_answer(c["question"]) for c in calls]


@module(aliases=["VQA"], batch=_vqa_batch)
def Vqa(image: Image, question: str) -> str:
    """Answer a question about an image (fake: scripted answers).

    Args:
        image: the image to look at.
        question: the question.
    """
    CALLS.append(("Vqa", 1))
    return _answer(question)


@module(aliases=["SEG", "Segment"])
def Seg(image: Image) -> Objects:
    """Segment the image into objects (fake: three vertical bands).

    Args:
        image: the image to segment.
    """
    CALLS.append(("Seg", 1))
    w, h = image.size
    out = []
    for k, label in enumerate(["person", "dog", "sky"]):
        mask = np.zeros((h, w), dtype=bool)
        x0, x1 = k * w // 3, (k + 1) * w // 3
        mask[:, x0:x1] = True
        out.append(Detection((x0, 0, x1, h), 1.0, label, mask))
    return out


@module(aliases=["SELECT"])
def Select(image: Image, object: Objects, query: str, category: str | None = None) -> Objects:
    """Keep the objects that match a text query (fake: by label).

    Args:
        image: the image the objects come from.
        object: the candidate objects.
        query: what to keep; several queries separated by commas.
        category: keep only objects of this category first.
    """
    CALLS.append(("Select", 1))
    wanted = {q.strip().lower() for q in query.split(",")}
    found = [o for o in object if o.label.lower() in wanted]
    return found or list(object[:1])


@module(aliases=["CLASSIFY"])
def Classify(image: Image, object: Objects, categories: list[str]) -> Objects:
    """Label each object with one of the categories (fake: in turn).

    Args:
        image: the image the objects come from.
        object: the objects to label.
        categories: the labels to choose from.
    """
    CALLS.append(("Classify", 1))
    if not categories:
        return list(object)
    return [o.with_label(categories[i % len(categories)]) for i, o in enumerate(object)]


@module(aliases=["SEGMENT_BOXES", "SAM"])
def Mask(image: Image, object: Objects) -> Objects:
    """Give each object a pixel mask from its box (fake: the ellipse inscribed in the box).

    Args:
        image: the image the objects were found on.
        object: the objects to outline.
    """
    CALLS.append(("Mask", 1))
    w, h = image.size
    ys, xs = np.mgrid[:h, :w] + 0.5
    out = []
    for o in object:
        x0, y0, x1, y1 = o.box
        rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
        mask = ((xs - (x0 + x1) / 2) / rx) ** 2 + ((ys - (y0 + y1) / 2) / ry) ** 2 <= 1
        out.append(Detection(o.box, o.score, o.label, mask) if mask.any() else o)
    return out


@module(aliases=["REPLACE"])
def Replace(image: Image, object: Objects, prompt: str) -> Image:
    """Replace the objects with what the prompt describes (fake: paint them grey).

    Args:
        image: the image to edit.
        object: the objects to replace.
        prompt: what to paint instead.
    """
    CALLS.append(("Replace", 1))
    arr = np.array(image)
    for o in object:
        arr[o.region(image.size)] = 128
    return PILImage.fromarray(arr)


@module(name="List", aliases=["LIST"], validate={"max": at_least(1)})
def List_(query: str, max: int) -> list[str]:
    """List things from world knowledge (fake: a canned list).

    Args:
        query: what to list.
        max: at most this many items.
    """
    CALLS.append(("List", 1))
    return ["Sheldon", "Leonard", "Penny", "Howard", "Raj"][:max]


@module(aliases=["OCR", "READ"])
def Ocr(image: Image) -> str:
    """Read the text in an image (fake: 'OPEN').

    Args:
        image: the image to read.
    """
    CALLS.append(("Ocr", 1))
    return "OPEN"


@module(aliases=["TEXT"])
def Text(image: Image, query: str | None = None) -> Objects:
    """Find the text written in an image (fake: one line across the middle, labelled with the query or 'OPEN').

    Args:
        image: the image to search.
        query: the text to look for; None for every line.
    """
    CALLS.append(("Text", 1))
    w, h = image.size
    return Objects([Detection((w // 4, (2 * h) // 5, (3 * w) // 4, (3 * h) // 5), 0.9, query or "OPEN")])


FAKES = [Loc, Vqa, Seg, Select, Classify, Mask, Replace, List_, Ocr, Text]


def registry() -> Registry:
    """The built-in modules that need no model, plus these fakes for the rest."""
    import visprog.modules.faces as faces
    import visprog.modules.image_ops as image_ops
    import visprog.modules.logic as logic

    from visprog.running.plugins import specs_in

    reg = Registry()
    for mod in (logic, image_ops, faces):
        reg.register_all(specs_in(mod, "builtin"), source="builtin")
    reg.register_all(FAKES, source="tests.fakes")
    return reg
