from __future__ import annotations

import pytest

from tests import fakes
from tests.fakes import check
from visprog.errors import ProgramCheckError
from visprog.language import checker
from visprog.language.signatures import Registry
from visprog.language.values import Type


@pytest.fixture(scope="module")
def registry() -> Registry:
    return fakes.registry()


def messages(text: str, registry: Registry, **kwargs: object) -> list[str]:
    with pytest.raises(ProgramCheckError) as info:
        check(text, registry=registry, **kwargs)  # type: ignore[arg-type]
    return info.value.messages


def test_module_names_resolve_in_any_spelling(registry: Registry) -> None:
    text = "\n".join(
        f"X{i}={name}(image=IMAGE, box=[])"
        for i, name in enumerate(["CROP_RIGHTOF", "CropRightOf", "croprightof", "Crop_Right_Of"])
    )
    checked = check(text + "\nRESULT=X3", registry=registry)
    assert {s.spec.name for s in checked.steps[:4] if s.spec} == {"CropRightOf"}
    aliases = ["CROP_FRONTOF", "CROP_INFRONT", "CROP_INFRONTOF", "CROP_BEHIND", "CROP_AHEAD", "Crop"]
    checked = check("\n".join(f"X={a}(image=IMAGE, box=[])" for a in aliases) + "\nRESULT=X", registry=registry)
    assert {s.spec.name for s in checked.steps if s.spec} == {"Crop"}
    for spelling in ["VQA", "Vqa", "vqa"]:
        checked = check(f"A={spelling}(image=IMAGE, question='q')\nRESULT=A", registry=registry)
        assert checked.steps[0].spec.name == "Vqa"  # type: ignore[union-attr]
    for spelling in ["FACEDET", "FaceDet", "Facedet", "face_det"]:
        checked = check(f"A={spelling}(image=IMAGE)\nRESULT=A", registry=registry)
        assert checked.steps[0].spec.name == "FaceDet"  # type: ignore[union-attr]


def test_the_issue_example_message(registry: Registry) -> None:
    with pytest.raises(ProgramCheckError) as info:
        check("BOX0=Loc(image=IMAGE, object='dog')\nOBJ0=Sgment(image=IMAGE)\nR=Result(var=OBJ0)", registry=registry)
    assert str(info.value) == (
        "line 2, col 6: unknown module 'Sgment' (did you mean 'Seg'?)\n"
        "  OBJ0=Sgment(image=IMAGE)\n"
        "       ^"
    )


def test_every_problem_is_reported_in_one_pass(registry: Registry) -> None:
    text = (
        "BOX0=Lok(image=IMAGE, object='dog')\n"  # unknown module, suggestion
        "IMAGE0=Crop(image=OBJ9, box=BOX0, box=BOX0)\n"  # undefined variable, repeated argument
        "IMAGE1=Crop(img=IMAGE)\n"  # unknown argument with suggestion, missing arguments
        "OBJ0=FaceDet(image=IMAGE)\n"
        "IMAGE2=Crop(image=OBJ0, box=OBJ0)\n"  # objects where an image is expected
        "ANSWER0=Vqa(image=IMAGE, question=1)\n"  # int where str expected
        "ANSWER1=Eval(expr='{ANSWR0} > 0')\n"  # undefined variable in an expression
        "X=Count(box=Y)\n"  # used before assigned
        "Y=Count(box=OBJ0)\n"
    )
    assert messages(text, registry) == [
        "line 1, col 6: unknown module 'Lok' (did you mean 'Loc'?)",
        "line 2, col 19: undefined variable 'OBJ9'",
        "line 2, col 35: argument 'box' of Crop is given twice (first at col 25); it takes: image, box",
        "line 3, col 8: Crop is missing argument 'image' (Image: the image to crop.)",
        "line 3, col 8: Crop is missing argument 'box' (Objects: the objects; the first (best) one's box is used.)",
        "line 3, col 13: unknown argument 'img' for Crop (did you mean 'image'?); it takes: image, box",
        "line 5, col 19: argument 'image' of Crop expects Image, got Objects (OBJ0, from line 4)",
        "line 6, col 35: argument 'question' of Vqa expects str, got int 1",
        "line 7, col 20: undefined variable 'ANSWR0' in the expression (did you mean 'ANSWER0'?)",
        "line 8, col 13: 'Y' is used before it is assigned (on line 9)",
    ]


def test_types_propagate_and_reassignment_sees_the_latest_value(registry: Registry) -> None:
    checked = check(
        "OBJ0=Seg(image=IMAGE)\n"
        "OBJ1=Select(image=IMAGE, object=OBJ0, query='dog', category=None)\n"
        "IMAGE0=Replace(image=IMAGE, object=OBJ1, prompt='a cat')\n"
        "OBJ1=Select(image=IMAGE0, object=OBJ0, query='sky')\n"
        "IMAGE0=ColorPop(image=IMAGE0, object=OBJ1)\n"
        "N=Count(box=OBJ1)\n"
        "FINAL_RESULT=Result(var=IMAGE0)\n",
        registry=registry,
    )
    assert [s.type for s in checked.steps] == [
        Type.OBJECTS,
        Type.OBJECTS,
        Type.IMAGE,
        Type.OBJECTS,
        Type.IMAGE,
        Type.INT,
        Type.IMAGE,  # Result(var=IMAGE0) has its value's type
    ]
    # the second Select reads the Replace output (step 2), not the input image
    assert checked.steps[3].sources == {"IMAGE0": 2, "OBJ0": 0}
    # ColorPop reads the latest OBJ1 (step 3) and the IMAGE0 assigned before it (step 2)
    assert checked.steps[4].sources == {"IMAGE0": 2, "OBJ1": 3}
    assert checked.steps[5].sources == {"OBJ1": 3}
    assert checked.steps[6].sources == {"IMAGE0": 4}
    assert checked.result == 6


def test_eval_dependencies_come_from_the_expression(registry: Registry) -> None:
    checked = check(
        "A=Vqa(image=LEFT, question='q')\nB=Vqa(image=RIGHT, question='q')\n"
        "C=Eval(expr=\"'yes' if {A} == {B} else 'no'\")\nFINAL_ANSWER=Result(var=C)",
        registry=registry,
    )
    assert checked.steps[2].deps == {0, 1}
    assert checked.graph.predecessors(2) == {0, 1}
    assert checked.inputs == {"LEFT": Type.IMAGE, "RIGHT": Type.IMAGE}


def test_inputs_are_named_by_the_caller(registry: Registry) -> None:
    text = "A=Vqa(image=PHOTO, question='q')\nRESULT=A"
    assert messages(text, registry) == ["line 1, col 13: undefined variable 'PHOTO'"]
    assert check(text, registry=registry, inputs=["PHOTO"]).used_inputs == ["PHOTO"]
    assert messages("A=Vqa(image=PHOTO, question='q')\nRESULT=A", registry, inputs={"PHOTO": Type.STR}) == [
        "line 1, col 13: argument 'image' of Vqa expects Image, got str (input PHOTO)"
    ]


def test_inputs_come_second_and_the_registry_is_named(registry: Registry) -> None:
    text = "A=Vqa(image=PHOTO, question='q')\nRESULT=A"
    assert check(text, ["PHOTO"], registry=registry).used_inputs == ["PHOTO"]
    assert check(text, {"PHOTO": Type.IMAGE}, registry=registry).inputs == {"PHOTO": Type.IMAGE}
    with pytest.raises(TypeError, match="registry"):
        check(text, ["PHOTO"])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        check(text, ["PHOTO"], registry)  # type: ignore[call-arg]


def test_an_input_that_was_not_given_is_named_once(registry: Registry) -> None:
    text = "A=Vqa(image=IMAGE, question='q')\nB=Vqa(image=IMAGE, question='r')\nRESULT=A"
    assert messages(text, registry, inputs=["LEFT"]) == [
        "line 1, col 13: the program reads the input IMAGE, which was not given (given: LEFT)"
    ]
    assert messages(text, registry, inputs=[]) == [
        "line 1, col 13: the program reads the input IMAGE, which was not given (given: none)"
    ]
    with pytest.raises(ProgramCheckError) as info:
        check(text, registry=registry, inputs=[])
    assert info.value.missing_inputs == ("IMAGE",)
    # a program that assigns IMAGE itself is not missing an input
    text = "IMAGE=LEFT\nA=Vqa(image=IMAGE, question='q')\nRESULT=A"
    assert check(text, ["LEFT"], registry=registry).used_inputs == ["LEFT"]


def test_eval_needs_a_quoted_expression_that_parses(registry: Registry) -> None:
    got = messages("A=Count(box=[1])\nB=Eval(expr=A)\nC=Eval(expr='{A} +')\nRESULT=C", registry)
    assert got[0].startswith("line 1, col 13: argument 'box' of Count expects Objects")
    assert got[1] == (
        "line 2, col 13: argument 'expr' of Eval expects an expression in quotes, got int (A, from line 1)"
    )
    assert got[2].startswith("line 3, col ") and "bad expression for 'expr' of Eval" in got[2]


def test_numbers_widen_and_none_only_for_optional(registry: Registry) -> None:
    check(
        "L=List(query='x', max=3)\nO=Seg(image=IMAGE)\nC=Classify(image=IMAGE, object=O, categories=L)\nRESULT=C",
        registry=registry,
    )
    check("O=Seg(image=IMAGE)\nC=Classify(image=IMAGE, object=O, categories='cat,dog')\nRESULT=C", registry=registry)
    assert messages("L=List(query='x', max=None)\nRESULT=L", registry) == [
        "line 1, col 23: argument 'max' of List expects int, got None"
    ]


def test_input_names_come_from_the_caller_not_the_language() -> None:
    """The checker knows no input names of its own: its callers pass the tasks' (visprog.check does)."""
    registry = fakes.registry()
    text = "A=Vqa(image=PHOTO, question='q')\nRESULT=A"
    assert checker.check(text, registry=registry, known_inputs=["PHOTO"]).used_inputs == ["PHOTO"]
    with pytest.raises(ProgramCheckError) as info:
        checker.check(text, [], registry=registry, known_inputs=["PHOTO"])
    assert info.value.missing_inputs == ("PHOTO",)
    assert "the program reads the input PHOTO, which was not given (given: none)" in str(info.value)
    with pytest.raises(ProgramCheckError, match="undefined variable 'IMAGE'"):
        checker.check("A=Vqa(image=IMAGE, question='q')\nRESULT=A", registry=registry)


# --------------------------------------------------------------------------- positional arguments


def _args(checked: checker.CheckedProgram, index: int) -> list[tuple[str, bool]]:
    call = checked.steps[index].step.call
    assert call is not None
    return [(a.name, a.positional) for a in call.args]


def test_positional_arguments_bind_in_declaration_order(registry: Registry) -> None:
    checked = check(
        "BOX0=Loc(IMAGE, 'dog')\n"
        "N=Count(BOX0)\n"
        "A=Eval('{N} > 0')\n"
        "IMAGE0=Crop(IMAGE, box=BOX0)\n"  # positional first, then named
        "FINAL_RESULT=Result(A)",
        registry=registry,
    )
    assert _args(checked, 0) == [("image", True), ("object", True)]
    assert _args(checked, 1) == [("box", True)]
    assert _args(checked, 2) == [("expr", True)]
    assert _args(checked, 3) == [("image", True), ("box", False)]
    assert _args(checked, 4) == [("var", True)]
    assert checked.steps[2].templates["expr"].variables == ("N",)
    assert checked.steps[3].sources == {"IMAGE": "IMAGE", "BOX0": 0}
    # the checked program is the bound one; the parsed program keeps what was written
    assert checked.program.steps == tuple(s.step for s in checked.steps)
    assert checked.steps[0].step.source == "BOX0=Loc(IMAGE, 'dog')"
    assert checked.result_type is Type.ANY and not checked.warnings


def test_positional_arguments_are_type_checked_under_their_parameter(registry: Registry) -> None:
    assert messages("N=Count(IMAGE)\nRESULT=N", registry) == [
        "line 1, col 9: argument 'box' of Count expects Objects, got Image (input IMAGE)"
    ]


def test_too_many_positional_arguments_list_the_parameters(registry: Registry) -> None:
    assert messages("B=Loc(IMAGE, 'dog', 3, 4)\nRESULT=B", registry) == [
        "line 1, col 21: too many arguments for Loc: it takes 2 (image, object), got 4"
    ]
    assert messages("I=FaceDet(IMAGE, IMAGE)\nRESULT=I", registry) == [
        "line 1, col 18: too many arguments for FaceDet: it takes 1 (image), got 2"
    ]


def test_a_parameter_given_by_position_and_by_name(registry: Registry) -> None:
    assert messages("B=Loc(IMAGE, 'dog', image=IMAGE)\nRESULT=B", registry) == [
        "line 1, col 21: argument 'image' of Loc is given twice (first by position at col 7); it takes: image, object"
    ]


def test_positional_after_named_says_which_name_fits(registry: Registry) -> None:
    assert messages("B=Loc(image=IMAGE, 'dog')\nRESULT=B", registry) == [
        "line 1, col 20: a positional argument after a named one: put it first or name it, e.g. object='dog'; "
        "Loc takes: image, object"
    ]


def test_positional_arguments_of_an_unknown_module_are_still_checked(registry: Registry) -> None:
    assert messages("B=Lok(IMAGE, X)\nRESULT=B", registry) == [
        "line 1, col 3: unknown module 'Lok' (did you mean 'Loc'?)",
        "line 1, col 14: undefined variable 'X'",
    ]


# --------------------------------------------------------------------------- the result


def test_without_a_result_step_the_last_step_is_the_result_with_a_warning(registry: Registry) -> None:
    checked = check("BOX0=Loc(image=IMAGE, object='dog')\n\nN=Count(box=BOX0)\n# done\n", registry=registry)
    assert checked.result == 1
    assert checked.result_type is Type.INT
    assert [str(w) for w in checked.warnings] == [
        "line 3, col 1: the program has no result step: the result is the last step's value, N "
        "(end the program with FINAL_RESULT=Result(var=N) to say so)\n"
        "  N=Count(box=BOX0)\n"
        "  ^"
    ]


def test_a_result_step_anywhere_wins_over_the_last_step(registry: Registry) -> None:
    checked = check("N=Count(box=[])\nRESULT=N\nM=Count(box=[])", registry=registry)
    assert checked.result == 1 and not checked.warnings


def test_a_program_without_steps_is_still_an_error(registry: Registry) -> None:
    assert messages("# nothing here\n", registry) == [
        "line 1, col 1: the program has no result: end it with a line such as FINAL_RESULT=Result(var=ANSWER0)"
    ]
