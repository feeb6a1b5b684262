"""The planning benchmark's question set (benchmarks/questions.jsonl): its shape, its photos, and every
computable item's reference program run offline (FaceDet's cascade backend), giving the answer written
down for it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from benchmarks.questions import QUESTIONS, Question, QuestionSetError, load_images, load_questions, photo
from visprog.evaluation.scoring import is_correct
from visprog.language.syntax import Literal
from visprog.language.values import normalize_answer
from visprog.planner.tasks import get_task
from visprog.running.runtime import Runtime
from visprog.solving import check, run

ITEMS = load_questions()
COMPUTABLE = [q for q in ITEMS if q.computable]
TASKS = ("gqa", "nlvr", "edit", "tag")

#: The modules that run without downloaded weights (Loc only with its region words).
OFFLINE_MODULES = {
    "FaceDet",
    "Count",
    "Eval",
    "Result",
    "Crop",
    "CropLeftOf",
    "CropRightOf",
    "CropAbove",
    "CropBelow",
    "ColorPop",
    "BgBlur",
    "Emoji",
    "Tag",
    "Loc",
}
#: Loc's region words (modules/detection.py): halves of the image, found without a model.
REGION_WORDS = ("TOP", "BOTTOM", "LEFT", "RIGHT")
CROPS = ("Crop", "CropLeftOf", "CropRightOf", "CropAbove", "CropBelow")


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """One runtime for every reference run: the cascade is loaded once."""
    return Runtime(modules={"FaceDet": {"backend": "cascade"}})


# --- shape ------------------------------------------------------------------------------------------


def test_the_set_is_large_enough_and_spread_over_the_tasks() -> None:
    assert len(ITEMS) >= 60
    per_task = Counter(q.task for q in ITEMS)
    assert set(per_task) == set(TASKS)
    assert all(per_task[task] >= 10 for task in TASKS), per_task
    assert 3 * len(COMPUTABLE) >= len(ITEMS)
    assert {q.task for q in COMPUTABLE} == set(TASKS)


def test_ids_are_unique_and_no_item_is_asked_twice() -> None:
    assert len({q.id for q in ITEMS}) == len(ITEMS)
    asked = Counter((q.text.strip().lower(), tuple(sorted(q.images.items()))) for q in ITEMS)
    assert [k for k, n in asked.items() if n > 1] == []


def test_every_item_has_its_tasks_inputs_and_its_photos_load() -> None:
    for q in ITEMS:
        assert tuple(q.images) == get_task(q.task).inputs, q.id
        images = load_images(q)
        assert set(images) == set(q.images)
        for image in images.values():
            assert image.mode == "RGB" and image.width >= 100 and image.height >= 100, q.id


def test_computable_items_have_a_reference_and_an_answer_where_the_answer_is_text() -> None:
    for q in ITEMS:
        image_task = get_task(q.task).answer == "image"
        if q.computable:
            assert q.reference is not None, q.id
            assert (q.answer is None) == image_task, q.id
        else:
            assert q.answer is None and q.reference is None, q.id


@pytest.mark.parametrize("q", COMPUTABLE, ids=lambda q: q.id)
def test_reference_programs_check_and_use_only_offline_modules(q: Question) -> None:
    assert q.reference is not None
    checked = check(q.reference, list(q.images))
    used = {step.module for step in checked.steps}
    assert used <= OFFLINE_MODULES, used - OFFLINE_MODULES
    for step in checked.steps:
        if step.module == "Loc":  # Loc runs without a model only for a region word
            call = step.step.call
            assert call is not None
            (found,) = [arg.value for arg in call.args if arg.name == "object"]
            assert isinstance(found, Literal) and found.value in REGION_WORDS, f"{q.id}: {step.step.source}"


# --- the reference runs -----------------------------------------------------------------------------


@pytest.mark.parametrize("q", [q for q in COMPUTABLE if q.answer is not None], ids=lambda q: q.id)
def test_reference_gives_the_written_answer(q: Question, runtime: Runtime) -> None:
    assert q.reference is not None
    result = run(q.reference, load_images(q), runtime=runtime).result
    assert is_correct(result, q.answer), f"{q.id}: the reference gives {result!r}, the answer is {q.answer!r}"
    if get_task(q.task).answer == "yes/no":
        assert normalize_answer(result) in {"yes", "no"}


@pytest.mark.parametrize("q", [q for q in COMPUTABLE if q.answer is None], ids=lambda q: q.id)
def test_reference_gives_the_same_image_every_time(q: Question, runtime: Runtime) -> None:
    """The expected image of an edit or tag item is its reference's output, compared exactly: it must be
    an image of the input's size (or, after a crop, inside it), and the same on every run."""
    assert q.reference is not None
    (source,) = load_images(q).values()
    first = run(q.reference, load_images(q), runtime=runtime).result
    second = run(q.reference, load_images(q), runtime=runtime).result
    assert isinstance(first, PILImage.Image) and first.mode == "RGB"
    if any(f"={crop}(" in q.reference for crop in CROPS):
        assert 0 < first.width <= source.width and 0 < first.height <= source.height
        assert first.size != source.size
    else:
        assert first.size == source.size
    assert first.tobytes() == second.tobytes()


# --- the loader's errors ----------------------------------------------------------------------------

GOOD: dict[str, Any] = {"id": "a", "task": "gqa", "text": "How many faces?", "images": {"IMAGE": "astronaut"}}


def write(tmp_path: Path, *items: dict[str, Any] | str) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n", encoding="utf-8")
    return path


def test_the_default_file_is_the_shipped_one() -> None:
    assert QUESTIONS.name == "questions.jsonl" and QUESTIONS.is_file()
    assert load_questions(QUESTIONS) == ITEMS


def test_a_good_file_loads(tmp_path: Path) -> None:
    computable = {**GOOD, "id": "b", "computable": True, "answer": ["1", "one"], "reference": "X=Count(box=[])"}
    path = write(tmp_path, GOOD, "", computable)
    assert load_questions(path) == [
        Question("a", "gqa", "How many faces?", {"IMAGE": "astronaut"}),
        Question("b", "gqa", "How many faces?", {"IMAGE": "astronaut"}, True, ["1", "one"], "X=Count(box=[])"),
    ]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["{not json"], ":1: not valid JSON"),
        (["[1, 2]"], ":1: expected a JSON object, got list"),
        ([GOOD, GOOD], ":2: id 'a' is already used on line 1"),
        ([{**GOOD, "question": "?"}], ":1: unknown key(s) question"),
        ([{**GOOD, "text": ""}], ":1: 'text' must be a non-empty string"),
        ([{**GOOD, "task": "vqa"}], ":1 (a): unknown task 'vqa'; the tasks are"),
        ([{**GOOD, "images": {"LEFT": "astronaut"}}], "the gqa task reads IMAGE, but 'images' names LEFT"),
        ([{**GOOD, "images": {"IMAGE": "lena"}}], "'lena' is not a photo that skimage.data ships"),
        ([{**GOOD, "computable": "yes"}], "'computable' must be true or false, got 'yes'"),
        ([{**GOOD, "computable": True, "answer": "1"}], "a computable item needs the 'reference' program"),
        ([{**GOOD, "computable": True, "reference": "X=Count(box=[])"}], "a computable gqa item needs its 'answer'"),
        ([{**GOOD, "answer": "1"}], "only a computable item has an 'answer' or a 'reference'"),
        ([{**GOOD, "answer": 1}], "'answer' must be a string or a list of strings, got 1"),
        (
            [{**GOOD, "task": "edit", "computable": True, "answer": "x", "reference": "X=Count(box=[])"}],
            "the edit task answers with an image: give only the 'reference' that makes it",
        ),
    ],
)
def test_a_malformed_file_names_the_line_and_what_is_wrong(
    tmp_path: Path, items: list[dict[str, Any] | str], message: str
) -> None:
    path = write(tmp_path, *items)
    with pytest.raises(QuestionSetError) as e:
        load_questions(path)
    assert str(e.value).startswith(str(path))
    assert message in str(e.value)


def test_a_missing_file_and_an_unknown_photo_are_named(tmp_path: Path) -> None:
    with pytest.raises(QuestionSetError, match=r"cannot read question file .*nothing\.jsonl"):
        load_questions(tmp_path / "nothing.jsonl")
    with pytest.raises(QuestionSetError, match=r"'lena' is not a photo that skimage\.data ships; known: astronaut"):
        photo("lena")


def test_photos_are_new_copies() -> None:
    a, b = photo("coffee"), photo("coffee")
    assert a is not b and a.tobytes() == b.tobytes() and a.size == (600, 400)
    a.paste((0, 0, 0), (0, 0, 10, 10))
    assert photo("coffee").tobytes() == b.tobytes()
