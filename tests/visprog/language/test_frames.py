"""Frames in the checker: objects used with an image of another input are refused; with a crop, mapped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from tests import fakes
from visprog.errors import ProgramCheckError, RegistrationError
from visprog.language.frames import Cropped, Frame, origin
from visprog.language.objects import Detection, Objects
from visprog.language.signatures import Registry, module
from visprog.language.values import Image


@pytest.fixture(scope="module")
def registry() -> Registry:
    return fakes.registry()


def _error(program: str, registry: Registry, inputs: list[str] | None = None) -> ProgramCheckError:
    with pytest.raises(ProgramCheckError) as info:
        fakes.check(program, inputs or ["LEFT", "RIGHT"], registry=registry)
    return info.value


def test_objects_of_left_drawn_on_right_are_a_check_error(registry: Registry) -> None:
    program = (
        "BOX0=Loc(image=LEFT, object='dog')\n"
        "IMAGE0=Emoji(image=RIGHT, object=BOX0, emoji='grinning_face')\n"
        "FINAL_RESULT=Result(var=IMAGE0)"
    )
    err = _error(program, registry)
    [d] = err.diagnostics
    assert (d.line, d.column) == (2, 34)  # at BOX0, the argument that is wrong
    assert d.message == (
        "argument 'object' of Emoji: the objects in BOX0 were found on LEFT, but the step's image is RIGHT; "
        "objects can be used only on the image they were found on, a crop of it or the image it was cropped "
        "from: find them on RIGHT in a step of their own"
    )


def test_unrelated_frames_are_found_through_crops_edits_and_assignments(registry: Registry) -> None:
    program = (
        "BOX0=Loc(image=LEFT, object='dog')\n"
        "IMAGE0=Crop(image=RIGHT, box=BOX0)\n"  # error: LEFT's objects cut RIGHT
        "BOX1=Loc(image=RIGHT, object='cat')\n"
        "IMAGE1=CropLeftOf(image=RIGHT, box=BOX1)\n"
        "IMAGE2=ColorPop(image=IMAGE1, object=BOX1)\n"  # an edit of a crop of RIGHT: RIGHT's frame
        "OBJ=BOX0\n"  # an assignment keeps the frame
        "IMAGE3=Tag(image=IMAGE2, object=OBJ)\n"  # error: LEFT's objects on a crop of RIGHT
        "FINAL_RESULT=Result(var=IMAGE3)"
    )
    err = _error(program, registry)
    assert [(d.line, d.column) for d in err.diagnostics] == [(2, 30), (7, 33)]
    assert "found on LEFT, but the step's image is RIGHT;" in err.diagnostics[0].message
    expected = (
        "the objects in OBJ were found on LEFT, but the step's image is IMAGE2, "
        "in the frame of IMAGE1, a crop of RIGHT;"
    )
    assert expected in err.diagnostics[1].message


def test_objects_of_a_crop_on_its_image_and_back_are_mapped(registry: Registry) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='dog')\n"
        "IMAGE0=Crop(image=IMAGE, box=BOX0)\n"
        "BOX1=Loc(image=IMAGE0, object='cat')\n"
        "IMAGE1=Tag(image=IMAGE, object=BOX1)\n"  # found on the crop, drawn on the whole image
        "IMAGE2=ColorPop(image=IMAGE0, object=BOX0)\n"  # found on the whole image, used on the crop
        "IMAGE3=BgBlur(image=IMAGE0, object=BOX1)\n"  # same frame: nothing to map
        "FINAL_RESULT=Result(var=IMAGE1)"
    )
    checked = fakes.check(program, ["IMAGE"], registry=registry)
    steps = {s.step.target: s for s in checked.steps}
    whole, crop = Frame("IMAGE"), Frame("IMAGE", (1,))
    assert steps["BOX0"].frame == whole
    assert steps["IMAGE0"].frame == crop
    assert steps["BOX1"].frame == crop
    assert steps["IMAGE1"].remap == {"object": (crop, whole)}
    assert steps["IMAGE2"].remap == {"object": (whole, crop)}
    assert steps["IMAGE3"].remap == {}
    assert steps["IMAGE2"].frame == crop  # an edit keeps its image's frame


def test_frames_need_no_image_to_count_and_skip_what_is_not_known(registry: Registry) -> None:
    program = (
        "BOX0=Loc(image=LEFT, object='dog')\n"
        "BOX1=Loc(image=RIGHT, object='dog')\n"
        "ANSWER0=Count(box=BOX0)\n"  # no image: nothing to check
        "ANSWER1=Count(box=BOX1)\n"
        'ANSWER2=Eval(expr="{ANSWER0} == {ANSWER1}")\n'
        "FINAL_RESULT=Result(var=ANSWER2)"
    )
    checked = fakes.check(program, ["LEFT", "RIGHT"], registry=registry)
    assert all(not s.remap for s in checked.steps)
    assert checked.steps[2].frame is None  # a count is no image


def test_a_plugin_module_names_the_image_it_works_in() -> None:
    @module(frame="target")
    def Paste(source: Image, target: Image, object: Objects) -> Image:
        """Paste the source over the objects of the target.

        Args:
            source: what to paste.
            target: the image to paste onto.
            object: where, on the target.
        """
        return target

    reg = fakes.registry()
    reg.register(Paste)
    assert Paste.frame == "target"
    program = "BOX0=Loc(image=LEFT, object='dog')\nIMAGE0=Paste(source=LEFT, target=RIGHT, object=BOX0)"
    err = _error(program, reg)
    assert "found on LEFT, but the step's target is RIGHT" in err.diagnostics[0].message
    ok = "BOX0=Loc(image=RIGHT, object='dog')\nIMAGE0=Paste(source=LEFT, target=RIGHT, object=BOX0)"
    assert fakes.check(ok, ["LEFT", "RIGHT"], registry=reg).steps[1].frame == Frame("RIGHT")


def test_frame_declarations_are_checked() -> None:
    with pytest.raises(RegistrationError, match="frame= names 'object', which is not one of its Image parameters"):

        @module(frame="object")
        def Bad(image: Image, object: Objects) -> Image:
            """Bad.

            Args:
                image: an image.
                object: objects.
            """
            return image

    with pytest.raises(RegistrationError, match="returns Cropped needs one Image parameter, or frame="):

        @module
        def TwoCrop(a: Image, b: Image) -> Cropped:
            """Crop one of two.

            Args:
                a: one.
                b: two.
            """
            return Cropped(a, (0, 0))


def test_cropped_checks_its_fields() -> None:
    image = PILImage.new("RGB", (4, 4))
    with pytest.raises(TypeError, match="whole pixels"):
        Cropped(image, (1.5, 0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a PIL image"):
        Cropped("image", (0, 0))  # type: ignore[arg-type]


# Mapping along crop paths: what is found on a crop, mapped to its root and back, is where it was.

_crop = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 60), st.integers(1, 60))


@settings(max_examples=200, deadline=None)
@given(crops=st.lists(_crop, min_size=1, max_size=4), box=st.tuples(st.integers(0, 60), st.integers(0, 60)))
def test_objects_map_to_the_root_and_back_along_any_crop_path(
    crops: list[tuple[int, int, int, int]], box: tuple[int, int]
) -> None:
    offsets = {i: (x, y) for i, (x, y, _, _) in enumerate(crops)}
    path = tuple(offsets)
    w, h = crops[-1][2], crops[-1][3]
    x0, y0 = min(box[0], w - 1), min(box[1], h - 1)
    found = Objects([Detection((x0, y0, w, h), 0.5, "thing")])  # inside the deepest crop
    ox, oy = origin(path, offsets)
    assert (ox, oy) == (sum(c[0] for c in crops), sum(c[1] for c in crops))
    on_root = found.in_frame((-ox, -oy), (10_000, 10_000))
    assert on_root[0].box == (x0 + ox, y0 + oy, w + ox, h + oy)
    back = on_root.in_frame((ox, oy), (w, h))
    assert back[0].box == found[0].box


def test_objects_passed_through_eval_keep_their_frame(registry: Registry) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='dog')\n"
        "IMAGE0=Crop(image=IMAGE, box=BOX0)\n"
        "BOX1=Loc(image=IMAGE0, object='cat')\n"
        "BOX2=Eval(expr='{BOX1}')\n"
        "IMAGE1=Tag(image=IMAGE, object=BOX2)\n"
        "FINAL_RESULT=Result(var=IMAGE1)"
    )
    checked = fakes.check(program, ["IMAGE"], registry=registry)
    assert checked.steps[3].frame == Frame("IMAGE", (1,))
    assert checked.steps[4].remap == {"object": (Frame("IMAGE", (1,)), Frame("IMAGE"))}
    other = "BOX0=Loc(image=LEFT, object='dog')\nBOX1=Eval(expr='{BOX0}')\nIMAGE0=Tag(image=RIGHT, object=BOX1)"
    assert "found on LEFT, but the step's image is RIGHT" in _error(other, registry).diagnostics[0].message
