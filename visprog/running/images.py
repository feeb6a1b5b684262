"""Loading and saving the images programs run on.

:func:`load_image` turns whatever a caller has (a path, bytes, a binary file
object, a Pillow image or a numpy array) into a fully loaded RGB
:class:`PIL.Image.Image`:

- any format Pillow reads; EXIF orientation applied;
- RGBA, grayscale, palette, 16-bit, float, CMYK, YCbCr, LAB and HSV converted
  to 8-bit RGB, transparency composited on white;
- truncated files, non-images and images over a pixel limit rejected with an
  :class:`~visprog.errors.ImageError` whose message starts with the file name.

The pixel limit guards against decompression bombs: it is checked from the
header, before any pixel is decoded. It defaults to :data:`DEFAULT_MAX_PIXELS`,
the environment variable ``VISPROG_MAX_PIXELS`` overrides that default, and
``load_image(..., max_pixels=N)`` overrides both. Pillow's global
``PIL.Image.MAX_IMAGE_PIXELS`` is neither read for the check nor changed; its
hard error (at twice that value) still applies inside ``Image.open`` and is
reported as an :class:`~visprog.errors.ImageError` too.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import stat
import struct
import warnings
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from visprog.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "load_image",
    "max_pixels",
    "save_image",
    "to_rgb",
]

#: Largest image (width x height) :func:`load_image` accepts by default.
DEFAULT_MAX_PIXELS: int = 50_000_000

#: Environment variable that overrides :data:`DEFAULT_MAX_PIXELS`.
ENV_MAX_PIXELS = "VISPROG_MAX_PIXELS"

# Errors Pillow raises for data it cannot decode (beyond "unidentified").
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
)

# Errors reading malformed EXIF data.
_EXIF_ERRORS: tuple[type[BaseException], ...] = (*_DECODE_ERRORS, KeyError, TypeError)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def max_pixels() -> int:
    """The pixel limit in force when ``load_image`` gets no ``max_pixels=``.

    ``VISPROG_MAX_PIXELS`` if it is set to a positive integer (underscores
    allowed: ``100_000_000``), else :data:`DEFAULT_MAX_PIXELS`. A value that is
    set but not a positive integer is ignored with a :class:`RuntimeWarning`.
    """
    raw = os.environ.get(ENV_MAX_PIXELS)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value <= 0:
        warnings.warn(
            f"{ENV_MAX_PIXELS}={raw!r} is not a positive integer; "
            f"using the default limit of {DEFAULT_MAX_PIXELS:,} pixels",
            RuntimeWarning,
            stacklevel=2,
        )
        return DEFAULT_MAX_PIXELS
    return value


def load_image(
    source: str | os.PathLike[str] | bytes | IO[bytes] | Image.Image | np.ndarray,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Load ``source`` as a fully loaded 8-bit RGB image.

    Args:
        source: A file path, the bytes of an image file, a binary file object
            (read from its start; not closed), a Pillow image (copied, never
            modified) or a numpy array (``HxW``, ``HxWx1``, ``HxWx3`` or
            ``HxWx4``; ``uint8``, ``bool``, ``uint16`` or float in ``0..1``).
        max_pixels: Largest ``width * height`` accepted; default
            :func:`max_pixels` (``VISPROG_MAX_PIXELS`` or
            :data:`DEFAULT_MAX_PIXELS`).
        name: What error messages call the image; default the path, the file
            object's name, ``"<bytes>"`` or ``"<array>"``.

    Returns:
        A new RGB image with its pixels in memory and no file left open. EXIF
        orientation is applied and removed from its metadata. Only the first
        frame of a multi-frame file (GIF, TIFF, APNG) is read.

    Raises:
        ImageError: The file is missing, is not an image Pillow can read, is
            truncated or corrupt, or is over the pixel limit. The message
            starts with ``name``.
        TypeError: ``source`` is none of the types above.
        ValueError: ``max_pixels`` is not a positive integer.
    """
    limit = _resolve_limit(max_pixels)
    if isinstance(source, Image.Image):
        label = name or _pil_label(source)
        _check_size(source.size, label, limit)
        try:
            source.load()
        except _DECODE_ERRORS as e:
            raise ImageError(f"{label}: cannot read the image's pixels ({e})") from e
        return _finish(source, label)
    if isinstance(source, np.ndarray):
        return _from_array(source, name or "<array>", limit)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), name or "<bytes>", limit)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(pathlib.Path(source), name, limit)
    if hasattr(source, "read"):
        stream_name = getattr(source, "name", None)
        label = name or (stream_name if isinstance(stream_name, str) else "<stream>")
        return _decode(source, label, limit)
    raise TypeError(
        "load_image expects a path, bytes, a binary file object, a PIL image or a "
        f"numpy array, got {type(source).__name__}"
    )


def to_rgb(image: Image.Image, *, name: str = "image") -> Image.Image:
    """Convert ``image`` to 8-bit RGB; always returns a new image.

    - RGB: copied.
    - RGBA, LA, PA, RGBa, La, and any mode with a ``transparency`` colour or
      palette entry: composited on white.
    - 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's conversion.
    - I;16 (any byte order): ``0..65535`` scaled to ``0..255`` (rounded).
    - I (32-bit integer): scaled as 16-bit when every value is in
      ``0..65535`` (what 16-bit PNG and TIFF files decode to), else stretched
      from its minimum to its maximum.
    - F (32-bit float): ``0..1`` scaled by 255, ``0..255`` kept, anything
      else stretched from its minimum to its maximum; NaN becomes 0.

    Orientation, size and content are left alone: this is a mode conversion.

    Raises:
        ImageError: A mode Pillow cannot convert; the message starts with ``name``.
    """
    mode = image.mode
    if mode == "RGB":
        out = image.copy()
    elif mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        out = Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    elif (
        mode in _ALPHA_MODES
        or image.info.get("transparency") is not None
        or (mode == "P" and image.palette is not None and image.palette.mode == "RGBA")
    ):
        try:
            rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")
        except ValueError as e:
            raise ImageError(f"{name}: cannot convert mode {mode} to RGB ({e})") from e
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        try:
            out = image.convert("RGB")
        except ValueError as e:
            raise ImageError(f"{name}: cannot convert mode {mode} to RGB ({e})") from e
    out.info.pop("transparency", None)
    return out


def save_image(image: Image.Image, path: str | os.PathLike[str]) -> pathlib.Path:
    """Save ``image`` to ``path``, creating missing parent directories.

    The format follows the suffix (``.png``, ``.jpg``, ``.webp``, ...). A path
    with no suffix gets ``.png`` appended. An image whose mode the format
    cannot store (RGBA or 16-bit as JPEG, say) is converted with
    :func:`to_rgb` first.

    Returns:
        The path written, with ``.png`` appended when there was no suffix.

    Raises:
        ImageError: The suffix names no format Pillow can write, or the file
            cannot be written; the message starts with the path.
    """
    target = pathlib.Path(path)
    if not target.suffix:
        target = target.with_name(target.name + ".png")
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None or fmt.upper() not in Image.SAVE:
        raise ImageError(
            f"{target}: cannot save an image as {target.suffix!r}; "
            "use a suffix Pillow can write such as .png, .jpg, .webp or .tiff"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        image.save(target, format=fmt)
    except (OSError, ValueError, KeyError) as first:
        if image.mode == "RGB":
            raise ImageError(f"{target}: cannot save image ({first})") from first
        try:
            to_rgb(image, name=str(target)).save(target, format=fmt)
        except (OSError, ValueError, KeyError) as e:
            raise ImageError(f"{target}: cannot save image ({e})") from e
    return target


# --- helpers -----------------------------------------------------------------


def _resolve_limit(limit: int | None) -> int:
    if limit is None:
        return max_pixels()
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {limit!r}")
    return limit


def _too_large(label: str, pixels: int, limit: int, size: tuple[int, int] | None) -> str:
    dims = f"{size[0]}x{size[1]} = " if size is not None else ""
    return (
        f"{label}: image is {dims}{pixels:,} pixels, over the limit of {limit:,} pixels "
        "(a guard against decompression bombs); to load it, raise the limit with --max-pixels N "
        f"on the command line, max_pixels=N in Python (load_image), or the {ENV_MAX_PIXELS} environment variable"
    )


def _check_size(size: tuple[int, int], label: str, limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageError(_too_large(label, width * height, limit, size))


def _pil_label(image: Image.Image) -> str:
    filename = getattr(image, "filename", "")
    return filename if isinstance(filename, str) and filename else "<image>"


def _from_path(path: pathlib.Path, name: str | None, limit: int) -> Image.Image:
    label = name or str(path)
    if not path.exists():
        raise ImageError(f"{label}: no such file")
    if path.is_dir():
        raise ImageError(f"{label}: is a directory, not an image file")
    try:  # without blocking: opening a FIFO for reading would wait for a writer
        stream = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
    except OSError as e:
        raise ImageError(f"{label}: cannot read file ({e.strerror or e})") from e
    with stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise ImageError(f"{label}: not a regular file (a FIFO, a device or a socket); give an image file")
        if status.st_size == 0:
            raise ImageError(f"{label}: not an image Pillow can read (empty file)")
        return _decode(stream, label, limit)


def _decode(stream: IO[bytes], label: str, limit: int) -> Image.Image:
    """Open ``stream`` lazily, check the size, then decode. Leaves ``stream`` open."""
    try:
        with warnings.catch_warnings():
            # The limit is checked below, from the header; Pillow's warning
            # (at its own global threshold) would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(stream)
    except Image.DecompressionBombError as e:
        raise ImageError(_bomb_message(label, e, limit)) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{label}: not an image Pillow can read") from e
    except _DECODE_ERRORS as e:
        raise ImageError(f"{label}: truncated or corrupt image file ({e})") from e
    # Leaving the block drops Pillow's reference to the stream; closing a
    # stream Pillow opened itself (a non-seekable one it buffered) too.
    with opened:
        _check_size(opened.size, label, limit)
        try:
            opened.load()
        except _DECODE_ERRORS as e:
            kind = f"{opened.format} file" if opened.format else "image file"
            raise ImageError(f"{label}: truncated or corrupt {kind} ({e})") from e
        return _finish(opened, label)


def _bomb_message(label: str, error: Image.DecompressionBombError, limit: int) -> str:
    match = _BOMB_PIXELS.search(str(error))
    if match is None:
        return f"{label}: image refused as a possible decompression bomb ({error})"
    pixels = int(match.group(1))
    if pixels > limit:
        return _too_large(label, pixels, limit, None)
    return (
        f"{label}: image is {pixels:,} pixels: within max_pixels={limit:,}, but over "
        "Pillow's own hard limit of 2 * PIL.Image.MAX_IMAGE_PIXELS "
        f"({2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels); raise PIL.Image.MAX_IMAGE_PIXELS "
        "to load it"
    )


def _finish(image: Image.Image, label: str) -> Image.Image:
    """Apply EXIF orientation and convert a loaded image to a new RGB image."""
    if _orientation(image) != 1:
        try:
            image = ImageOps.exif_transpose(image)
        except _EXIF_ERRORS:
            pass  # unreadable EXIF: keep the pixels as stored
    return to_rgb(image, name=label)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _EXIF_ERRORS:
        return 1  # unreadable EXIF: keep the pixels as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale one channel of 16-bit, 32-bit integer or float pixels to ``uint8``."""
    data = values.astype(np.float64)
    if mode == "F":
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    low = float(data.min()) if data.size else 0.0
    high = float(data.max()) if data.size else 0.0
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and low >= 0 and high <= 65535):
        scaled = data * (255.0 / 65535.0)
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = data * 255.0
    elif mode == "F" and low >= 0 and high <= 255:
        scaled = data
    elif high > low:
        scaled = (data - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(data)
    result: np.ndarray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return result


def _from_array(array: np.ndarray, label: str, limit: int) -> Image.Image:
    shape = array.shape
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"{label}: expected an array of shape HxW, HxWx1, HxWx3 or HxWx4, got {shape}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"{label}: empty array of shape {shape}")
    _check_size((width, height), label, limit)
    pixels = _array_to_uint8(array, label)
    mode = "L" if pixels.ndim == 2 else ("RGB" if pixels.shape[2] == 3 else "RGBA")
    image = Image.frombytes(mode, (width, height), np.ascontiguousarray(pixels).tobytes())
    return to_rgb(image, name=label)


def _array_to_uint8(array: np.ndarray, label: str) -> np.ndarray:
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        result: np.ndarray = array.astype(np.uint8) * 255
        return result
    if dtype == np.uint16:
        return _to_uint8(array, "I;16")
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{label}: float array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ImageError(f"{label}: float array values must lie in 0..1, got {low:g}..{high:g}")
        return _to_uint8(array, "F")
    if np.issubdtype(dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageError(f"{label}: {dtype} array values must lie in 0..255, got {low}..{high}")
        return array.astype(np.uint8)
    raise ImageError(f"{label}: unsupported array dtype {dtype}; use uint8, bool, uint16 or float in 0..1")
