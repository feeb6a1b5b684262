"""The planning benchmark's question set: questions, statements and instructions on scikit-image's photos.

``benchmarks/questions.jsonl`` holds one JSON object a line::

    {"id": "gqa-faces-astronaut", "task": "gqa", "text": "How many faces are there in this photo?",
     "images": {"IMAGE": "astronaut"}, "computable": true, "answer": "1",
     "reference": "OBJ0=FaceDet(image=IMAGE)\\nANSWER0=Count(box=OBJ0)\\nFINAL_RESULT=Result(var=ANSWER0)"}

- ``task``: a task's name (``gqa``, ``nlvr``, ``edit``, ``tag``: :mod:`visprog.planner.tasks`);
- ``images``: the task's inputs (``IMAGE``, or ``LEFT`` and ``RIGHT``), each the name of a photo that
  ``skimage.data`` ships (``astronaut``, ``coffee``, ``chelsea``, ``rocket``, ``camera`` ...);
- ``computable``: whether the right answer comes out of the modules that run offline (FaceDet's
  ``cascade`` backend, Count, Eval, Result, the crops, Loc's region words, ColorPop, BgBlur, Emoji, Tag).
  A computable item has a ``reference`` program, written by hand, that gives the right answer that way;
  for a text or yes/no task it also has the ``answer`` (a string, or a list of strings that are all
  right), written down from the photo; for an image task the reference's output is the expected image.

Items that need a model with weights (Vqa, Loc with an object, Seg, Select, Classify, Replace, List) are
not computable: they have neither an answer nor a reference.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["QUESTIONS", "Question", "QuestionSetError", "load_images", "load_questions", "photo"]

#: The question set that ships with the benchmarks.
QUESTIONS = Path(__file__).resolve().parent / "questions.jsonl"

_KEYS = ("id", "task", "text", "images", "computable", "answer", "reference")


class QuestionSetError(ValueError):
    """A malformed question file; the message names the file, the line and the item."""


@dataclass(frozen=True)
class Question:
    """One item of the question set.

    ``images`` maps the task's input names to ``skimage.data`` photo names. ``answer`` is the expected
    answer of a computable text or yes/no item (a list: any of them is right), else None; ``reference``
    is the program that computes it offline (for an image task: the program whose output is the
    expected image), else None.
    """

    id: str
    task: str
    text: str
    images: dict[str, str]
    computable: bool = False
    answer: str | list[str] | None = None
    reference: str | None = None


def load_questions(path: str | Path | None = None) -> list[Question]:
    """The items of a question file (default: :data:`QUESTIONS`), checked as they are read.

    Raises :class:`QuestionSetError` naming the file and line for a line that is not a JSON object,
    a missing or unknown key, a value of the wrong type, an id used twice, an unknown task, images
    that are not the task's inputs or not a ``skimage.data`` photo, and a computable item without its
    reference (or, for a text or yes/no task, its answer) or a non-computable one with them.
    """
    from visprog.planner.tasks import tasks

    file = Path(path) if path is not None else QUESTIONS
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise QuestionSetError(f"cannot read question file {file}: {e.strerror or e}") from e
    known = tasks()
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuestionSetError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(data, dict):
            raise QuestionSetError(f"{where}: expected a JSON object, got {type(data).__name__}")
        question = _question(data, where, known)
        if question.id in seen:
            raise QuestionSetError(f"{where}: id {question.id!r} is already used on line {seen[question.id]}")
        seen[question.id] = number
        questions.append(question)
    return questions


def _question(data: dict[str, Any], where: str, known: Mapping[str, Any]) -> Question:
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise QuestionSetError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(_KEYS)}")
    for key in ("id", "task", "text"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise QuestionSetError(f"{where}: '{key}' must be a non-empty string, got {data.get(key)!r}")
    ident, name = data["id"], data["task"]
    where = f"{where} ({ident})"
    task = known.get(name)
    if task is None:
        raise QuestionSetError(f"{where}: unknown task {name!r}; the tasks are {', '.join(sorted(known))}")
    images = data.get("images")
    if not isinstance(images, dict) or not all(isinstance(v, str) for v in images.values()):
        raise QuestionSetError(f"{where}: 'images' must map input names to photo names, got {images!r}")
    if sorted(images) != sorted(task.inputs):
        raise QuestionSetError(
            f"{where}: the {name} task reads {', '.join(task.inputs)}, but 'images' names {', '.join(images) or 'none'}"
        )
    for photo_name in images.values():
        if not _is_photo(photo_name):
            raise QuestionSetError(f"{where}: {photo_name!r} is not a photo that skimage.data ships")
    computable = data.get("computable", False)
    if not isinstance(computable, bool):
        raise QuestionSetError(f"{where}: 'computable' must be true or false, got {computable!r}")
    answer, reference = data.get("answer"), data.get("reference")
    if answer is not None and not _is_answer(answer):
        raise QuestionSetError(f"{where}: 'answer' must be a string or a list of strings, got {answer!r}")
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise QuestionSetError(f"{where}: 'reference' must be a program, got {reference!r}")
    image_task = task.answer == "image"
    if computable:
        if reference is None:
            raise QuestionSetError(f"{where}: a computable item needs the 'reference' program that computes it")
        if answer is None and not image_task:
            raise QuestionSetError(f"{where}: a computable {name} item needs its 'answer'")
        if answer is not None and image_task:
            raise QuestionSetError(
                f"{where}: the {name} task answers with an image: give only the 'reference' that makes it"
            )
    elif answer is not None or reference is not None:
        raise QuestionSetError(f"{where}: only a computable item has an 'answer' or a 'reference'")
    return Question(ident, name, data["text"], dict(images), computable, answer, reference)


def _is_answer(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, str) and v.strip() for v in value)
    return isinstance(value, str) and bool(value.strip())


def _is_photo(name: str) -> bool:
    """Whether ``skimage.data.<name>()`` loads one photo from the files scikit-image installs."""
    from skimage import data

    return name in _PHOTOS and hasattr(data, name)


#: The ``skimage.data`` images a question may use: photos (and scans) that ship in the wheel,
#: each one image, so nothing is downloaded.
_PHOTOS = frozenset(
    {
        "astronaut",
        "camera",
        "chelsea",
        "clock",
        "coffee",
        "coins",
        "hubble_deep_field",
        "moon",
        "page",
        "rocket",
        "text",
    }
)


@functools.cache
def _pixels(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def photo(name: str) -> Image.Image:
    """The ``skimage.data`` photo ``name`` as a new RGB image (grayscale photos are converted).

    Raises :class:`QuestionSetError` for a name that is not one of the photos questions may use.
    """
    if not _is_photo(name):
        raise QuestionSetError(f"{name!r} is not a photo that skimage.data ships; known: {', '.join(sorted(_PHOTOS))}")
    return _pixels(name).copy()


def load_images(question: Question) -> dict[str, Image.Image]:
    """The item's input images by input name (``IMAGE``, or ``LEFT`` and ``RIGHT``), as RGB images."""
    return {name: photo(photo_name) for name, photo_name in question.images.items()}
