"""Dataset evaluation end to end on the real built-in modules with tiny random models (no download).

A 20-item GQA question JSON and a 10-item NLVR2 JSONL are planned by the scripted
planner (a loopback OpenAI-compatible server) and run by an
:class:`~visprog.running.interpreter.Interpreter` with the default registry: Vqa on a tiny
random BLIP, Loc on a tiny random OWLv2 and on its region words, Crop, CropBelow,
CropLeftOf, Count, Eval and Result.

Every expected program result is computed without visprog's interpreter: BLIP
through its model card recipe (processor, ``generate``, decode, as
``tests/modules/test_vqa.py`` does), OWLv2 through transformers'
zero-shot-object-detection pipeline (as ``tests/modules/test_detection.py``
does), the crops with PIL from the boxes the modules document, Eval's logic in
plain Python. The data files are then written so that chosen items are right,
wrong, fail to plan or fail to run: the accuracy and the failure counts are
known exactly, whatever the random models answer.

One item of each file asks Vqa a blank question, and its Vqa steps share a
batched call with other items' steps of its chunk: the batched call fails, its
calls are retried one by one, and only that item fails (an execution error
naming the empty question); the others keep their directly computed answers. The
GQA file is evaluated again with other chunk sizes and ``max_batch`` (one big
batch; no batching at all): the records are the same item by item.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from visprog.modules.vqa import clean_answer

from tests.llm_server import ScriptedServer, serve_scripted
from tests.modules.test_detection import build_owl, owl_reference
from tests.modules.test_vqa import blip_reference, build_blip
from tests.servers import clean_llm_env
from visprog.evaluation.datasets import Item, load_items
from visprog.evaluation.runner import evaluate
from visprog.evaluation.summary import Summary
from visprog.language.values import normalize_answer
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime
from visprog.running.tracing import Trace

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

#: Every photo is scaled to this size (BLIP sees 32x32, OWLv2 64x64: small files are enough).
W, H = 64, 48
#: Short answers: fewer decoding steps, and literals an Eval can compare with.
MAX_NEW_TOKENS = 3
#: The GQA image ids (``<imageId>.jpg`` in the images folder) of the scikit-image photos used.
IMAGE_IDS = {
    "astronaut": "n100001",
    "coffee": "n100002",
    "chelsea": "n100003",
    "rocket": "n100004",
    "camera": "n100005",
    "coins": "n100006",
    "moon": "n100007",
    "page": "n100008",
    "immunohistochemistry": "n100009",
    "retina": "n100010",
    "horse": "n100011",
    "clock": "n100012",
}
MISSING, CORRUPT = "n999998", "n999999"
#: Vqa's error for a blank question (modules/vqa.py), and the error of a program whose second step asks one.
BLANK = "ValueError: Vqa: the question is empty"
BLANK_ERROR = f"line 2, Vqa (step ANSWER1) failed: {BLANK}"

# The crops the programs below make of a 64x48 image, as modules/image_ops.py and Loc's region words define them.
LEFT_CROP = (0, 0, 40, 48)  # Crop(Loc 'LEFT' = (0, 0, 32, 48)): 1.5x around the centre (16, 24), clipped
BELOW_TOP = (0, 12, 64, 48)  # CropBelow(Loc 'TOP' = (0, 0, 64, 24)): below its centre's y = 12
LEFT_OF_RIGHT = (0, 0, 48, 48)  # CropLeftOf(Loc 'RIGHT' = (32, 0, 64, 48)): left of its centre's x = 48
BOTTOM_CROP = (0, 18, 64, 48)  # Crop(Loc 'BOTTOM' = (0, 24, 64, 48)): 1.5x around (32, 36), clipped


# --- tiny models and their reference answers ------------------------------------------------


class Reference:
    """What the programs compute, computed directly with transformers and PIL (no visprog module runs)."""

    def __init__(self, blip: Path, owl: Path, images: Path) -> None:
        from transformers import AutoProcessor, BlipForQuestionAnswering

        self.blip, self.owl, self.images = blip, owl, images
        self.processor = AutoProcessor.from_pretrained(blip)
        self.model = BlipForQuestionAnswering.from_pretrained(blip).eval()
        self.threshold = 0.0
        self.scores: dict[tuple[str, str], list[float]] = {}

    def image(self, file: str, crop: tuple[int, int, int, int] | None = None) -> Image.Image:
        with Image.open(self.images / file) as opened:
            image = opened.convert("RGB")
        return image.crop(crop) if crop is not None else image

    def vqa(self, file: str, question: str, crop: tuple[int, int, int, int] | None = None) -> str:
        """BLIP's model card recipe, greedy; the text as Vqa documents its answers (``clean_answer``)."""
        inputs = self.processor(images=self.image(file, crop), text=question, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
        return clean_answer(self.processor.decode(out[0], skip_special_tokens=True))

    def owl_scores(self, file: str, label: str) -> list[float]:
        """Every box's score for ``label`` (threshold 0) from transformers' pipeline, boxes Loc would keep."""
        if (file, label) not in self.scores:
            _, scores = owl_reference(self.owl, self.image(file), label, 0.0)
            self.scores[file, label] = scores.tolist()
        return self.scores[file, label]

    def count(self, file: str, label: str) -> int:
        """How many boxes pass the threshold (Loc with ``nms_iou`` 1.0 suppresses none)."""
        return sum(s > self.threshold for s in self.owl_scores(file, label))


def _same(a: str, b: str) -> bool:
    """Eval's ``==`` on two Vqa answers: the same text.

    Eval reads 'yes'/'no' as booleans and number words as numbers, and then
    ``'yes' == 'one'`` holds (True == 1); the answers compared here must not be such a pair.
    """
    assert a == b or {a, b} not in ({"yes", "one"}, {"no", "zero"}), f"{a!r} and {b!r}: choose other questions"
    return a == b


def _literal(answer: str) -> str:
    """An answer as a string literal inside an Eval expression."""
    assert "'" not in answer and "{" not in answer, f"cannot quote {answer!r}: choose another question"
    return f"'{answer}'"


# --- the data sets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One item: its data, the LLM's reply, and what the evaluation must make of it."""

    id: str
    image: str  # GQA: the imageId; NLVR: the left photo
    text: str
    reply: str | None  # None: the image does not load, the item is never planned
    outcome: str  # 'correct' or a failure kind
    gold: Any
    result: Any = None  # the program's result, computed directly (right and wrong answers)
    error: str = ""  # a fragment of the error (failures)
    modules: tuple[str, ...] = ()  # modules whose time the record lists
    right: str = ""  # NLVR: the right photo


def _vqa(question: str, image: str = "IMAGE", target: str = "ANSWER0") -> str:
    return f"{target}=Vqa(image={image}, question='{question}')"


def _yes_if_equal(answer: str) -> str:
    """An Eval step: 'yes' when ANSWER0 is ``answer``."""
    return f"ANSWER1=Eval(expr=\"'yes' if {{ANSWER0}} == {_literal(answer)} else 'no'\")"


def _program(*lines: str) -> str:
    result = lines[-1].split("=", 1)[0]
    return "\n".join([*lines, f"FINAL_RESULT=Result(var={result})"])


def _gqa_cases(ref: Reference) -> list[Case]:
    """20 items: 10 right, 3 wrong answers, 4 execution errors, 2 programs that fail the check, 1 not a program.

    q20 asks Vqa a blank question: with chunks of 7 items its Vqa steps share one batched
    call with q16's, which gets its answer all the same.
    """

    def vqa(photo: str, question: str, crop: tuple[int, int, int, int] | None = None) -> str:
        return ref.vqa(f"{IMAGE_IDS[photo]}.jpg", question, crop)

    def count(photo: str, label: str) -> int:
        return ref.count(f"{IMAGE_IDS[photo]}.jpg", label)

    wearing = vqa("astronaut", "What is the person wearing?")
    mug = vqa("coffee", "What color is the mug?")
    rocket_left = vqa("rocket", "What is on the left of the man?", LEFT_CROP)
    camera = vqa("camera", "How many?")
    coins = vqa("coins", "Is there a red flag?")
    moon = vqa("moon", "What color is it?")
    page_below = vqa("page", "What color is it?", BELOW_TOP)
    cats = count("chelsea", "cat")
    persons = count("astronaut", "person")
    histology = vqa("immunohistochemistry", "How many?")
    retina = vqa("retina", "What is the man wearing?", LEFT_OF_RIGHT)
    coffee_cats = count("coffee", "cat")
    horse = vqa("horse", "Is it a woman?")
    clock = vqa("clock", "What is on the left of the man?", BOTTOM_CROP)
    assert vqa("clock", "What is this?").strip(), "q20's first Vqa step must give an answer"
    assert len({wearing, mug, rocket_left, camera, coins, moon, page_below, horse, clock}) >= 4, (
        "the tiny BLIP answers everything alike: the evaluation would mean little"
    )
    assert all(a.strip() for a in (wearing, mug, rocket_left, camera, coins, page_below, horse)), "empty gold"
    moon_is_coins = "yes" if _same(moon, coins) else "no"
    assert moon_is_coins == "no", "q05's Eval says yes, q06's no"
    clock_not_many = "no" if _same(clock, "many") else "yes"
    # the crops matter: the answer about the whole photo differs
    assert (page_below, clock) != (vqa("page", "What color is it?"), vqa("clock", "What is on the left of the man?"))
    plain = normalize_answer(histology)  # Eval must read it as text, not as a number or a boolean
    assert plain not in ("yes", "no") and not any(c.isdigit() for c in plain), histology
    few = 2  # the Eval after Count below compares with this
    numbers = "zero one two three four five six seven eight nine ten".split()

    return [
        Case("q01", "astronaut", "What is the man wearing?", _program(_vqa("What is the person wearing?")),
             "correct", gold=wearing, result=wearing, modules=("Vqa",)),
        Case("q02", "coffee", "What color is the mug?", _program(_vqa("What color is the mug?")),
             "correct", gold=mug.upper() + ".", result=mug, modules=("Vqa",)),  # right after normalisation
        Case("q03", "rocket", "What is on the left side?",
             _program("BOX0=Loc(image=IMAGE, object='LEFT')", "IMAGE0=Crop(image=IMAGE, box=BOX0)",
                      _vqa("What is on the left of the man?", "IMAGE0")),
             "correct", gold=rocket_left, result=rocket_left, modules=("Loc", "Crop", "Vqa")),
        Case("q04", "camera", "How many people are there?", _program(_vqa("How many?")),
             "wrong_answer", gold="seven", result=camera, modules=("Vqa",)),  # 'seven': not in BLIP's vocabulary
        Case("q05", "coins", "Is there a red flag?",
             _program(_vqa("Is there a red flag?"), _yes_if_equal(coins)),
             "correct", gold="yes", result="yes", modules=("Vqa", "Eval")),
        Case("q06", "moon", "Is the moon the same color as the coins?",
             _program(_vqa("What color is it?"), _yes_if_equal(coins)),
             "correct", gold=moon_is_coins, result=moon_is_coins, modules=("Vqa", "Eval")),
        Case("q07", "page", "What color is the bottom of the page?",
             _program("BOX0=Loc(image=IMAGE, object='TOP')", "IMAGE0=CropBelow(image=IMAGE, box=BOX0)",
                      _vqa("What color is it?", "IMAGE0")),
             "correct", gold=page_below, result=page_below, modules=("Loc", "CropBelow", "Vqa")),
        Case("q08", MISSING, "What is in the missing photo?", None, "execution", gold="nothing", error="no such file"),
        Case("q09", "chelsea", "How many cats are there?",
             _program("BOX0=Loc(image=IMAGE, object='cat')", "ANSWER0=Count(box=BOX0)"),
             "correct", gold=numbers[cats] if cats < len(numbers) else str(cats), result=cats,
             modules=("Loc", "Count")),
        Case("q10", "astronaut", "Are there more than two people?",
             _program("BOX0=Loc(image=IMAGE, object='person')", "ANSWER0=Count(box=BOX0)",
                      f"ANSWER1=Eval(expr=\"'yes' if {{ANSWER0}} > {few} else 'no'\")"),
             "correct", gold="yes" if persons > few else "no", result="yes" if persons > few else "no",
             modules=("Loc", "Count", "Eval")),
        Case("q11", "immunohistochemistry", "How many cells are there, plus one?",
             _program(_vqa("How many?"), "ANSWER1=Eval(expr='{ANSWER0} + 1')"),
             "execution", gold="4", error=f"cannot add str {histology!r} and int 1", modules=("Vqa", "Eval")),
        Case("q12", "coffee", "Where is the cup?", _program("ANSWER0=Teleport(image=IMAGE, where='moon')"),
             "plan_check", gold="table", error="Teleport"),
        Case("q13", "retina", "What is the man on the left wearing?",
             _program("BOX0=Loc(image=IMAGE, object='RIGHT')", "IMAGE0=CropLeftOf(image=IMAGE, box=BOX0)",
                      _vqa("What is the man wearing?", "IMAGE0")),
             "wrong_answer", gold="purple hat", result=retina, modules=("Loc", "CropLeftOf", "Vqa")),
        Case("q14", "coffee", "How many cats are on the table?",
             _program("BOX0=Loc(image=IMAGE, object='cat')", "ANSWER0=Count(box=BOX0)"),
             "wrong_answer", gold=str(coffee_cats + 1), result=coffee_cats, modules=("Loc", "Count")),
        Case("q15", CORRUPT, "What is in the broken photo?", None, "execution", gold="nothing",
             error="truncated or corrupt"),
        Case("q16", "horse", "Is it a woman?", _program(_vqa("Is it a woman?")),
             "correct", gold=f"The {horse}", result=horse, modules=("Vqa",)),  # articles do not count
        Case("q17", "coins", "How many coins?", _program("ANSWER0=Count(box=IMAGE)"),
             "plan_check", gold="24", error="expects Objects"),
        Case("q18", "moon", "Is it full?", "I am sorry ((( => not @@ a program", "plan_parse", gold="yes"),
        Case("q19", "clock", "Is the bottom of the clock not many?",
             _program("BOX0=Loc(image=IMAGE, object='BOTTOM')", "IMAGE0=Crop(image=IMAGE, box=BOX0)",
                      _vqa("What is on the left of the man?", "IMAGE0"),
                      "ANSWER1=Eval(expr=\"'yes' if {ANSWER0} != 'many' else 'no'\")"),
             "correct", gold=clock_not_many, result=clock_not_many,
             modules=("Loc", "Crop", "Vqa", "Eval")),
        Case("q20", "clock", "Is the clock what the photo shows?",
             _program(_vqa("What is this?"), _vqa(" ", target="ANSWER1"),
                      "ANSWER2=Eval(expr='{ANSWER0} == {ANSWER1}')"),
             "execution", gold="yes", error=BLANK_ERROR, modules=("Vqa",)),
    ]  # fmt: skip


def _nlvr_png(identifier: str, side: int) -> str:
    """The NLVR2 file name of one side of a pair (``dev-101-0-0``, 1: ``dev-101-0-img1.png``)."""
    return f"{identifier.rsplit('-', 1)[0]}-img{side}.png"


def _nlvr_cases(ref: Reference) -> list[Case]:
    """10 statements: 5 right, 2 wrong, 1 pair whose images are missing, 1 program that reads IMAGE, 1 blank question.

    With chunks of 5 items dev-110's Vqa steps share one batched call with dev-106's and dev-107's.
    """

    def vqa(identifier: str, side: int, question: str, crop: tuple[int, int, int, int] | None = None) -> str:
        return ref.vqa(_nlvr_png(identifier, side), question, crop)

    def both(question: str) -> tuple[str, str]:
        return _vqa(question, "LEFT"), _vqa(question, "RIGHT", "ANSWER1")

    same = "ANSWER2=Eval(expr=\"'yes' if {ANSWER0} == {ANSWER1} else 'no'\")"
    modules = ("Vqa", "Eval")

    a1 = vqa("dev-101-0-0", 0, "What color is it?"), vqa("dev-101-0-0", 1, "What color is it?")
    a2 = vqa("dev-102-0-0", 0, "What is the person wearing?"), vqa("dev-102-0-0", 1, "What is the person wearing?")
    a3 = vqa("dev-103-0-1", 0, "How many?"), vqa("dev-103-0-1", 1, "How many?")
    a4 = vqa("dev-104-0-0", 0, "Is there a cat?"), vqa("dev-104-0-0", 1, "Is there a cat?")
    a5 = vqa("dev-105-0-0", 0, "What color is it?", LEFT_CROP), vqa("dev-105-0-0", 1, "What color is it?")
    a6 = vqa("dev-106-0-0", 0, "What color is the mug?"), vqa("dev-106-0-0", 1, "What color is the mug?")
    a7 = vqa("dev-107-0-0", 0, "Is it a woman?"), vqa("dev-107-0-0", 1, "What is on the left?")
    assert vqa("dev-110-0-0", 0, "What is it?").strip(), "dev-110's first Vqa step must give an answer"

    def yes(truth: bool) -> str:
        return "yes" if truth else "no"

    t1, t2, t4, t5, t6 = (_same(*a) for a in (a1, a2, a4, a5, a6))
    assert t1 and not t2, "a pair of one photo answers alike, two photos (here) do not"
    return [
        Case("dev-101-0-0", "chelsea", "Both images show the same color.", _program(*both("What color is it?"), same),
             "correct", gold="True", result="yes", modules=modules, right="chelsea"),
        Case("dev-102-0-0", "astronaut", "The people in both images wear the same thing.",
             _program(*both("What is the person wearing?"), same),
             "correct", gold=str(t2), result=yes(t2), modules=modules, right="coffee"),
        Case("dev-103-0-1", "rocket", "The counts are as the model says.",
             _program(*both("How many?"),
                      f"ANSWER2=Eval(expr=\"{{ANSWER0}} == {_literal(a3[0])} and {{ANSWER1}} == {_literal(a3[1])}\")"),
             "correct", gold="True", result=True, modules=modules, right="coins"),
        Case("dev-104-0-0", "camera", "One image has a cat and the other does not.",
             _program(*both("Is there a cat?"), "ANSWER2=Eval(expr='{ANSWER0} != {ANSWER1}')"),
             "correct", gold=str(not t4), result=not t4, modules=modules, right="moon"),
        Case("dev-105-0-0", "page", "The left part of the left image has the color of the right image.",
             _program("BOX0=Loc(image=LEFT, object='LEFT')", "IMAGE0=Crop(image=LEFT, box=BOX0)",
                      _vqa("What color is it?", "IMAGE0"), _vqa("What color is it?", "RIGHT", "ANSWER1"), same),
             "correct", gold=str(t5), result=yes(t5), modules=("Loc", "Crop", *modules), right="chelsea"),
        Case("dev-106-0-0", "coffee", "The mugs have the same color.", _program(*both("What color is the mug?"), same),
             "wrong_answer", gold=str(not t6), result=yes(t6), modules=modules, right="chelsea"),
        Case("dev-107-0-0", "horse", "The right image shows what the model says.",
             _program(_vqa("Is it a woman?", "LEFT"), _vqa("What is on the left?", "RIGHT", "ANSWER1"),
                      f"ANSWER2=Eval(expr=\"{{ANSWER0}} == 'giraffe' or {{ANSWER1}} == {_literal(a7[1])}\")"),
             "wrong_answer", gold="False", result=True, modules=modules, right="clock"),
        Case("dev-108-0-0", "", "Both images are missing.", None, "execution", gold="True", error="no such file"),
        Case("dev-109-0-0", "coins", "There are coins.", _program(_vqa("Are there coins?")),
             "plan_check", gold="True", error="reads the input IMAGE, which was not given", right="coins"),
        Case("dev-110-0-0", "rocket", "Both images show the same thing.",
             _program(_vqa("What is it?", "LEFT"), _vqa(" ", "RIGHT", "ANSWER1"), same),
             "execution", gold="False", error=BLANK_ERROR, modules=("Vqa",), right="camera"),
    ]  # fmt: skip


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
    monkeypatch.delenv("VISPROG_CONFIG", raising=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than on several competing ones (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    blip, owl = tmp_path_factory.mktemp("tiny-blip-vqa"), tmp_path_factory.mktemp("tiny-owlv2")
    build_blip(blip)
    build_owl(owl, tmp_path_factory.mktemp("clip-vocab"))
    return {"blip": blip, "owl": owl}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GQA photos as ``<imageId>.jpg``, one cut short; the NLVR2 pairs as ``<pair>-img0.png``/``-img1.png``."""
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    photos = {name: Image.fromarray(getattr(data, name)()).convert("RGB").resize((W, H)) for name in IMAGE_IDS}
    for name, image_id in IMAGE_IDS.items():
        photos[name].save(folder / f"{image_id}.jpg", quality=90)
    whole = (folder / f"{IMAGE_IDS['coffee']}.jpg").read_bytes()
    (folder / f"{CORRUPT}.jpg").write_bytes(whole[: len(whole) // 2])  # a download cut short
    for case in _NLVR_LAYOUT:
        for side, photo in enumerate((case[1], case[2])):
            if photo:
                photos[photo].save(folder / _nlvr_png(case[0], side))
    return folder


#: (identifier, left photo, right photo) of the NLVR2 pairs; '' where the file is missing.
_NLVR_LAYOUT = [
    ("dev-101-0-0", "chelsea", "chelsea"),
    ("dev-102-0-0", "astronaut", "coffee"),
    ("dev-103-0-1", "rocket", "coins"),
    ("dev-104-0-0", "camera", "moon"),
    ("dev-105-0-0", "page", "chelsea"),
    ("dev-106-0-0", "coffee", "chelsea"),
    ("dev-107-0-0", "horse", "clock"),
    ("dev-108-0-0", "", ""),
    ("dev-109-0-0", "coins", "coins"),
    ("dev-110-0-0", "rocket", "camera"),
]


@pytest.fixture(scope="module")
def reference(models: dict[str, Path], images: Path) -> Reference:
    ref = Reference(models["blip"], models["owl"], images)
    # the helper is test_vqa's reference, with its model loaded once
    first = f"{IMAGE_IDS['astronaut']}.jpg"
    question = "What is the person wearing?"
    raw = blip_reference(str(models["blip"]), ref.image(first), question, max_new_tokens=MAX_NEW_TOKENS)
    assert ref.vqa(first, question) == clean_answer(raw)
    # Loc's threshold: halfway across the first clear gap below the 6th best of the Count queries' scores
    scores = sorted(
        (s for photo, label in (("chelsea", "cat"), ("astronaut", "person"), ("coffee", "cat"))
         for s in ref.owl_scores(f"{IMAGE_IDS[photo]}.jpg", label)),
        reverse=True,
    )  # fmt: skip
    k = next(k for k in range(6, len(scores)) if scores[k - 1] - scores[k] > 1e-4)
    ref.threshold = (scores[k - 1] + scores[k]) / 2
    return ref


def _runtime(models: Mapping[str, Path], threshold: float) -> Runtime:
    return Runtime(
        device_request="cpu",
        modules={
            "Vqa": {"model": str(models["blip"]), "max_new_tokens": MAX_NEW_TOKENS},
            "Loc": {"backend": "owlv2", "model": str(models["owl"]), "box_threshold": threshold, "nms_iou": 1.0},
        },
    )


class RecordingInterpreter(Interpreter):
    """The interpreter, keeping the traces of what ``run_many`` ran (records keep only the time per module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.traces: list[Trace] = []
        self.jobs: list[int] = []

    def run_many(self, jobs: Sequence[Any], **kwargs: Any) -> list[Any]:
        results = super().run_many(jobs, **kwargs)
        self.jobs.append(len(jobs))
        for r in results:
            trace = r if isinstance(r, Trace) else getattr(r, "trace", None)
            if isinstance(trace, Trace):
                self.traces.append(trace)
        return results


def _planner(server: ScriptedServer) -> Planner:
    backend = client_from_options(base_url=server.url, model="tiny", max_retries=0, timeout=5)
    return Planner(backend, registry=default_registry(), cache=False, repair_rounds=0)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_items(cases: Sequence[Case], records: Sequence[dict[str, Any]]) -> None:
    """Per item: outcome, correctness, the answer the models gave, the error, the modules timed."""
    assert [r["id"] for r in records] == [c.id for c in cases]
    for case, rec in zip(cases, records, strict=True):
        where = f"{case.id}: {rec}"
        assert rec["failure"] == (None if case.outcome == "correct" else case.outcome), where
        assert rec["correct"] is (case.outcome == "correct"), where
        assert rec["expected"] == case.gold, where
        if case.outcome in ("correct", "wrong_answer"):
            assert rec["answer"] == case.result and type(rec["answer"]) is type(case.result), where
            assert rec["program"] == case.reply and rec["error"] is None, where
        else:
            assert rec["answer"] is None and case.error in rec["error"], where
        if case.reply is None:  # never planned
            assert rec["programs"] == [] and rec["program"] is None and rec["timings"] == {}, where
        elif case.outcome in ("plan_parse", "plan_check"):
            assert rec["programs"] == [None] and rec["program"] is None and rec["timings"] == {}, where
        else:
            assert rec["programs"] == [case.reply], where
            ran = {*case.modules, "Result"} if case.outcome in ("correct", "wrong_answer") else set(case.modules)
            assert set(rec["timings"]) >= ran, where


def _check_requests(server: ScriptedServer, cases: Sequence[Case]) -> None:
    """One planning request per item whose images load, in item order, each about its item."""
    planned = [c for c in cases if c.reply is not None]
    assert len(server.requests) == len(planned) and server.pending == 0
    for request, case in zip(server.requests, planned, strict=True):
        assert case.text in request.body["messages"][-1]["content"]


def _step_batches(interpreter: RecordingInterpreter, module: str) -> list[int]:
    return [r.batch for t in interpreter.traces for r in t.records if r.module == module]


def _traces(interpreter: RecordingInterpreter, cases: Sequence[Case]) -> dict[str, Trace]:
    """The trace of each item whose program ran, by id (one sample: one job per item, in item order)."""
    ran = [c.id for c in cases if c.reply is not None and c.outcome not in ("plan_parse", "plan_check")]
    assert len(interpreter.traces) == len(ran)
    return dict(zip(ran, interpreter.traces, strict=True))


def _vqa_batches(trace: Trace) -> list[int]:
    return [r.batch for r in trace.records if r.module == "Vqa"]


def _check_blank(trace: Trace, first: str, shared: Sequence[Trace]) -> None:
    """The blank question's item: its batched Vqa call failed and was retried one call at a time.

    Its first Vqa step keeps its answer (``first``, computed directly), the blank one has the
    error, its Eval never ran. The Vqa steps of the items in ``shared`` were in the same
    batched call: they ran again on their own (batch 1) and answered.
    """
    assert trace.error is not None and BLANK_ERROR in trace.error, trace.error
    steps = [(r.target, r.module, r.output, r.batch) for r in trace.records]
    assert steps == [("ANSWER0", "Vqa", first, 1), ("ANSWER1", "Vqa", None, 1)], steps
    assert trace.records[0].error is None and (trace.records[1].error or "").startswith(BLANK + " (at ")
    for t in shared:
        assert t.records and all(r.error is None for r in t.records if r.module == "Vqa")
        assert _vqa_batches(t) == [1] * len(_vqa_batches(t)), t.to_text()


def _outcomes(path: Path) -> list[tuple[Any, ...]]:
    """What an evaluation made of each item: id, correct, failure, answer, error."""
    return [(r["id"], r["correct"], r["failure"], r["answer"], r["error"]) for r in _records(path)]


# --- the tests -----------------------------------------------------------------------------------


def _evaluate_gqa(
    items: Sequence[Item], cases: Sequence[Case], interpreter: RecordingInterpreter, out: Path, batch_size: int
) -> Summary:
    """The GQA file planned by a fresh scripted server and run by ``interpreter``, ``batch_size`` items a chunk."""
    with serve_scripted() as server:
        server.script([c.reply for c in cases if c.reply is not None])
        summary = evaluate(items, _planner(server), interpreter, out_path=out, batch_size=batch_size, progress=False)
        _check_requests(server, cases)
    return summary


def test_gqa_question_json_with_tiny_models(
    models: dict[str, Path], images: Path, reference: Reference, tmp_path: Path
) -> None:
    cases = _gqa_cases(reference)
    assert len(cases) == 20
    questions = {
        c.id: {
            "imageId": IMAGE_IDS.get(c.image, c.image),
            "question": c.text,
            "answer": c.gold,
            "fullAnswer": f"The answer is {c.gold}.",
            "isBalanced": True,
            "types": {"structural": "query", "semantic": "attr", "detailed": "tiny"},
        }
        for c in cases
    }
    data = tmp_path / "testdev_balanced_questions.json"
    data.write_text(json.dumps(questions))
    items = load_items(data, "gqa", images=images)
    assert [i.images["IMAGE"] for i in items[:1]] == [str(images / f"{IMAGE_IDS['astronaut']}.jpg")]
    runtime = _runtime(models, reference.threshold)
    interpreter = RecordingInterpreter(default_registry(), runtime)
    out = tmp_path / "gqa_results.jsonl"
    summary = _evaluate_gqa(items, cases, interpreter, out, batch_size=7)

    # 20 items: 10 right; 3 wrong answers; 4 execution errors (a missing photo, a corrupt one, Eval adding
    # text to a number, a blank question); 2 programs that fail the check; 1 reply that is not a program.
    assert (summary.n, summary.correct, summary.skipped) == (20, 10, 0)
    assert summary.accuracy == pytest.approx(10 / 20)
    assert summary.failures == {"plan_parse": 1, "plan_check": 2, "execution": 4, "wrong_answer": 3}
    assert set(summary.module_seconds) >= {"Vqa", "Loc", "Crop", "CropBelow", "CropLeftOf", "Count", "Eval", "Result"}
    saved = json.loads((tmp_path / "gqa_results.summary.json").read_text())
    assert saved["failures"] == summary.failures and saved["accuracy"] == pytest.approx(10 / 20)
    _check_items(cases, _records(out))

    # The counts vary with the photo (a threshold every box passes would make Count trivial).
    persons = reference.count(f"{IMAGE_IDS['astronaut']}.jpg", "person")
    counts = [c.result for c in cases if c.id in ("q09", "q14")] + [persons]
    assert len(set(counts)) > 1, counts
    _check_batching(interpreter, runtime, chunks=[7, 5, 3], loc=True)
    # The last chunk (q16, q19, q20): q20's blank question failed the Vqa call it shared with q16.
    traces = _traces(interpreter, cases)
    first = reference.vqa(f"{IMAGE_IDS['clock']}.jpg", "What is this?")
    _check_blank(traces["q20"], first, shared=[traces["q16"]])
    assert _vqa_batches(traces["q01"]) == [5]  # the first chunk's five first Vqa steps, in one call

    # Other chunks and batch caps: every item the same. One chunk of all 15 programs, its first
    # Vqa call (9 steps) retried one by one, the Vqa steps after the crops still batched; then
    # chunks of 3 items and no batched call at all.
    expected = _outcomes(out)
    for batch_size, max_batch, chunks in ((20, None, [15]), (3, 1, [3, 3, 2, 2, 2, 1, 2])):
        rerun = RecordingInterpreter(default_registry(), runtime, max_batch=max_batch)
        again = tmp_path / f"gqa_results_{batch_size}.jsonl"
        summary = _evaluate_gqa(items, cases, rerun, again, batch_size=batch_size)
        assert (summary.n, summary.correct) == (20, 10)
        assert summary.failures == {"plan_parse": 1, "plan_check": 2, "execution": 4, "wrong_answer": 3}
        assert _outcomes(again) == expected, batch_size
        assert rerun.jobs == chunks
        traces = _traces(rerun, cases)
        first_round = ("q01", "q02", "q04", "q05", "q06", "q11", "q16")
        _check_blank(traces["q20"], first, shared=[traces[i] for i in first_round])
        assert max(_step_batches(rerun, "Vqa")) == (4 if max_batch is None else 1)  # q03, q07, q13, q19
        assert max(_step_batches(rerun, "Loc")) == (7 if max_batch is None else 1)  # all 7 Loc steps
    assert sorted(runtime.pool.loads.values()) == [1] * len(runtime.pool.loads)  # the models loaded once


def _check_batching(interpreter: RecordingInterpreter, runtime: Runtime, chunks: list[int], loc: bool) -> None:
    """Each chunk's valid programs ran in one ``run_many``; their Vqa (and Loc) steps shared module calls."""
    assert interpreter.jobs == chunks
    vqa = _step_batches(interpreter, "Vqa")
    assert max(vqa) > 1 and sum(1 / b for b in vqa) < len(vqa), vqa
    if loc:
        assert max(_step_batches(interpreter, "Loc")) > 1
    assert sorted(runtime.pool.loads.values()) == [1] * len(runtime.pool.loads)  # each model loaded once


def test_nlvr2_jsonl_with_tiny_models(
    models: dict[str, Path], images: Path, reference: Reference, tmp_path: Path
) -> None:
    cases = _nlvr_cases(reference)
    assert len(cases) == 10
    assert [(c.id, c.image, c.right) for c in cases] == [(i, left, right) for i, left, right in _NLVR_LAYOUT]
    rows = [
        {
            "identifier": c.id,
            "sentence": c.text,
            "label": c.gold,
            "left_url": f"https://example.org/nlvr2/{_nlvr_png(c.id, 0).replace('.png', '.jpg')}",
            "right_url": f"https://example.org/nlvr2/{_nlvr_png(c.id, 1).replace('.png', '.jpg')}",
            "writer": "7",
            "synset": "n02121808",
            "query": "tiny models",
        }
        for c in cases
    ]
    data = tmp_path / "dev.json"  # NLVR2 ships its JSON lines as dev.json
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    items = load_items(data, "nlvr", images=images)
    assert items[0].images == {"LEFT": str(images / "dev-101-0-img0.png"), "RIGHT": str(images / "dev-101-0-img1.png")}
    assert items[7].images["LEFT"] == "https://example.org/nlvr2/dev-108-0-img0.jpg"  # no file: the URL is kept
    runtime = _runtime(models, reference.threshold)
    interpreter = RecordingInterpreter(default_registry(), runtime)
    out = tmp_path / "nlvr_results.jsonl"
    with serve_scripted() as server:
        server.script([c.reply for c in cases if c.reply is not None])
        summary = evaluate(items, _planner(server), interpreter, out_path=out, batch_size=5, progress=False)
        _check_requests(server, cases)

    # 10 statements: 5 right; 2 wrong; 2 execution errors (missing images, a blank question); 1 failing the check.
    assert (summary.n, summary.correct) == (10, 5)
    assert summary.accuracy == pytest.approx(5 / 10)
    assert summary.failures == {"plan_parse": 0, "plan_check": 1, "execution": 2, "wrong_answer": 2}
    records = _records(out)
    _check_items(cases, records)
    right = [r["answer"] for r in records if r["correct"]]
    assert {normalize_answer(a) for a in right} == {"yes", "no"}, "both true and false statements are right"
    _check_batching(interpreter, runtime, chunks=[5, 3], loc=False)
    # The second chunk (dev-106, dev-107, dev-110): one Vqa call of 6 steps, failed by dev-110's blank question.
    traces = _traces(interpreter, cases)
    first = reference.vqa(_nlvr_png("dev-110-0-0", 0), "What is it?")
    _check_blank(traces["dev-110-0-0"], first, shared=[traces["dev-106-0-0"], traces["dev-107-0-0"]])
    assert _vqa_batches(traces["dev-101-0-0"]) == [9, 9]  # the first chunk's first Vqa steps, in one call


def test_eval_command_on_the_nlvr2_file(
    models: dict[str, Path], images: Path, reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``visprog eval --task nlvr`` with the models in a config file: the same records, item by item."""
    from visprog.apps.cli import main

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        monkeypatch.setenv(name, "error" if "VERBOSITY" in name else "1")  # -q sets them; restored afterwards
    cases = _nlvr_cases(reference)
    rows = [{"identifier": c.id, "sentence": c.text, "label": c.gold} for c in cases]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "config.toml"
    with serve_scripted() as server:
        config.write_text(
            'device = "cpu"\n'
            f'[modules.Vqa]\nmodel = "{models["blip"]}"\nmax_new_tokens = {MAX_NEW_TOKENS}\n'
            f'[llm]\nbase_url = "{server.url}"\nmodel = "tiny"\nmax_retries = 0\ntimeout = 5\n'
        )
        server.script([c.reply for c in cases if c.reply is not None])
        cli = tmp_path / "cli.jsonl"
        argv = ["eval", str(data), "--task", "nlvr", "--images", str(images), "-o", str(cli), "--config", str(config)]
        out, err = io.StringIO(), io.StringIO()
        code = main([*argv, "--no-cache", "--repair", "0", "--batch-size", "4", "-q"], out=out, err=err)
        assert code == 0, err.getvalue()
        _check_requests(server, cases)

    _check_items(cases, _records(cli))
    summary = json.loads((tmp_path / "cli.summary.json").read_text())
    assert (summary["n"], summary["correct"]) == (10, 5)
    assert summary["failures"] == {"plan_parse": 0, "plan_check": 1, "execution": 2, "wrong_answer": 2}
    assert "50.0% (5/10)" in out.getvalue() and "time in Vqa" in out.getvalue()  # the table
