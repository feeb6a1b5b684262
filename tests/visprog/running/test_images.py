"""visprog.running.images: loading any image Pillow reads as RGB, safely."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, features
from skimage import data

from visprog.errors import ImageError
from visprog.running.images import (
    DEFAULT_MAX_PIXELS,
    load_image,
    max_pixels,
    save_image,
    to_rgb,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)


@pytest.fixture(autouse=True)
def _no_env_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISPROG_MAX_PIXELS", raising=False)


@pytest.fixture
def astronaut() -> np.ndarray:
    return data.astronaut()


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(int(a) - int(e)) <= tol for a, e in zip(actual, expected, strict=True))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A 1-bit grayscale PNG claiming ``width`` x ``height``, with ``idat`` as its data."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG: huge once decoded, tiny on disk."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return png_bytes(width, height, idat)


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right yellow."""
    image = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    image.paste(RED, (0, 0, half_w, half_h))
    image.paste(GREEN, (half_w, 0, width, half_h))
    image.paste(BLUE, (0, half_h, half_w, height))
    image.paste(YELLOW, (half_w, half_h, width, height))
    return image


# --- real photos, formats ------------------------------------------------------


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea", "rocket"])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_real_photo_round_trips_to_rgb(tmp_path: Path, photo: str, suffix: str) -> None:
    pixels = getattr(data, photo)()
    path = tmp_path / f"{photo}{suffix}"
    Image.fromarray(pixels).save(path, **({"quality": 95} if suffix == ".jpg" else {}))

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.size == (pixels.shape[1], pixels.shape[0])
    difference = np.abs(np.asarray(image, dtype=np.int16) - pixels.astype(np.int16))
    if suffix == ".png":
        assert difference.max() == 0
    else:
        assert difference.mean() < 3


@pytest.mark.parametrize(
    ("suffix", "options", "lossless"),
    [
        (".tiff", {}, True),
        (".tif", {"compression": "tiff_lzw"}, True),
        (".bmp", {}, True),
        (".ppm", {}, True),
        (".webp", {"lossless": True}, True),
        (".webp", {"quality": 90}, False),
        (".gif", {}, False),
    ],
)
def test_other_formats(
    tmp_path: Path, astronaut: np.ndarray, suffix: str, options: dict[str, object], lossless: bool
) -> None:
    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = tmp_path / f"astronaut{suffix}"
    Image.fromarray(astronaut).save(path, **options)

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.size == (512, 512)
    difference = np.abs(np.asarray(image, dtype=np.int16) - astronaut.astype(np.int16))
    if lossless:
        assert difference.max() == 0
    else:
        assert difference.mean() < 12


def test_multi_frame_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:])

    image = load_image(path)

    assert image.getpixel((4, 4)) == RED


# --- EXIF orientation ----------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_6_rotates_clockwise(tmp_path: Path, suffix: str) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored rotated: display turned 90° clockwise
    path = tmp_path / f"rotated{suffix}"
    quadrants(64, 32).save(path, exif=exif.tobytes(), **({"quality": 95} if suffix == ".jpg" else {}))

    image = load_image(path)

    assert image.size == (32, 64)
    # Turning clockwise: top-left goes top-right, bottom-left goes top-left, ...
    assert close_to(image.getpixel((8, 16)), BLUE)
    assert close_to(image.getpixel((24, 16)), RED)
    assert close_to(image.getpixel((8, 48)), YELLOW)
    assert close_to(image.getpixel((24, 48)), GREEN)
    # The orientation is consumed: loading the result again does not turn it again.
    assert image.getexif().get(ExifTags.Base.Orientation, 1) == 1
    again = load_image(image)
    assert again.size == (32, 64)
    assert close_to(again.getpixel((24, 16)), RED)


def test_exif_orientation_3_rotates_180(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3
    path = tmp_path / "upside_down.jpg"
    quadrants(64, 32).save(path, exif=exif.tobytes(), quality=95)

    image = load_image(path)

    assert image.size == (64, 32)
    assert close_to(image.getpixel((8, 8)), YELLOW)
    assert close_to(image.getpixel((56, 24)), RED)


def test_no_exif_keeps_orientation(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    quadrants().save(path)

    image = load_image(path)

    assert image.size == (64, 32)
    assert image.getpixel((0, 0)) == RED


# --- mode conversion -----------------------------------------------------------


def test_rgba_transparency_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)  # opaque red
    rgba[:, 2:4] = (0, 0, 255, 0)  # fully transparent blue
    rgba[:, 4:] = (255, 0, 0, 128)  # half-transparent red
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == RED
    assert image.getpixel((2, 0)) == WHITE
    assert close_to(image.getpixel((5, 0)), (255, 127, 127), tol=2)


def test_la_composited_on_white() -> None:
    image = to_rgb(Image.new("LA", (2, 2), (0, 0)))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE


def test_grayscale_l(tmp_path: Path) -> None:
    path = tmp_path / "camera.png"
    camera = data.camera()
    Image.fromarray(camera).save(path)

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.size == (camera.shape[1], camera.shape[0])
    rgb = np.asarray(image)
    for channel in range(3):
        assert np.array_equal(rgb[:, :, channel], camera)


def test_one_bit(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((1, 1), 1)
    bits.save(path)

    image = load_image(path)

    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 1)) == WHITE


def test_palette_with_transparency(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([0, 0, 255, 255, 0, 0] + [0] * (254 * 3))  # 0 blue, 1 red
    for x in range(2, 4):
        for y in range(2):
            palette_image.putpixel((x, y), 1)
    path = tmp_path / "palette.png"
    palette_image.save(path, transparency=0)  # index 0 (blue) is transparent

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((3, 1)) == RED


def test_palette_without_transparency() -> None:
    palette_image = Image.new("P", (2, 2), 1)
    palette_image.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    assert to_rgb(palette_image).getpixel((0, 0)) == GREEN


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_sixteen_bit_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    ramp = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # really a 16-bit image on disk

    image = load_image(path)

    values = [image.getpixel((x, 0)) for x in range(4)]
    assert values == [(0, 0, 0), (1, 1, 1), (128, 128, 128), WHITE]


def test_sixteen_bit_big_endian_and_32_bit_integer() -> None:
    ramp = np.array([[0, 32768, 65535]], dtype=np.uint16)
    big_endian = Image.frombytes("I;16B", (3, 1), ramp.astype(">u2").tobytes())
    assert [to_rgb(big_endian).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]

    as_int32 = Image.fromarray(ramp.astype(np.int32))
    assert as_int32.mode == "I"
    assert [to_rgb(as_int32).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]

    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert [to_rgb(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_modes() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert [to_rgb(unit).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]

    byte_range = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert [to_rgb(byte_range).getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]

    with_nan = Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32))
    assert to_rgb(with_nan).getpixel((0, 0)) == (0, 0, 0)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)  # red in CMYK
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"

    image = load_image(path)

    assert image.mode == "RGB"
    assert close_to(image.getpixel((16, 16)), RED, tol=16)


@pytest.mark.parametrize(
    ("mode", "colour"),
    [("YCbCr", (76, 85, 255)), ("HSV", (0, 255, 255)), ("LAB", (255, 128, 128))],
)
def test_other_colour_spaces(mode: str, colour: tuple[int, int, int]) -> None:
    expected = {"YCbCr": RED, "HSV": RED, "LAB": WHITE}[mode]
    image = to_rgb(Image.new(mode, (2, 2), colour))
    assert image.mode == "RGB"
    assert close_to(image.getpixel((0, 0)), expected, tol=3)


def test_to_rgb_returns_a_copy() -> None:
    original = Image.new("RGB", (2, 2), RED)
    converted = to_rgb(original)
    converted.putpixel((0, 0), BLUE)
    assert converted is not original
    assert original.getpixel((0, 0)) == RED


# --- rejected files --------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path: Path, astronaut: np.ndarray, suffix: str) -> None:
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(astronaut).save(whole)
    cut = tmp_path / f"cut{suffix}"
    content = whole.read_bytes()
    cut.write_bytes(content[: len(content) // 2])

    with pytest.raises(ImageError, match="truncated or corrupt") as caught:
        load_image(cut)

    assert str(caught.value).startswith(str(cut))


def test_truncated_header(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = tmp_path / "stub.png"
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:20])

    with pytest.raises(ImageError) as caught:
        load_image(path)

    assert str(caught.value).startswith(str(path))


def test_text_file_renamed_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 20)

    with pytest.raises(ImageError, match="not an image Pillow can read") as caught:
        load_image(path)

    assert str(caught.value).startswith(str(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")

    with pytest.raises(ImageError, match="empty file") as caught:
        load_image(path)

    assert str(caught.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.png"

    with pytest.raises(ImageError, match="no such file") as caught:
        load_image(path)

    assert str(caught.value).startswith(str(path))


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory") as caught:
        load_image(tmp_path)
    assert str(caught.value).startswith(str(tmp_path))


def test_name_overrides_the_label(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ImageError, match=r"^photo of the kitchen: not an image"):
        load_image(path, name="photo of the kitchen")


# --- pixel limit ---------------------------------------------------------------


def test_pixel_limit_argument(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20), RED).save(path)

    with pytest.raises(ImageError) as caught:
        load_image(path, max_pixels=100)

    message = str(caught.value)
    assert message.startswith(str(path))
    assert "20x20 = 400 pixels" in message
    assert "limit of 100 pixels" in message
    # every way to raise the limit: the command-line flag, the Python argument, the environment variable
    assert "--max-pixels N" in message
    assert "max_pixels=N" in message
    assert "VISPROG_MAX_PIXELS" in message
    assert load_image(path, max_pixels=400).size == (20, 20)


def test_pixel_limit_checked_before_decoding() -> None:
    # A header claiming 100x100 followed by garbage: decoding it would fail with
    # "truncated or corrupt", so the limit error proves nothing was decoded.
    fake = png_bytes(100, 100, b"not zlib data at all")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(fake)
    with pytest.raises(ImageError, match=r"^<bytes>: image is 100x100 = 10,000 pixels"):
        load_image(fake, max_pixels=9_999)


def test_header_between_limits_rejected_without_decoding() -> None:
    # 9000x9000 = 81M pixels: over visprog's default, under Pillow's own error threshold.
    fake = png_bytes(9_000, 9_000, b"garbage")
    with pytest.raises(ImageError, match="over the limit of 50,000,000 pixels"):
        load_image(fake)


def test_env_var_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20), RED).save(path)

    monkeypatch.setenv("VISPROG_MAX_PIXELS", "300")
    assert max_pixels() == 300
    with pytest.raises(ImageError, match="limit of 300 pixels"):
        load_image(path)
    assert load_image(path, max_pixels=400).size == (20, 20)  # the argument wins

    monkeypatch.setenv("VISPROG_MAX_PIXELS", "1_000")
    assert max_pixels() == 1_000
    assert load_image(path).size == (20, 20)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1.5e6"])
def test_invalid_env_var_falls_back_to_default(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VISPROG_MAX_PIXELS", value)
    with pytest.warns(RuntimeWarning, match="VISPROG_MAX_PIXELS"):
        assert max_pixels() == DEFAULT_MAX_PIXELS


def test_default_limit() -> None:
    assert DEFAULT_MAX_PIXELS == 50_000_000
    assert max_pixels() == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_invalid_limit_argument(bad: object) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(np.zeros((2, 2), dtype=np.uint8), max_pixels=bad)  # type: ignore[arg-type]


def test_decompression_bomb_png(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20_000, 20_000))
    assert path.stat().st_size < 200_000  # 400 million pixels in a few kilobytes
    before = Image.MAX_IMAGE_PIXELS

    for limit in (None, 1_000_000):
        with pytest.raises(ImageError) as caught:
            load_image(path, max_pixels=limit)
        message = str(caught.value)
        assert message.startswith(str(path))
        assert "400,000,000 pixels" in message
        assert "--max-pixels N" in message
        assert "VISPROG_MAX_PIXELS" in message

    assert Image.MAX_IMAGE_PIXELS == before


def test_own_limit_independent_of_pillow_global(monkeypatch: pytest.MonkeyPatch, astronaut: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(astronaut[:40, :40]).save(buffer, "PNG")  # 1,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        image = load_image(buffer.getvalue())
    assert image.size == (40, 40)
    assert Image.MAX_IMAGE_PIXELS == 1_000

    # Over twice Pillow's global Pillow itself refuses; still a clear ImageError.
    bigger = io.BytesIO()
    Image.fromarray(astronaut[:50, :50]).save(bigger, "PNG")  # 2,500 pixels
    with pytest.raises(ImageError, match=r"^<bytes>: .*MAX_IMAGE_PIXELS"):
        load_image(bigger.getvalue())


def test_global_pillow_limit_unchanged(tmp_path: Path, astronaut: np.ndarray) -> None:
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "a.jpg"
    Image.fromarray(astronaut).save(path)
    load_image(path)
    with pytest.raises(ImageError):
        load_image(path, max_pixels=10)
    assert Image.MAX_IMAGE_PIXELS == before


# --- in-memory sources ---------------------------------------------------------


def test_numpy_rgb(astronaut: np.ndarray) -> None:
    image = load_image(astronaut)
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), astronaut)


def test_numpy_non_contiguous(astronaut: np.ndarray) -> None:
    view = astronaut[::2, ::-2]
    assert np.array_equal(np.asarray(load_image(view)), view)


def test_numpy_grayscale_and_single_channel() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for array in (gray, gray[:, :, None]):
        image = load_image(array)
        assert image.size == (4, 3)
        assert image.getpixel((3, 2)) == (11, 11, 11)


def test_numpy_rgba_composited() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 255, 0, 255)
    image = load_image(rgba)
    assert image.getpixel((0, 0)) == GREEN
    assert image.getpixel((1, 1)) == WHITE


def test_numpy_bool_float_uint16_int() -> None:
    mask = np.array([[True, False]])
    assert [load_image(mask).getpixel((x, 0)) for x in range(2)] == [WHITE, (0, 0, 0)]

    unit = np.array([[[0.0, 0.5, 1.0]]])
    assert load_image(unit).getpixel((0, 0)) == (0, 128, 255)

    deep = np.array([[0, 32768, 65535]], dtype=np.uint16)
    assert [load_image(deep).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]

    small_ints = np.array([[0, 17, 255]], dtype=np.int64)
    assert [load_image(small_ints).getpixel((x, 0))[0] for x in range(3)] == [0, 17, 255]


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4,), dtype=np.uint8), "shape"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "shape"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
        (np.full((2, 2), 1.5), "0..1"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.full((2, 2), 300, dtype=np.int32), "0..255"),
        (np.zeros((2, 2), dtype=np.complex64), "dtype"),
    ],
)
def test_numpy_rejected(array: np.ndarray, match: str) -> None:
    with pytest.raises(ImageError, match=match) as caught:
        load_image(array)
    assert str(caught.value).startswith("<array>: ")


def test_numpy_pixel_limit() -> None:
    with pytest.raises(ImageError, match=r"^frame: image is 10x10 = 100 pixels"):
        load_image(np.zeros((10, 10, 3), dtype=np.uint8), max_pixels=99, name="frame")


def test_bytes_input(astronaut: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "PNG")
    content = buffer.getvalue()

    assert np.array_equal(np.asarray(load_image(content)), astronaut)
    assert np.array_equal(np.asarray(load_image(bytearray(content))), astronaut)
    with pytest.raises(ImageError, match=r"^<bytes>: not an image"):
        load_image(b"hello")


def test_file_object_input(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(astronaut).save(path)

    with path.open("rb") as handle:
        handle.seek(100)  # read from the start wherever the caller left it
        image = load_image(handle)
        assert not handle.closed  # the caller's file stays the caller's
    assert np.array_equal(np.asarray(image), astronaut)

    buffer = io.BytesIO(path.read_bytes())
    assert load_image(buffer).size == (512, 512)
    assert not buffer.closed


def test_non_seekable_stream(astronaut: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "PNG")

    class Pipe(io.RawIOBase):
        def __init__(self, content: bytes) -> None:
            self._inner = io.BytesIO(content)

        def readable(self) -> bool:
            return True

        def readinto(self, target: bytearray) -> int:  # type: ignore[override]
            chunk = self._inner.read(len(target))
            target[: len(chunk)] = chunk
            return len(chunk)

    image = load_image(io.BufferedReader(Pipe(buffer.getvalue())))
    assert np.array_equal(np.asarray(image), astronaut)


def test_file_object_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("no pixels here")
    with path.open("rb") as handle, pytest.raises(ImageError) as caught:
        load_image(handle)
    assert str(caught.value).startswith(str(path))

    with pytest.raises(ImageError, match=r"^<stream>: "):
        load_image(io.BytesIO(b"no pixels here"))


def test_pil_input_is_copied_and_converted(tmp_path: Path) -> None:
    original = Image.new("RGBA", (3, 3), (0, 0, 255, 0))
    image = load_image(original)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    assert original.mode == "RGBA"

    rgb = Image.new("RGB", (3, 3), RED)
    copy = load_image(rgb)
    assert copy is not rgb
    copy.putpixel((0, 0), BLUE)
    assert rgb.getpixel((0, 0)) == RED


def test_pil_input_lazy_file(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    quadrants(64, 32).save(path, exif=exif.tobytes(), quality=95)

    with Image.open(path) as lazy:
        image = load_image(lazy)
        assert image.size == (32, 64)  # orientation applied to PIL input too
        with pytest.raises(ImageError, match=r"limit of 100 pixels"):
            load_image(lazy, max_pixels=100)
    assert close_to(image.getpixel((24, 16)), RED)


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError, match="int"):
        load_image(42)  # type: ignore[arg-type]


def test_no_file_left_open(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = tmp_path / "a.jpg"
    Image.fromarray(astronaut).save(path)

    image = load_image(path)
    assert getattr(image, "fp", None) is None
    path.unlink()

    assert image.size == (512, 512)
    assert len(image.tobytes()) == 512 * 512 * 3  # pixels are in memory


# --- saving --------------------------------------------------------------------


def test_save_creates_parents_and_round_trips(tmp_path: Path, astronaut: np.ndarray) -> None:
    target = tmp_path / "out" / "deeper" / "result.png"
    written = save_image(Image.fromarray(astronaut), target)

    assert written == target
    assert np.array_equal(np.asarray(load_image(written)), astronaut)


def test_save_without_suffix_writes_png(tmp_path: Path) -> None:
    written = save_image(Image.new("RGB", (4, 4), RED), tmp_path / "result")

    assert written == tmp_path / "result.png"
    with Image.open(written) as saved:
        assert saved.format == "PNG"


def test_save_format_from_suffix(tmp_path: Path) -> None:
    for suffix, fmt in ((".jpg", "JPEG"), (".JPEG", "JPEG"), (".tiff", "TIFF"), (".bmp", "BMP")):
        written = save_image(Image.new("RGB", (8, 8), RED), tmp_path / f"x{suffix}")
        with Image.open(written) as saved:
            assert saved.format == fmt


def test_save_rgba_as_jpeg_converts(tmp_path: Path) -> None:
    written = save_image(Image.new("RGBA", (8, 8), (0, 0, 255, 0)), tmp_path / "x.jpg")
    assert close_to(load_image(written).getpixel((4, 4)), WHITE, tol=3)


def test_save_unknown_suffix(tmp_path: Path) -> None:
    target = tmp_path / "x.notaformat"
    with pytest.raises(ImageError, match=r"\.notaformat") as caught:
        save_image(Image.new("RGB", (2, 2)), target)
    assert str(caught.value).startswith(str(target))
    assert not target.exists()


def test_pil_input_truncated_or_closed(tmp_path: Path, astronaut: np.ndarray) -> None:
    whole = io.BytesIO()
    Image.fromarray(astronaut).save(whole, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])

    with Image.open(cut) as lazy, pytest.raises(ImageError, match="truncated") as caught:
        load_image(lazy)
    assert str(caught.value).startswith(str(cut))

    closed = Image.open(cut)
    closed.close()
    with pytest.raises(ImageError, match=r"closed image"):
        load_image(closed, name="frame 3")
