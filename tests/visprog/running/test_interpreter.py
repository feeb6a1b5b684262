from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from tests.fakes import check
from visprog.errors import StepError, VisprogError
from visprog.language.signatures import Registry, module
from visprog.language.values import Image
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context

NLVR = """\
ANSWER0=Vqa(image=LEFT, question='How many wolves are in the image?')
ANSWER1=Vqa(image=RIGHT, question='How many wolves are in the image?')
ANSWER2=Vqa(image=LEFT, question='Is it snowing?')
ANSWER3=Vqa(image=RIGHT, question='Is it snowing?')
ANSWER4=Eval(expr='{ANSWER0} + {ANSWER1} == 4 and ({ANSWER2} xor {ANSWER3})')
FINAL_ANSWER=Result(var=ANSWER4)
"""


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    fakes.reset()
    yield
    fakes.reset()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return fakes.registry()


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return {"LEFT": PILImage.fromarray(data.astronaut()), "RIGHT": PILImage.fromarray(data.chelsea())}


def test_four_independent_vqa_steps_arrive_as_one_call_of_four(registry: Registry, images: dict[str, Image]) -> None:
    fakes.VQA_ANSWERS["Is it snowing?"] = "no"
    fakes.VQA_ANSWERS["How many wolves are in the image?"] = "two"
    trace = Interpreter(registry).run(NLVR, images)
    assert fakes.CALLS == [("Vqa", 4)]
    assert [trace.step(f"ANSWER{i}").batch for i in range(4)] == [4, 4, 4, 4]
    # 'two' + 'two' == 4 is True; 'no' xor 'no' is False
    assert trace.result is False
    assert trace.result_var == "FINAL_ANSWER"


def test_max_batch_splits_and_one_disables_batching(registry: Registry, images: dict[str, Image]) -> None:
    Interpreter(registry, max_batch=3).run(NLVR, images)
    assert fakes.CALLS == [("Vqa", 3), ("Vqa", 1)]
    fakes.reset()
    Interpreter(registry, max_batch=1).run(NLVR, images)
    assert fakes.CALLS == [("Vqa", 1)] * 4
    with pytest.raises(ValueError):
        Interpreter(registry, max_batch=0)


def test_steps_run_in_dependency_order_with_reassignment(registry: Registry, images: dict[str, Image]) -> None:
    program = (
        "OBJ0=Seg(image=IMAGE)\n"
        "OBJ1=Select(image=IMAGE, object=OBJ0, query='dog')\n"
        "IMAGE0=Replace(image=IMAGE, object=OBJ1, prompt='a cat')\n"
        "OBJ1=Select(image=IMAGE0, object=OBJ0, query='sky')\n"
        "IMAGE0=ColorPop(image=IMAGE0, object=OBJ1)\n"
        "FINAL_RESULT=Result(var=IMAGE0)\n"
    )
    image = images["LEFT"]
    trace = Interpreter(registry).run(program, {"IMAGE": image})
    out = np.asarray(trace.result)
    w = image.width
    # the middle band ('dog') was painted grey by Replace, then greyed again outside 'sky'
    assert (out[:, w // 3 + 1 : 2 * w // 3 - 1] == 128).all()
    # the 'sky' band keeps its colour; the 'person' band became gray
    assert np.array_equal(out[:, 2 * w // 3 + 1 :], np.asarray(image)[:, 2 * w // 3 + 1 :])
    left = out[:, : w // 3 - 1].astype(int)
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()
    assert [r.target for r in sorted(trace.records, key=lambda r: r.index)] == [
        "OBJ0", "OBJ1", "IMAGE0", "OBJ1", "IMAGE0", "FINAL_RESULT",
    ]  # fmt: skip
    assert trace.step("OBJ1").output[0].label == "sky"


def test_trace_records_inputs_outputs_and_time(registry: Registry, images: dict[str, Image]) -> None:
    trace = Interpreter(registry).run(
        "BOX0=Loc(image=IMAGE, object='wolf')\nANSWER0=Count(box=BOX0)\nRESULT=ANSWER0", {"IMAGE": images["LEFT"]}
    )
    record = trace.step("ANSWER0")
    assert record.line == 2 and record.module == "Count" and record.source == "ANSWER0=Count(box=BOX0)"
    assert record.inputs["box"] is trace.values["BOX0"]
    assert record.output == 2 and record.seconds >= 0 and record.error is None
    assert trace.result == 2 and trace.ok and trace.seconds > 0
    assert trace.seconds_by_module().keys() == {"Loc", "Count", "="}
    text = trace.to_text()
    # the program's names, each variable's value in brackets; the result named once, at the end
    assert "line  1  BOX0 = Loc(image=IMAGE [512x512], object='wolf')\n         -> Objects (2)  (" in text
    assert "line  2  ANSWER0 = Count(box=BOX0 [Objects (2)])\n         -> int 2  (" in text
    assert "line  3  RESULT=ANSWER0\n         -> int 2  (" in text
    assert text.endswith(f"\nresult: RESULT (line 3), total {trace.seconds * 1000:.1f} ms")


def test_a_failing_step_keeps_everything_computed_so_far(registry: Registry, images: dict[str, Image]) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='dog')\n"
        "IMAGE0=Crop(image=IMAGE, box=BOX0)\n"
        "ANSWER0=Vqa(image=IMAGE0, question='What is it?')\n"
        "ANSWER1=Eval(expr='{ANSWER0} / 0')\n"
        "FINAL_RESULT=Result(var=ANSWER1)\n"
    )
    fakes.VQA_ANSWERS["What is it?"] = "3"
    with pytest.raises(StepError) as info:
        Interpreter(registry).run(program, {"IMAGE": images["LEFT"]})
    e = info.value
    assert (e.line, e.module, e.target) == (4, "Eval", "ANSWER1")
    assert str(e).startswith("line 4, Eval (step ANSWER1) failed: division by zero")
    assert "'{ANSWER0} / 0'" in str(e)
    assert e.trace is not None and not e.trace.ok
    assert set(e.partial_results) == {"IMAGE", "BOX0", "IMAGE0", "ANSWER0"}
    assert e.partial_results["ANSWER0"] == "3"
    failed = e.trace.step("ANSWER1")
    assert failed.error is not None and "division by zero" in failed.error
    assert "FINAL_RESULT" not in e.trace.values


def test_a_module_exception_becomes_a_step_error(registry: Registry, images: dict[str, Image]) -> None:
    with pytest.raises(StepError) as info:
        Interpreter(registry).run(
            # the name in a variable: the checker cannot see it
            "NAME='no_such_emoji_at_all'\nOBJ0=FaceDet(image=IMAGE)\n"
            "IMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)\nFINAL_RESULT=Result(var=IMAGE0)",
            {"IMAGE": images["LEFT"]},
        )
    assert info.value.line == 3 and info.value.module == "Emoji"
    assert "unknown emoji 'no_such_emoji_at_all'" in str(info.value)
    assert len(info.value.partial_results["OBJ0"]) == 1  # the astronaut's face


def test_injection_through_a_vqa_answer_runs_nothing(
    registry: Registry, images: dict[str, Image], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = f"') or __import__('os').system('touch {marker}') or ('"
    fakes.VQA_ANSWERS["What does the sign say?"] = payload
    trace = Interpreter(registry).run(
        "ANSWER0=Vqa(image=IMAGE, question='What does the sign say?')\n"
        "ANSWER1=Eval(expr=\"'yes' if {ANSWER0} == 'stop' else 'no'\")\n"
        "ANSWER2=Eval(expr=\"'{ANSWER0}'\")\n"
        "FINAL_RESULT=Result(var=ANSWER1)",
        {"IMAGE": images["LEFT"]},
    )
    assert trace.result == "no"
    assert trace.values["ANSWER2"] == payload
    assert not marker.exists()


def test_wrong_outputs_and_missing_inputs_are_reported(images: dict[str, Image]) -> None:
    @module
    def Broken(image: Image) -> int:
        """Claims an int, returns text.

        Args:
            image: any image.
        """
        return "many"  # type: ignore[return-value]

    reg = fakes.registry()
    reg.register(Broken)
    with pytest.raises(StepError, match="Broken returned a wrong value: expected int, got str 'many'"):
        Interpreter(reg).run("N=Broken(image=IMAGE)\nRESULT=N", {"IMAGE": images["LEFT"]})
    interpreter = Interpreter(reg)
    checked = check("A=Vqa(image=RIGHT, question='q')\nRESULT=A", registry=reg)
    with pytest.raises(VisprogError, match="uses input\\(s\\) RIGHT but only LEFT were given"):
        interpreter.run(checked, {"LEFT": images["LEFT"]})


def test_answers_are_coerced_to_the_declared_types(images: dict[str, Image]) -> None:
    seen: list[Any] = []

    @module
    def Repeat(text: str, times: int, ctx: Context) -> list[str]:
        """Repeat a text.

        Args:
            text: what to repeat.
            times: how often.
        """
        seen.append((times, ctx.module))
        return [text] * times

    reg = fakes.registry()
    reg.register(Repeat)
    fakes.VQA_ANSWERS["How many?"] = "three"
    trace = Interpreter(reg).run(
        "N=Vqa(image=IMAGE, question='How many?')\nM=Eval(expr='{N}')\nL=Repeat(text='a', times=M)\nRESULT=L",
        {"IMAGE": images["LEFT"]},
    )
    assert trace.result == ["a", "a", "a"]
    assert seen == [(3, "Repeat")]


def test_a_shared_run_cache_and_pool_reach_modules(images: dict[str, Image]) -> None:
    computed: list[str] = []

    @module
    def Feature(image: Image, ctx: Context) -> int:
        """A per-image feature computed once per run.

        Args:
            image: the image.
        """
        model = ctx.pool.get("model", lambda: computed.append("load") or 7)
        return ctx.cache.get(image, "feature", lambda: computed.append("feature") or model)  # type: ignore[no-any-return]

    reg = fakes.registry()
    reg.register(Feature)
    interpreter = Interpreter(reg)
    program = "A=Feature(image=IMAGE)\nB=Feature(image=IMAGE)\nC=Feature(image=LEFT)\nRESULT=C"
    for _ in range(2):
        trace = interpreter.run(program, {"IMAGE": images["LEFT"], "LEFT": images["RIGHT"]})
        assert trace.result == 7
    # the model loads once per interpreter; features once per image per run
    assert computed == ["load", "feature", "feature", "feature", "feature"]


def test_run_passes_text_inputs_through_and_loads_image_paths(tmp_path: Path, images: dict[str, Image]) -> None:
    import visprog
    from visprog.errors import ImageError

    photo = tmp_path / "photo.png"
    images["LEFT"].save(photo)
    registry = fakes.registry()
    program = "ANSWER0=Eval(expr=\"'{NOTE}'\")\nN=Count(box=[])\nFINAL_RESULT=Result(var=ANSWER0)"
    trace = visprog.run(program, {"IMAGE": str(photo), "NOTE": "A sentence. With dots."}, registry=registry)
    assert trace.result == "A sentence. With dots."
    with pytest.raises(ImageError, match=r"missing\.jpg: no such file"):
        visprog.run(program, {"IMAGE": str(tmp_path / "missing.jpg"), "NOTE": "x"}, registry=registry)
